"""YOLACT's user path from a shell, on the tiny YOLACT and a small shapes dataset: train.py
(train, COCO evaluation, export, prediction PNGs), evaluate.py and predict on the run's own
config.yaml, as a user runs them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import support
from support import models as models_support

ROOT = support.ROOT
TIMEOUT = 600


def _run(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            timeout=TIMEOUT, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_train_evaluate_predict_from_a_shell(tmp_path):
    run = tmp_path / "run"
    overrides = models_support.tiny_yolact_overrides(**{
        "data.synthetic.num_train": 8, "data.synthetic.num_val": 3,
        "data.synthetic.image_size": 128, "data.synthetic.output_dir": tmp_path / "shapes",
        "data.augment": "ssd", "data.cache": False, "train.output_dir": run,
        "train.batch_size": 2, "train.total_steps": 3, "train.steps_per_epoch": 3,
        "train.checkpoint_every": 3, "train.warmup_steps": 1, "train.lr_decay_steps": "[2]",
        "eval.num_visualizations": 2})
    out = _run([os.path.join(ROOT, "train.py"), "--config",
                os.path.join(ROOT, "configs", "yolact_shapes.yaml"), "--set", *overrides],
               tmp_path)
    assert "Average Precision" in out and f"exported {run / 'saved_model'}" in out
    assert (run / "saved_model" / "saved_model.pb").exists()
    assert len(list((run / "predictions").glob("*.png"))) == 2
    config, weights = str(run / "config.yaml"), str(run / "model.weights.h5")

    out = _run([os.path.join(ROOT, "evaluate.py"), "--config", config, "--weights", weights,
                "--output", str(tmp_path / "eval")], tmp_path)
    assert "Average Precision" in out and "segm AP" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"bbox", "segm"} <= set(metrics) and 0.0 <= metrics["segm"]["AP"] <= 1.0

    image = np.random.default_rng(0).integers(0, 255, (90, 200, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "wide.png")
    _run(["-m", "keras_maskrcnn.predict", "--config", config, "--weights", weights,
          "--image", str(tmp_path / "wide.png"), "--output", str(tmp_path / "drawn.png"),
          "--score-threshold", "0.0"], ROOT)
    assert Image.open(tmp_path / "drawn.png").size == (200, 90)
