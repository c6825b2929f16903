"""Done-when of issue 19's command line: a fresh venv with the checkout installed NOT editable,
then, from an empty directory, ``kmr synthetic``, ``kmr train --config shapes --set ...``,
``kmr evaluate``, ``kmr predict``, ``kmr export``, then ``kmr tfrecord`` and ``kmr demo`` (slow:
several TensorFlow processes).

The venv sees the test environment's site-packages through a ``.pth`` file (TensorFlow is not
downloaded again) after its own, so ``keras_maskrcnn`` comes from the installed wheel: the test
checks that, and that the checkout is not on the path (no PYTHONPATH, cwd elsewhere).
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from PIL import Image

from support import ROOT

TINY_SHAPES = [  # `shapes` shrunk to seconds: narrow model, 128 px, 8 + 4 images, 2 steps
    "model.backbone.width_multiplier=0.25", "model.fpn.channels=32", "model.box_head.fc_dim=64",
    "model.mask_head.conv_dim=16", "model.mask_head.num_convs=1",
    "model.keypoint_head.conv_dim=16", "model.keypoint_head.num_convs=1",
    "input.min_size_train=[128]", "input.min_size_test=128", "input.max_size=128",
    "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.image_size=128",
    "data.cache=false", "data.shuffle_buffer=8", "train.batch_size=2", "train.total_steps=2",
    "train.steps_per_epoch=2", "train.checkpoint_every=2", "train.lr_decay_steps=[1]",
    "train.warmup_steps=1", "train.log_every=1", "eval.max_images=4",
]
SYNTHETIC = ["--train", "8", "--val", "4", "--image-size", "128", "--seed", "0",
             "--min-objects", "1", "--max-objects", "4"]  # = the config's data.synthetic


def _make_venv(tmp_path):
    """A venv over this environment's packages, with a non-editable install of a copy of the
    checkout (copied so that building leaves nothing in the checkout)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "_test_environment.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "source"
    top_level = {".git", "build", "runs", "data", "tests", "bench", "dist"}

    def ignore(directory, names):  # outputs and other folders of the checkout's top level
        top = os.path.samefile(directory, ROOT)
        return [n for n in names if (top and n in top_level) or n == "__pycache__"
                or n.endswith(".egg-info")]

    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
                           "--no-build-isolation", "--no-index", str(source)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    for key in ("PYTHONPATH", "TF_CONFIG", "KMR_TRACEBACK"):
        env.pop(key, None)
    return env


def _kmr(venv, cwd, *args):
    proc = subprocess.run([str(venv / "bin" / "kmr"), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"kmr {' '.join(args)}:\n{output[-4000:]}"
    assert "Traceback" not in output
    # the frictions of issue 19: warnings at every train / model build
    assert "shuffle=True" not in output and "parallel_iterations" not in output
    return proc


@pytest.mark.slow
def test_fresh_venv_non_editable_install_runs_the_whole_journey(tmp_path):
    venv = _make_venv(tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import keras_maskrcnn; print(keras_maskrcnn.__file__)"],
                           cwd=work, env=_env(), capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel, not the checkout
    assert _kmr(venv, work, "--version").stdout.strip() == "keras3-maskrcnn 0.2.0"
    names = _kmr(venv, work, "train", "--list-configs").stdout.split()
    assert {"shapes", "maskrcnn_r50_fpn_coco", "yolact_r50_fpn_coco",
            "detectron2/mask_rcnn_R_50_FPN_3x"} <= set(names)

    proc = _kmr(venv, work, "synthetic", "--output", "data/shapes", *SYNTHETIC)
    assert "writing train" in proc.stderr  # progress
    info = work / "data" / "shapes" / "dataset_info.json"
    written = info.stat().st_mtime_ns

    _kmr(venv, work, "train", "--config", "shapes", "--no-eval", "--no-export",
         "--set", *TINY_SHAPES)
    run = work / "runs" / "shapes"  # the packaged config's relative output_dir, under cwd
    assert (run / "model.weights.h5").is_file() and (run / "config.yaml").is_file()
    assert info.stat().st_mtime_ns == written  # train used the dataset `kmr synthetic` wrote

    config = str(run / "config.yaml")  # weights: model.weights.h5 beside it
    _kmr(venv, work, "evaluate", "--config", config)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {"bbox", "segm", "keypoints"} <= set(metrics)

    image = sorted((work / "data" / "shapes" / "val").iterdir())[0]
    _kmr(venv, work, "predict", "--config", config, "--input", str(image),
         "--output", "predicted.png")
    with Image.open(work / "predicted.png") as drawn, Image.open(image) as original:
        assert drawn.size == original.size

    proc = _kmr(venv, work, "export", "--config", config, "--output", "exported")
    assert (work / "exported" / "saved_model.pb").is_file()
    assert "tracing the serving signatures" in proc.stderr  # progress

    _kmr(venv, work, "tfrecord", "--annotations", "data/shapes/annotations/instances_val.json",
         "--images", "data/shapes/val", "--output", "records/val", "--shards", "1")
    assert len(list((work / "records").iterdir())) == 1
    assert "detect: first call" in _kmr(venv, work, "demo").stdout  # the bundled photo
    assert sorted(p.name for p in work.iterdir()) == ["data", "exported", "predicted.png",
                                                      "records", "runs"]
