"""Checkpoints (issue 20, items 3 and 11): kept only when sound, durable, restored over damaged
ones. A one-layer Keras model trained by ``model.fit`` with the real guard stands in for
Mask R-CNN (tests/integration/test_train.py runs the guard inside train.py)."""
import os

import h5py
import keras
import numpy as np
import pytest

from keras_maskrcnn import training
from keras_maskrcnn.training import checkpoints as ckpt
from support import tiny_keras


def _all_finite(path):
    values = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: values.append(item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return all(np.isfinite(v).all() for v in values if np.asarray(v).dtype.kind == "f")


@pytest.mark.parametrize("huge", [1e25, 3e38], ids=["explodes-next-step", "overflows-now"])
def test_diverging_run_keeps_only_checkpoints_that_resume(tmp_path, huge):
    """Update 4 uses a huge learning rate. 1e25: the weights after it are finite but the loss
    of step 5, computed from them, overflows; 3e38: the weights overflow at once. Either way
    training stops with a message, no kept checkpoint holds those weights, and resuming the
    newest kept one with a sane rate trains with finite losses (before: the step-4 checkpoint
    was written, and resuming it gave an infinite loss at once)."""
    model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2, huge, jump_at=3))
    guard = tiny_keras.guard(tmp_path, every=1)
    tiny_keras.fit(model, 8, [guard])
    assert guard.failed and "non-finite" in guard.failed
    kept = training.list_checkpoints(str(tmp_path))
    assert [s for s, _ in kept] == [1, 2, 3]
    assert all(_all_finite(path) for _, path in kept)
    assert not [n for n in os.listdir(tmp_path) if "pending" in n or "partial" in n]
    resumed = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    assert training.restore_latest(resumed, str(tmp_path)) == 3
    losses = tiny_keras.fit(resumed, 4, initial_epoch=1)
    assert np.isfinite(losses).all() and losses[-1] < 100, losses


def test_checkpoint_waits_for_the_next_loss_and_the_last_step_is_kept_at_once(tmp_path):
    """ckpt-s is pending until step s + 1's loss is finite; at total_steps it is kept at
    once, and fit stops there even when asked for more steps."""
    model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    guard = tiny_keras.guard(tmp_path, every=2, keep=2, total_steps=5)
    seen = []
    spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(
        (sorted(s for s, _ in training.list_checkpoints(str(tmp_path))), guard.pending)))
    tiny_keras.fit(model, 8, [guard, spy])
    assert int(model.optimizer.iterations.numpy()) == 5  # stopped at total_steps
    assert [s for s, _ in training.list_checkpoints(str(tmp_path))] == [4, 5]  # keep=2
    assert seen[1][0] == [] and seen[1][1][0] == 2  # step 2: written, pending
    assert seen[2][0] == [2] and seen[2][1] is None  # step 3: its loss kept ckpt-2


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """A truncated ckpt-3 (a crash mid-copy, a bad disk): resume says so and loads ckpt-2
    (before: the load error stopped the run)."""
    model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    tiny_keras.fit(model, 4, [tiny_keras.guard(tmp_path, every=1, total_steps=3)])
    newest = ckpt.checkpoint_path(str(tmp_path), 3)
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    messages = []
    resumed = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    assert training.restore_latest(resumed, str(tmp_path), log=messages.append) == 2
    assert len(messages) == 1 and newest in messages[0] and "unusable" in messages[0]
    assert int(resumed.optimizer.iterations.numpy()) == 2


def test_checkpoint_with_non_finite_weights_is_skipped_and_none_usable_is_an_error(tmp_path):
    model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    tiny_keras.fit(model, 2, [tiny_keras.guard(tmp_path, every=1, total_steps=2)])
    model.layers[0].kernel.assign(np.full((4, 1), np.nan, np.float32))  # as a diverged run's
    model.optimizer.iterations.assign(5)
    model.save_weights(ckpt.checkpoint_path(str(tmp_path), 5))
    messages = []
    resumed = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    assert training.restore_latest(resumed, str(tmp_path), log=messages.append) == 2
    assert "non-finite" in messages[0]
    for _, path in training.list_checkpoints(str(tmp_path)):
        with open(path, "wb") as f:
            f.write(b"not hdf5")
    with pytest.raises(training.CheckpointError, match="no usable checkpoint"):
        training.restore_latest(resumed, str(tmp_path), log=messages.append)


def test_checkpoint_is_fsynced_before_the_rename_and_the_directory_after(tmp_path,
                                                                         monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    model.optimizer.iterations.assign(7)
    path = ckpt.checkpoint_path(str(tmp_path), 7)
    ckpt.write_checkpoint(model, path)
    directory = os.path.realpath(tmp_path)
    assert events == [("fsync", os.path.join(directory, "ckpt-00000007.partial.weights.h5")),
                      ("replace", "ckpt-00000007.weights.h5"), ("fsync", directory)]
    assert os.listdir(tmp_path) == ["ckpt-00000007.weights.h5"]


def test_unfinished_files_of_a_killed_run_are_removed(tmp_path):
    for name in ("ckpt-00000004.pending.weights.h5", "ckpt-00000005.partial.weights.h5",
                 "ckpt-00000003.weights.h5"):
        (tmp_path / name).write_bytes(b"x")
    tiny_keras.guard(tmp_path)
    assert os.listdir(tmp_path) == ["ckpt-00000003.weights.h5"]
