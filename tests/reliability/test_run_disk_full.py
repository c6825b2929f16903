"""Disk full during a checkpoint (issue 20, item 9): one line with Errno 28 and the path, no
h5py noise, no crash, no partial file; older checkpoints survive and resume.

A real full disk needs a small tmpfs (root and ``mount``); without them those tests skip and
the writer is made to fail mid-write instead."""
import contextlib
import errno
import os
import subprocess
import sys
import tempfile

import pytest

from keras_maskrcnn import training
from keras_maskrcnn.training import checkpoints as ckpt
from support import tiny_keras

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def small_tmpfs(size="4m"):
    directory = tempfile.mkdtemp(prefix="kmr_tmpfs_")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              directory], capture_output=True).returncode == 0
    try:
        if not mounted:
            pytest.skip("needs root and mount for a real full disk (a tmpfs)")
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", directory], check=True)
        os.rmdir(directory)


def _fill(directory, leave=16 << 10):
    stat = os.statvfs(directory)
    with open(os.path.join(directory, "filler"), "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))


def _assert_disk_full_stop(guard, directory, kept):
    assert guard.failed and "\n" not in guard.failed
    assert "[Errno 28] No space left on device" in guard.failed
    assert os.path.join(directory, f"ckpt-{kept[-1] + 1:08d}") in guard.failed
    assert guard.model.stop_training
    assert [s for s, _ in training.list_checkpoints(directory)] == kept
    assert not [n for n in os.listdir(directory) if "partial" in n or "pending" in n]


def test_writer_failing_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """save_weights writes half a file, then the disk is full."""
    model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    guard = tiny_keras.guard(tmp_path, every=1)
    tiny_keras.fit(model, 2, [guard])
    real_save = type(model).save_weights

    def full_disk(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: ...")

    monkeypatch.setattr(type(model), "save_weights", full_disk)
    tiny_keras.fit(model, 2, [guard], initial_epoch=1)
    _assert_disk_full_stop(guard, str(tmp_path), [1, 2])


def test_full_tmpfs_is_refused_before_hdf5_writes_and_resume_works():
    with small_tmpfs() as directory:
        model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
        guard = tiny_keras.guard(directory, every=1)
        tiny_keras.fit(model, 2, [guard])
        _fill(directory)
        tiny_keras.fit(model, 2, [guard], initial_epoch=1)
        _assert_disk_full_stop(guard, directory, [1, 2])
        assert "MiB free" in guard.failed
        resumed = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
        assert training.restore_latest(resumed, directory) == 2


HDF5_FULL = """
import os, sys
from keras_maskrcnn import run
from keras_maskrcnn.training import checkpoints
from support import tiny_keras
directory = sys.argv[1]
import keras, numpy as np
model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")  # ~530 KB per checkpoint
x = np.random.default_rng(0).normal(size=(64, 256)).astype("float32")
y = x[:, :1]
guard = tiny_keras.guard(directory, every=1)
model.fit(x, y, batch_size=8, steps_per_epoch=2, verbose=0, callbacks=[guard])
stat = os.statvfs(directory)
with open(os.path.join(directory, "filler"), "wb") as f:
    f.write(b"\\0" * (stat.f_bavail * stat.f_frsize - (128 << 10)))
checkpoints.estimated_size = lambda model: 0  # as if the disk filled during the write
model.fit(x, y, batch_size=8, steps_per_epoch=2, epochs=2, initial_epoch=1, verbose=0,
          callbacks=[guard])
sys.exit(run.report_failure(guard.error))
"""


@pytest.mark.slow  # a subprocess importing TensorFlow
def test_disk_filling_inside_hdf5_is_one_line_without_a_crash():
    """The space check passes, then HDF5 itself hits ENOSPC (another writer took the space):
    before, ~170 lines of h5py errors and a segmentation fault at exit."""
    with small_tmpfs() as directory:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
                   TF_CPP_MIN_LOG_LEVEL="3")
        result = subprocess.run([sys.executable, "-c", HDF5_FULL, directory],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stdout
        assert "[Errno 28] No space left on device" in lines[0] and directory in lines[0]
        assert "h5py" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert [s for s, _ in training.list_checkpoints(directory)] == [1, 2]
        assert not [n for n in os.listdir(directory) if "partial" in n or "pending" in n]


def test_final_weights_on_a_full_disk_are_one_error(tmp_path, monkeypatch):
    """run.py writes model.weights.h5 through the same writer."""
    model = tiny_keras.regression_model(tiny_keras.StepLearningRate(1e-2))
    stat = os.statvfs(tmp_path)
    monkeypatch.setattr(ckpt, "estimated_size", lambda m: stat.f_bavail * stat.f_frsize * 4)
    path = str(tmp_path / "model.weights.h5")
    with pytest.raises(training.CheckpointError, match=r"model.weights.h5 not written: "
                                                       r"\[Errno 28\]"):
        training.write_weights(model, path)
    assert os.listdir(tmp_path) == []
