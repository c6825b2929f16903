"""train.py: strict config, checkpoints, kill -9 and resume (--low-memory), the resumed data
stream (TFRecord and COCO JSON sources), NaN guard."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import config as config_lib, run, training
from keras_maskrcnn.accel import memory
import support
from support.data import write_mixed_orientation_dataset
from support.models import tiny_config

ROOT = support.ROOT


def _train_command(tmp_path, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config",
            os.path.join(ROOT, "configs", "tiny.yaml"), "--no-eval", "--no-export",
            "--set", f"train.output_dir={tmp_path / 'run'}",
            "--set", f"data.synthetic.output_dir={tmp_path / 'data'}", *extra]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return env


def test_bad_config_key_fails_before_any_work(tmp_path):
    result = subprocess.run(_train_command(tmp_path, "--set", "train.batch_sise=2"),
                            capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode != 0
    assert "train.batch_sise" in result.stderr and "batch_size" in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def _h5_arrays(path):
    """{dataset name: array} of every dataset in an h5 file (weights, optimizer, seeds)."""
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.update({name: item[()]})
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def _assert_bit_identical(path_a, path_b):
    a, b = _h5_arrays(path_a), _h5_arrays(path_b)
    assert a.keys() == b.keys() and len(a) > 100
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} arrays differ, e.g. {differ[:5]}"


def test_kill_and_resume_is_bit_identical_to_the_uninterrupted_run(tmp_path):
    """train.deterministic: two runs of a seed agree bit for bit (the killed run's checkpoint
    and the uninterrupted run's at that step); kill -9 after a checkpoint, then the same command
    resumes there and ends with the uninterrupted run's weights, optimizer and seed states."""
    settings = ("--set", "train.total_steps=12", "--set", "train.checkpoint_every=4",
                "--set", "train.steps_per_epoch=6", "--set", "train.lr_decay_steps=[10]",
                "--set", "train.deterministic=true", "--set", "data.group_by_aspect_ratio=true")
    command = _train_command(tmp_path, *settings)
    reference = subprocess.run(command + ["--set", f"train.output_dir={tmp_path / 'reference'}"],
                               capture_output=True, text=True, timeout=400, env=_env())
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=_env())
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not training.list_checkpoints(str(checkpoints)):
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    saved = training.list_checkpoints(str(checkpoints))
    assert saved, "no checkpoint before the kill"
    killed_at, killed_path = saved[-1]
    assert killed_at < 12
    reference_checkpoints = dict(training.list_checkpoints(
        str(tmp_path / "reference" / "checkpoints")))
    _assert_bit_identical(killed_path, reference_checkpoints[killed_at])
    # resumed with --low-memory: the process restarts once with huge pages, then trains
    result = subprocess.run(command + ["--low-memory"], capture_output=True, text=True,
                            timeout=400, env=_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from step {killed_at}" in result.stdout
    restarts = result.stderr.count("restarting with GLIBC_TUNABLES=")
    assert restarts == (memory._libc() is not None and memory._transparent_huge_pages())
    final = training.list_checkpoints(str(checkpoints))
    assert final[-1][0] == 12
    _assert_bit_identical(final[-1][1], reference_checkpoints[12])
    _assert_bit_identical(tmp_path / "run" / "model.weights.h5",
                          tmp_path / "reference" / "model.weights.h5")
    assert (tmp_path / "run" / "config.yaml").exists()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """10 landscape and portrait images, as COCO JSON and as 2 TFRecord files."""
    return write_mixed_orientation_dataset(tmp_path_factory.mktemp("mixed"), 10,
                                           num_tfrecord_files=2)


def _source_config(data, source, **extra):
    split = {"format": source, "annotations": data["annotations"]}
    split.update({"tfrecords": data["tfrecords"]} if source == "tfrecord"
                 else {"images": data["images"]})
    return tiny_config(**{f"data.train.{k}": v for k, v in split.items()}, **extra)


def _steps(cfg, start_step, count):
    """Batches ``count`` steps of what train.py feeds ``fit`` when it starts at ``start_step``."""
    dataset, _ = run.train_dataset(cfg, start_step)
    return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(count)]


def _simulate_grouping(stream, batch_size):
    """group_by_window on (image id, portrait) pairs: ids per batch, in emission order."""
    windows, batches = {False: [], True: []}, []
    for image_id, portrait in stream:
        windows[portrait].append(image_id)
        if len(windows[portrait]) == batch_size:
            batches.append(windows[portrait][:])
            windows[portrait].clear()
    return batches


@pytest.mark.parametrize("source", ["tfrecord", "coco"])
def test_resumed_stream_sees_the_uninterrupted_batches(mixed_data, source):
    """Resuming at step k (``run.train_dataset(cfg, k)``, what train.py does after a kill) with
    group_by_aspect_ratio on gives exactly the batches the uninterrupted run saw from step k
    on: image ids per step, sizes, flips, pixels. The images are landscape and portrait, so
    examples wait in a window across resume points: batching after skipping k x B examples
    (the TFRecord path before the records were put in window order) would differ."""
    cfg = _source_config(mixed_data, source, **{"data.group_by_aspect_ratio": "true"})
    batch = cfg.train.batch_size
    full = _steps(cfg, 0, 14)
    ids = [b["image_ids"].tolist() for b in full]
    assert {i for step in ids for i in step} == set(mixed_data["ids"])
    for b in full:  # one orientation per batch, both kinds
        portrait = b["image_sizes"][:, 0] > b["image_sizes"][:, 1]
        assert portrait.all() or not portrait.any()
    assert {bool(b["image_sizes"][0, 0] > b["image_sizes"][0, 1]) for b in full} == {0, 1}
    for k in range(1, 10):
        for step, (resumed, expected) in enumerate(zip(_steps(cfg, k, 4), full[k:]), k):
            assert resumed.keys() == expected.keys()
            for key in expected:
                np.testing.assert_array_equal(resumed[key], expected[key],
                                              err_msg=f"resumed at {k}, step {step}: {key}")
    # the same examples without grouping, in stream order: batching them only after the
    # skip would have given other batches at some resume points
    flat = [(int(b["image_ids"][0]), bool(b["image_sizes"][0, 0] > b["image_sizes"][0, 1]))
            for b in _steps(_source_config(mixed_data, source, **{"train.batch_size": 1,
                                                                   "data.group_by_aspect_ratio":
                                                                   "false"}), 0, 40)]
    assert _simulate_grouping(flat, batch)[:len(ids)] == ids
    assert any(_simulate_grouping(flat[k * batch:], batch)[:4] != ids[k:k + 4]
               for k in range(1, 10))


def test_fit_schedule_resumes_mid_epoch():
    assert training.fit_schedule(0, 12, 6) == [(0, 2, 6)]
    assert training.fit_schedule(4, 12, 6) == [(0, 1, 2), (1, 2, 6)]
    assert training.fit_schedule(6, 13, 6) == [(1, 2, 6), (2, 3, 1)]
    assert training.fit_schedule(12, 12, 6) == []


def test_warmup_step_decay_matches_torchvision_rule():
    schedule = training.WarmupStepDecay(0.02, [60, 80], 0.1, warmup_steps=10, warmup_factor=0.001)
    for step in (0, 5, 10, 59, 60, 79, 80, 100):
        alpha = min(step / 10, 1.0)
        warm = 0.001 * (1 - alpha) + alpha
        expected = 0.02 * warm * 0.1 ** sum(step >= s for s in (60, 80))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


class _FakeOptimizer:
    def __init__(self, step):
        self.iterations = type("V", (), {"numpy": lambda self_: np.int64(step)})()


class _FakeModel:
    def __init__(self, step):
        self.optimizer = _FakeOptimizer(step)
        self.stop_training = False
        self.saved = []

    variables = []

    def save_weights(self, path):
        h5py.File(path, "w").close()
        self.saved.append(path)


def test_nan_loss_stops_without_overwriting_the_last_good_checkpoint(tmp_path):
    """ckpt-2 is kept once step 3's loss (computed from its weights) is finite; a NaN loss at
    step 4 stops training and leaves it the newest (tests/reliability: the diverged update)."""
    guard = training.CheckpointAndGuard(str(tmp_path), every=2, keep=2, total_steps=10)
    for step in (2, 3):
        guard.set_model(_FakeModel(step=step))
        guard.on_train_batch_end(0, {"loss": 1.0, "mask_loss": 0.5})
    assert [s for s, _ in training.list_checkpoints(str(tmp_path))] == [2]
    guard.set_model(_FakeModel(step=4))
    guard.on_train_batch_end(1, {"loss": float("nan"), "mask_loss": 0.5})
    assert guard.failed and "step 4" in guard.failed
    assert guard.model.stop_training
    assert [s for s, _ in training.list_checkpoints(str(tmp_path))] == [2]


def test_checkpoints_keep_only_the_newest(tmp_path):
    guard = training.CheckpointAndGuard(str(tmp_path), every=1, keep=2, total_steps=10)
    for step in (1, 2, 3, 4):  # ckpt-4 waits for step 5's loss
        guard.set_model(_FakeModel(step=step))
        guard.on_train_batch_end(0, {"loss": 1.0})
    assert [s for s, _ in training.list_checkpoints(str(tmp_path))] == [2, 3]


def test_periodic_evaluation_writes_metrics(tmp_path):
    """eval.every_n_steps evaluates during training (and again at the end)."""
    command = _train_command(tmp_path, "--set", "train.total_steps=4", "--set",
                             "eval.every_n_steps=2", "--set", "train.lr_decay_steps=[3]",
                             "--set", "train.checkpoint_every=4", "--set", "eval.max_images=2",
                             "--set", "eval.num_visualizations=1")
    command.remove("--no-eval")
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Evaluate annotation type *bbox*") == 2
    assert (tmp_path / "run" / "eval" / "metrics.json").exists()
    assert list((tmp_path / "run" / "predictions").glob("*.png"))
    # Every periodic evaluation adds per-category APs and prediction images at its step, and
    # config.yaml carries the data's category ids and names (no annotation file to read).
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert [r["name"] for r in metrics["per_category"]["bbox"]] == [
        "circle", "triangle", "rectangle"]
    image_steps = sorted(
        event.step for path in (tmp_path / "run" / "logs" / "eval").glob("events.out.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value if value.tag == "predictions/0")
    assert image_steps == [2, 4]
    saved = config_lib.load_config(str(tmp_path / "run" / "config.yaml"))
    assert (saved.model.category_ids, saved.model.category_names) == (
        (1, 3, 7), ("circle", "triangle", "rectangle"))
