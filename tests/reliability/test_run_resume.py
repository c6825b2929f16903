"""Running training again (issue 20, items 3, 7 and 10): a finished run trains no more, the
fit schedule is a few calls whatever the step counts, a diverged run resumes with a sane
learning rate. The train.py runs (tiny Mask R-CNN) are marked slow."""
import os
import subprocess
import sys
import tracemalloc

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import support
from keras_maskrcnn import run, training
from keras_maskrcnn.data import pipeline
from keras_maskrcnn.training import checkpoints
from support.models import tiny_config

HEADS_OFF = {"model.mask_head.enabled": "false", "model.keypoint_head.enabled": "false"}


@pytest.mark.parametrize("start,total,per_epoch", [(12, 12, 5), (4, 4, 5), (12, 12, 6),
                                                   (20, 12, 5)])
def test_fit_schedule_of_a_finished_run_is_empty(start, total, per_epoch):
    """(before: (12, 12, 5) gave [(2, 3, 0)], a fit call with steps_per_epoch=0, which Keras
    reads as "until the data ends": the infinite training stream)."""
    assert training.fit_schedule(start, total, per_epoch) == []


def test_fit_schedule_allocates_nothing_per_epoch():
    """A billion one-step epochs: three calls at most, built without a list per epoch (before:
    one tuple per epoch, then merged: gigabytes for a huge total_steps)."""
    tracemalloc.start()
    calls = training.fit_schedule(3, 10**9, 1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert calls == [(3, 10**9, 1)] and peak < 100_000
    assert training.fit_schedule(7, 10**9 + 5, 10) == [(0, 1, 3), (1, 10**8, 10), (10**8,
                                                                                   10**8 + 1, 5)]
    for start, total, per_epoch in [(0, 13, 6), (4, 12, 6), (5, 23, 5), (0, 1, 7)]:
        calls = training.fit_schedule(start, total, per_epoch)
        assert sum((end - first) * n for first, end, n in calls) == total - start
        assert all(n > 0 for _, _, n in calls) and len(calls) <= 3


def test_running_a_finished_training_again_trains_nothing(tmp_path, monkeypatch, capsys):
    """total_steps=12 with 5 steps per epoch: the final checkpoint is ckpt-12; running again
    says so, does not call fit, and writes the final weights if they are missing."""
    cfg = tiny_config(**HEADS_OFF, **{"train.total_steps": 12, "train.checkpoint_every": 4,
                                      "train.lr_decay_steps": "[10]",
                                      "train.output_dir": str(tmp_path / "run"),
                                      "data.synthetic.output_dir": str(tmp_path / "data")})
    source = pipeline.load_split(cfg.data, "train", 0)
    model = run.build_training_model(cfg, tf.distribute.get_strategy(),
                                     source.categories.dataset_ids)
    model.optimizer.iterations.assign(12)
    path = os.path.join(cfg.train.output_dir, "checkpoints", "ckpt-00000012.weights.h5")
    training.write_checkpoint(model, path)
    estimate = checkpoints.estimated_size(model)  # the disk-space check's (test_run_disk_full)
    assert estimate / 2 < os.path.getsize(path) <= estimate

    def no_fit(*args, **kwargs):
        raise AssertionError("fit called on a finished run")

    monkeypatch.setattr(keras.Model, "fit", no_fit)
    trained, _ = run.train(cfg)
    assert "training already finished" in capsys.readouterr().out
    assert int(trained.optimizer.iterations.numpy()) == 12
    assert os.path.exists(os.path.join(cfg.train.output_dir, "model.weights.h5"))


# ----------------------------------------------------------------------------- train.py, slow
def _train(tmp_path, *settings, timeout=600):
    command = [sys.executable, os.path.join(support.ROOT, "train.py"), "--config",
               os.path.join(support.ROOT, "configs", "tiny.yaml"), "--no-eval", "--no-export",
               "--set", f"train.output_dir={tmp_path / 'run'}",
               f"data.synthetic.output_dir={tmp_path / 'data'}",
               *[f"{k}={v}" for k, v in HEADS_OFF.items()], *settings]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("total", [12, 4])
def test_train_py_run_again_after_finishing_exits_at_once(tmp_path, total):
    """The issue's commands: total_steps 12 (or 4) with checkpoint_every 4 and 5 steps per
    epoch, run twice (before: the second run trained on without end)."""
    settings = (f"train.total_steps={total}", "train.checkpoint_every=4",
                f"train.lr_decay_steps=[{total - 1}]")
    first = _train(tmp_path, *settings)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = _train(tmp_path, *settings, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "training already finished" in again.stdout
    steps = [s for s, _ in training.list_checkpoints(str(tmp_path / "run" / "checkpoints"))]
    assert steps[-1] == total


@pytest.mark.slow
def test_train_py_diverged_run_stops_and_resumes_with_a_sane_rate(tmp_path):
    """Steps 1-4 at a sane rate, then a huge one: train.py stops with a message and exit code
    1; every kept checkpoint is finite; the same command with a sane rate resumes and ends."""
    common = ("train.total_steps=8", "train.checkpoint_every=1", "train.lr_decay_steps=[7]",
              "train.warmup_steps=0", "train.clip_gradient_norm=null")
    sane = _train(tmp_path, *common, "train.total_steps=4", "train.lr_decay_steps=[3]")
    assert sane.returncode == 0, sane.stdout[-3000:] + sane.stderr[-3000:]
    diverged = _train(tmp_path, *common, "train.base_learning_rate=1e30")
    assert diverged.returncode == 1, diverged.stdout[-3000:] + diverged.stderr[-3000:]
    assert "ERROR: training stopped: non-finite" in diverged.stdout
    kept = training.list_checkpoints(str(tmp_path / "run" / "checkpoints"))
    for _, path in kept:
        with h5py.File(path, "r") as f:
            arrays = []
            f.visititems(lambda n, item: arrays.append(item[()])
                         if isinstance(item, h5py.Dataset) else None)
        assert all(np.isfinite(a).all() for a in arrays if np.asarray(a).dtype.kind == "f")
    resumed = _train(tmp_path, *common)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from step {kept[-1][0]}" in resumed.stdout
