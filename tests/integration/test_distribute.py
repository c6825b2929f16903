"""tf.distribute: MirroredStrategy over 2 logical CPUs == one device; multi-worker training.

* ``test_mirrored_two_replicas_equals_one_device``: one ``fit`` step of the tiny model on a
  global batch of 2 (1 per replica; the images have 4 and 1 GT, so different numbers of
  positives and the global loss normalisers matter) gives the one-device losses and weight
  update. Mutations in the same run: per-replica normalisers would not give the one-device
  loss; Keras' stock global-norm clipping clips per replica (ours clips the global gradient);
  the replicas' samplers draw differently.
* ``test_multi_worker_*``: two MultiWorkerMirroredStrategy workers on 127.0.0.1 run
  ``run.train`` (what ``train.py`` runs) with checkpoints; both end with bit-identical model
  and optimizer state; only the chief writes the output directory; a second job resumes both
  workers from the chief's checkpoint. Workers are SIGKILLed after a timeout.
* ``test_multi_worker_input_decodes_disjoint_shares``: two workers build ``run.train_dataset``
  (one pipeline per worker) for a COCO JSON and a 2-file TFRecord source of landscape and
  portrait images with aspect-ratio grouping; the image ids each decoded are disjoint and
  together the whole split, each worker's batches come from its share and resume exactly
  there; one training step runs on the TFRecord pipelines.

Each run is a subprocess (logical devices and TF_CONFIG must be set before TensorFlow starts);
this file is also the worker script
(``python tests/integration/test_distribute.py one_step|train_worker|input_worker``).

Sampling: the RPN and RoI samplers draw random subsets, and a replica's draw (batch 1, seed
folded with the replica id) is not the single device's draw (batch 2). The comparison therefore
uses sampling sizes that keep every candidate (``FULL_SAMPLING``): RPN 8192 per image at
fraction 0.5 >= the 4092 anchors of a 128 px image; RoI heads 128 per image at fraction 1.0 >=
100 proposals + 5 GT. The draw then only permutes the samples, which sums do not see; the
default-strategy worker checks this by running the training forward twice (seeds advance).
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)

FULL_SAMPLING = {"model.rpn.batch_size_per_image": 8192,
                 "model.roi_heads.batch_size_per_image": 128,
                 "model.roi_heads.positive_fraction": 1.0,
                 "train.warmup_steps": 0, "train.base_learning_rate": 0.02}
#: GT per image: different numbers of positives, so the global normalisers matter.
NUM_GT = (4, 1)


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               KERAS_BACKEND="tensorflow", **extra)
    if "TF_CONFIG" not in extra:
        env.pop("TF_CONFIG", None)
    return env


# ----------------------------------------------------------------------------- worker side
def _one_step(mode, out_path, init_path):
    """One SGD step on a fixed global batch of 2; dumps losses and weights to ``out_path``."""
    import tensorflow as tf

    if mode == "mirrored":  # before anything initialises the TF runtime
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from support.models import synthetic_batch, tiny_config

    from keras_maskrcnn import run

    keras.utils.set_random_seed(0)
    cfg = tiny_config(**FULL_SAMPLING)
    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
    else:
        strategy = tf.distribute.get_strategy()
    model = run.build_training_model(cfg, strategy, None)
    if mode == "mirrored":  # the runs overlap: this one writes the initial weights ...
        model.save_weights(init_path + ".partial.weights.h5")
        os.replace(init_path + ".partial.weights.h5", init_path)
    else:  # ... and this one waits for them
        deadline = time.time() + 180
        while not os.path.exists(init_path) and time.time() < deadline:
            time.sleep(0.2)
        model.load_weights(init_path)
    batch = synthetic_batch(num_gt=NUM_GT, max_gt=cfg.input.max_instances, seed=3)
    result = {}
    _log(f"built {mode}")
    if mode == "default":
        result.update(_sampling_check(model, batch))
    else:
        result.update(_replica_loss_sums(model, strategy, batch))
        result.update(_clipping_check(strategy))
        result.update(_replica_draws(strategy, batch))
    _log("checked")
    before = {v.path: v.numpy() for v in model.trainable_variables}
    dataset = tf.data.Dataset.from_tensors(batch)
    history = model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0).history
    result.update({f"loss/{k}": v[-1] for k, v in history.items()})
    for v in model.trainable_variables:
        result[f"update/{v.path}"] = v.numpy() - before[v.path]
        result[f"weight/{v.path}"] = v.numpy()
    result["iterations"] = int(model.optimizer.iterations.numpy())
    _log("fit")
    np.savez(out_path, **result)


def _log(message, start=time.time()):
    print(f"[{time.time() - start:6.1f} s] {message}", file=sys.stderr, flush=True)


def _sampling_check(model, batch):
    """Two training forwards (the samplers' seeds advance): the losses must not change."""
    draws, outputs = [], None
    for _ in range(2):
        outputs = model(batch, training=True)
        draws.append({k: float(v) for k, v in model.compute_losses(outputs).items()})
    return {"sampling_spread": max(abs(draws[0][k] - draws[1][k]) / abs(draws[0][k])
                                   for k in draws[0]),
            "forward_losses": np.array([draws[0][k] for k in sorted(draws[0])]),
            "num_fg_rois": (outputs["roi_classes"].numpy() > 0).sum(axis=1),
            "num_fg_anchors": (outputs["rpn_labels"].numpy() > 0).sum(axis=1)}


def _replica_loss_sums(model, strategy, batch):
    """Per-replica losses summed over replicas, with global and (mutation) local normalisers.

    With ``global_count`` the sum is the one-device loss of the global batch; with per-replica
    counts it is not (the test asserts both, which shows the comparison can see the bug).
    """
    import tensorflow as tf

    from keras_maskrcnn.models import mask_rcnn

    def local_count(mask):
        return tf.maximum(tf.reduce_sum(tf.cast(mask, tf.float32)), 1.0)

    def replica_fn(x):
        outputs = model(x, training=True)
        real = mask_rcnn.global_count
        found = model.compute_losses(outputs)
        mask_rcnn.global_count = local_count
        try:
            local = model.compute_losses(outputs)
        finally:
            mask_rcnn.global_count = real
        return ([found[k] for k in sorted(found)], [local[k] for k in sorted(local)])

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    found, local = strategy.run(replica_fn, args=(next(iter(dataset)),))
    def total(values):
        return np.array([float(strategy.reduce("SUM", v, axis=None)) for v in values])

    return {"forward_losses": total(found), "forward_losses_local": total(local)}


def _replica_draws(strategy, batch):
    """The same image on both replicas, tiny.yaml's sampling: do the replicas' draws differ?"""
    import tensorflow as tf
    from support.models import tiny_config

    from keras_maskrcnn import builders

    with strategy.scope():
        model = builders.build_model(tiny_config())
    same = {k: np.concatenate([v[:1], v[:1]]) for k, v in batch.items()}
    inputs = next(iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(same))))

    def replica_fn(x):
        outputs = model(x, training=True)
        return outputs["rpn_labels"], outputs["class_logits"]  # logits of the sampled RoIs

    rpn_labels, rois = strategy.run(replica_fn, args=(inputs,))
    rpn = [v.numpy() for v in strategy.experimental_local_results(rpn_labels)]
    rois = [v.numpy() for v in strategy.experimental_local_results(rois)]
    return {"num_sampled_anchors": np.array([(r >= 0).sum() for r in rpn]),
            "same_rpn_draw": np.array_equal(*rpn), "same_roi_draw": np.array_equal(*rois)}


def _clipping_check(strategy):
    """Gradient clipping on two replicas whose gradients are [3, 0] and [-3, 4], clip norm 2.

    The global-batch gradient is their sum [0, 4]: clipped, [0, 2]. Keras' own optimizers
    clip each replica's gradient first ([2, 0] + [-1.2, 1.6] = [0.8, 1.6]).
    """
    import keras
    import tensorflow as tf

    from keras_maskrcnn import training

    result = {}
    for name, optimizer_class in (("ours", training.SGD), ("keras", keras.optimizers.SGD)):
        with strategy.scope():
            variable = keras.Variable(tf.zeros([2]))
            optimizer = optimizer_class(learning_rate=1.0, global_clipnorm=2.0)
            optimizer.build([variable])

        @tf.function
        def step():
            def replica_fn():
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                grad = tf.gather(tf.constant([[3.0, 0.0], [-3.0, 4.0]]), replica)
                optimizer.apply_gradients([(grad, variable)])
            strategy.run(replica_fn)

        step()
        result[f"clipped_gradient_{name}"] = -variable.numpy()  # lr 1 from 0: -gradient
    return result


# ------------------------------------------------------------------------------ test side
def _run_one_steps(tmp_path, modes, timeout=240):
    """Runs the ``_one_step`` workers of ``modes`` side by side; returns their results."""
    processes = {}
    try:
        for mode in modes:
            command = [sys.executable, __file__, "one_step", mode, str(tmp_path / f"{mode}.npz"),
                       str(tmp_path / "init.weights.h5")]
            processes[mode] = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=_env(), cwd=HERE)
        outputs = {mode: p.communicate(timeout=timeout)[0] for mode, p in processes.items()}
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for mode, p in processes.items():
        assert p.returncode == 0, f"{mode}:\n" + _tail(outputs[mode])
    return [dict(np.load(tmp_path / f"{mode}.npz")) for mode in modes]


def _max_update_diff(a, b):
    keys = [k for k in a if k.startswith("update/")]
    assert keys and set(keys) == {k for k in b if k.startswith("update/")}
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in keys)
    scale = max(float(np.abs(a[k]).max()) for k in keys)
    return diff, scale


def test_mirrored_two_replicas_equals_one_device(tmp_path):
    single, mirrored = _run_one_steps(tmp_path, ["default", "mirrored"])
    # the comparison is meaningful: sampling is exhaustive, positives differ per image
    assert single["sampling_spread"] < 1e-6
    assert single["num_fg_rois"][0] != single["num_fg_rois"][1]
    assert single["num_fg_anchors"][0] != single["num_fg_anchors"][1]
    assert single["iterations"] == mirrored["iterations"] == 1
    losses = sorted(k for k in single if k.startswith("loss/"))
    assert losses == sorted(k for k in mirrored if k.startswith("loss/"))
    for k in losses:
        np.testing.assert_allclose(mirrored[k], single[k], rtol=1e-4, atol=1e-5, err_msg=k)
    diff, scale = _max_update_diff(single, mirrored)
    print(f"max |update difference| {diff:.3g} (largest update {scale:.3g})")
    assert scale > 1e-3
    assert diff < 1e-4
    # mutation: per-replica normalisers (no all-reduce) would not give the one-device loss
    np.testing.assert_allclose(mirrored["forward_losses"], single["forward_losses"], rtol=1e-4)
    local = mirrored["forward_losses_local"] / single["forward_losses"]
    assert (np.abs(local - 1) > 0.2).all(), local
    # replicas draw independent samples (a replica's seed is folded with its id)
    assert mirrored["num_sampled_anchors"].tolist() == [64, 64]
    assert not mirrored["same_rpn_draw"] and not mirrored["same_roi_draw"]
    # gradient clipping sees the global-batch gradient (Keras' own clips per replica)
    np.testing.assert_allclose(mirrored["clipped_gradient_ours"], [0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(mirrored["clipped_gradient_keras"], [0.8, 1.6], atol=1e-6)


# ------------------------------------------------------------------------------ multi-worker
def _train_worker(out_path, *overrides):
    """One worker of a multi-worker job (TF_CONFIG set): ``run.train``, then dump its state."""
    from keras_maskrcnn import config, run

    cfg = config.load_config(os.path.join(ROOT, "configs", "tiny.yaml"), overrides=overrides)
    model, _ = run.train(cfg)
    state = {f"model/{v.path}": v.numpy() for v in model.weights}
    state.update({f"optimizer/{v.path}": v.numpy() for v in model.optimizer.variables})
    np.savez(out_path, **state)
    print("worker done", flush=True)


def _input_worker(out_path, data_file):
    """One worker of a multi-worker job (TF_CONFIG set): the image ids its training pipelines
    decoded and batched, for a COCO JSON and a TFRecord source; a resumed stream; one step."""
    from support.models import tiny_config

    from keras_maskrcnn import run, training
    from keras_maskrcnn.data import coco, tfrecord

    decoded = {"coco": [], "tfrecord": []}
    load_example = coco.CocoDataset.load_example
    decode_record = tfrecord.TFRecordSource.decode_record

    def recording_load(self, index, *args):
        decoded["coco"].append(self.images[index].image_id)
        return load_example(self, index, *args)

    def recording_decode(self, f, *args):
        decoded["tfrecord"].append(int(f["image/source_id"]))
        return decode_record(self, f, *args)

    coco.CocoDataset.load_example = recording_load
    tfrecord.TFRecordSource.decode_record = recording_decode
    with open(data_file) as f:
        data = json.load(f)
    strategy = training.select_strategy("auto")
    assert training.is_multi_worker(strategy) and strategy.num_replicas_in_sync == 2

    def ids_per_step(dataset, steps):  # (steps, per-replica batch) ids of this worker's replica
        iterator = iter(dataset)
        return np.array([strategy.experimental_local_results(next(iterator)["image_ids"])[0]
                         for _ in range(steps)])

    result = {}
    for source in ("coco", "tfrecord"):
        split = {"format": source, "annotations": data["annotations"]}
        split.update({"tfrecords": data["tfrecords"]} if source == "tfrecord"
                     else {"images": data["images"]})
        cfg = tiny_config(**{f"data.train.{k}": v for k, v in split.items()},
                          **{"data.group_by_aspect_ratio": "true", "train.batch_size": 4})
        dataset, train_source = run.train_dataset(cfg, 0, strategy)
        result[f"{source}/batched"] = ids_per_step(dataset, 12)
        result[f"{source}/resumed"] = ids_per_step(run.train_dataset(cfg, 3, strategy)[0], 4)
        result[f"{source}/decoded"] = np.array(sorted(set(decoded[source])))
    _log("input checked")
    model = run.build_training_model(cfg, strategy, train_source.categories.dataset_ids)
    history = model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0).history
    result["loss"] = np.array(history["loss"])
    result["iterations"] = int(model.optimizer.iterations.numpy())
    _log("one step")
    np.savez(out_path, **result)
    print("worker done", flush=True)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(tmp_path, name, overrides, timeout=240, mode="train_worker"):
    """Two workers on 127.0.0.1 (``python this_file mode out overrides...``); returns their
    dumped states. SIGKILL after ``timeout`` s."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    processes, logs, outs = [], [], []
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                 "index": index}})
            temp = tmp_path / f"{name}-tmp{index}"
            temp.mkdir()
            outs.append(tmp_path / f"{name}-worker{index}.npz")
            logs.append(open(tmp_path / f"{name}-worker{index}.log", "w"))
            processes.append(subprocess.Popen(
                [sys.executable, __file__, mode, str(outs[-1]), *overrides],
                stdout=logs[-1], stderr=subprocess.STDOUT, cwd=HERE,
                env=_env(TF_CONFIG=tf_config, TMPDIR=str(temp))))
        deadline = time.time() + timeout
        while time.time() < deadline and any(p.poll() is None for p in processes):
            if any(p.poll() for p in processes):  # one failed: the other would wait for it
                break
            time.sleep(0.5)
    finally:
        for p in processes:
            if p.poll() is None:  # a worker can hang at exit and ignore SIGTERM
                p.kill()
            p.wait(timeout=30)
        for f in logs:
            f.close()
    texts = [(tmp_path / f"{name}-worker{i}.log").read_text() for i in range(2)]
    for i, (p, text) in enumerate(zip(processes, texts)):
        assert p.returncode == 0, f"worker {i} (rc {p.returncode}):\n" + _tail(text)
    for i in range(2):  # the non-chief's temporary outputs are gone
        assert not list((tmp_path / f"{name}-tmp{i}").glob("keras_maskrcnn_worker_*"))
    return [dict(np.load(out)) for out in outs], texts


def _tail(text, keep=4000):
    lines = [l for l in text.splitlines() if "PredictCost" not in l]
    return "\n".join(lines)[-keep:]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _worker_overrides(tmp_path, total_steps):
    return [f"train.output_dir={tmp_path / 'run'}",
            f"data.synthetic.output_dir={tmp_path / 'data'}",
            f"train.total_steps={total_steps}", "train.checkpoint_every=2",
            "train.steps_per_epoch=2", "train.lr_decay_steps=[3]", "train.warmup_steps=1",
            "train.keep_checkpoints=5", "train.strategy=auto"]


def test_multi_worker_training_keeps_workers_identical(tmp_path):
    from keras_maskrcnn import training

    (chief, other), _ = _run_workers(tmp_path, "first", _worker_overrides(tmp_path, 4))
    _assert_same_state(chief, other)
    assert int(chief["optimizer/sgd/iteration"]) == 4
    # only the chief wrote the outputs
    run = tmp_path / "run"
    assert [s for s, _ in training.list_checkpoints(str(run / "checkpoints"))] == [2, 4]
    assert len(list((run / "logs").rglob("events.out.tfevents*"))) == 1
    assert (run / "model.weights.h5").exists() and (run / "config.yaml").exists()


def test_multi_worker_input_decodes_disjoint_shares(tmp_path):
    """Each worker decodes only its share: COCO JSON by image index, TFRecords by file."""
    from support.data import write_mixed_orientation_dataset

    data = write_mixed_orientation_dataset(tmp_path, 16, num_tfrecord_files=2)
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data, default=sorted))
    (first, second), texts = _run_workers(tmp_path, "input", [str(data_file)],
                                          mode="input_worker")
    for source in ("coco", "tfrecord"):
        decoded = [set(w[f"{source}/decoded"].tolist()) for w in (first, second)]
        assert not decoded[0] & decoded[1], source
        assert decoded[0] | decoded[1] == set(data["ids"]), source
        for worker, share in zip((first, second), decoded):
            batched = worker[f"{source}/batched"]
            assert batched.shape == (12, 2)  # per-replica batch: global 4 / 2 replicas
            assert set(batched.ravel().tolist()) == share  # 24 examples: every one of its 8
            np.testing.assert_array_equal(worker[f"{source}/resumed"], batched[3:7])
            portrait = np.isin(batched, list(data["portrait"]))
            assert (portrait.all(axis=1) | ~portrait.any(axis=1)).all()  # grouped
    for worker in (first, second):
        assert int(worker["iterations"]) == 1 and np.isfinite(worker["loss"]).all()


@pytest.mark.slow
def test_multi_worker_resume_reads_the_chiefs_checkpoints(tmp_path):
    """A second job resumes every worker from the chief's step-4 checkpoint, in lock step."""
    _run_workers(tmp_path, "first", _worker_overrides(tmp_path, 4))
    (chief, other), texts = _run_workers(tmp_path, "second", _worker_overrides(tmp_path, 6))
    for text in texts:
        assert "resuming from step 4" in text, _tail(text)
    _assert_same_state(chief, other)
    assert int(chief["optimizer/sgd/iteration"]) == 6


if __name__ == "__main__":
    sys.path.insert(1, TESTS)  # the support package
    if sys.argv[1] == "one_step":
        _one_step(*sys.argv[2:])
    elif sys.argv[1] == "train_worker":
        _train_worker(*sys.argv[2:])
    elif sys.argv[1] == "input_worker":
        _input_worker(*sys.argv[2:])
