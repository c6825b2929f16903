"""The main job behind ``train.py``: train (resumable), evaluate, export, draw predictions."""
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile

import keras
import tensorflow as tf

from keras_maskrcnn import builders, config as config_lib, evaluation, training
from keras_maskrcnn import export as export_lib
from keras_maskrcnn.accel import callbacks as accel_callbacks, memory as accel_memory
from keras_maskrcnn.convert import weights
from keras_maskrcnn.data import images, pipeline
from keras_maskrcnn.training import lock as lock_lib

log = logging.getLogger("keras_maskrcnn")


def _paths(cfg):
    return _paths_under(cfg.train.output_dir)


def _paths_under(out):
    return {"root": out, "config": os.path.join(out, "config.yaml"),
            "checkpoints": os.path.join(out, "checkpoints"), "logs": os.path.join(out, "logs"),
            "weights": os.path.join(out, "model.weights.h5"), "eval": os.path.join(out, "eval"),
            "saved_model": os.path.join(out, "saved_model"),
            "predictions": os.path.join(out, "predictions")}


def train_dataset(cfg, start_step, strategy=None):
    """The training pipeline positioned after the ``start_step`` batches already consumed,
    carrying what the model needs (``builders.data_requirements``: masks, crowd boxes,
    keypoints).

    One process (default, mirrored, TPU strategies): one pipeline of global batches, which
    ``fit`` splits between the replicas. Multi-worker: one pipeline per worker
    (``strategy.distribute_datasets_from_function``), each decoding only its share of the
    split (``pipeline.build_dataset``'s ``num_shards``) in batches of train.batch_size /
    num_replicas_in_sync, one per replica and step, and positioned in its own stream.

    Returns:
        (dataset, source): a ``tf.data.Dataset``, or a ``tf.distribute.DistributedDataset``
        that ``fit`` takes as it is; source as ``pipeline.dataset_from_config``.
    """
    needs = builders.data_requirements(cfg)

    def build(batch_size, batches_per_step, num_shards=1, shard_index=0):
        return pipeline.dataset_from_config(
            cfg.data, cfg.input, "train", batch_size, training=True,
            keypoint_config=needs.keypoint_config, seed=cfg.train.seed,
            with_masks=needs.masks,
            skip_examples=start_step * batches_per_step * batch_size, num_shards=num_shards,
            shard_index=shard_index, with_crowd=needs.crowd_boxes)

    if strategy is None or not training.is_multi_worker(strategy):
        return build(cfg.train.batch_size, 1)
    sources = []

    def worker_dataset(context):  # called once per worker, with its tf.distribute.InputContext
        dataset, source = build(context.get_per_replica_batch_size(cfg.train.batch_size),
                                context.num_replicas_in_sync // context.num_input_pipelines,
                                context.num_input_pipelines, context.input_pipeline_id)
        sources.append(source)
        return dataset

    dataset = strategy.distribute_datasets_from_function(worker_dataset)
    return dataset, sources[0]


def build_training_model(cfg, strategy, category_ids):
    """Model and optimizer created (and built) inside the strategy's scope."""
    with strategy.scope():
        model = builders.build_model(cfg, category_ids=category_ids)
        # before compile: a checkpoint's optimizer state is not carried into fine-tuning
        weights.load_initial_weights(model, cfg.model)
        model.compile(optimizer=training.build_optimizer(cfg.train), jit_compile=False)
        if not model.optimizer.built:  # compile builds it once every layer is built
            model.optimizer.build(model.trainable_variables)
    return model


def train(cfg):
    """Trains to ``train.total_steps`` (resuming if checkpoints exist); returns (model, source).

    Multi-worker (TF_CONFIG): every worker runs this; only the chief writes ``output_dir``
    (config, checkpoints, logs, weights), which every worker reads to resume, so it must be on
    a file system they share, and only the chief locks it (``training.lock``).

    Raises:
      RuntimeError: a non-finite loss or non-finite weights stopped training, a checkpoint
        could not be written (``training.CheckpointError``), no checkpoint is usable, or
        another live run holds ``output_dir`` (``training.lock.OutputDirInUse``).
    """
    if cfg.train.deterministic:
        training.enable_determinism(cfg.train.seed)
    else:
        keras.utils.set_random_seed(cfg.train.seed)
    strategy = training.select_strategy(cfg.train.strategy)
    paths = _paths(cfg)
    chief = training.is_chief(strategy)
    # In a multi-worker job only the chief writes the outputs; the others write theirs to a
    # temporary directory (removed at the end) and read the chief's data and checkpoints.
    writes = paths if chief else _paths_under(tempfile.mkdtemp(prefix="keras_maskrcnn_worker_"))
    try:
        with _output_dir_lock(paths["root"], chief):
            return _train(cfg, strategy, paths, writes, chief)
    finally:
        if not chief:
            shutil.rmtree(writes["root"], ignore_errors=True)


def _train(cfg, strategy, paths, writes, chief):
    os.makedirs(writes["root"], exist_ok=True)
    if chief:
        source = pipeline.load_split(cfg.data, "train", _num_keypoints(cfg))
        cfg = builders.with_dataset_keypoint_categories(cfg, source.categories)
        cfg = builders.with_dataset_categories(cfg, source.categories)
        config_lib.save_config(cfg, paths["config"])
        report_annotations(source)
    training.sync_workers(strategy)  # the chief has written the synthetic data, if any
    if not chief:
        source = pipeline.load_split(cfg.data, "train", _num_keypoints(cfg),
                                     create_synthetic=False)
        cfg = builders.with_dataset_keypoint_categories(cfg, source.categories)
        cfg = builders.with_dataset_categories(cfg, source.categories)
    model = build_training_model(cfg, strategy, source.categories.dataset_ids)
    start = training.restore_latest(model, paths["checkpoints"])
    if start >= cfg.train.total_steps:
        print(f"training already finished: {paths['checkpoints']} holds step {start}, "
              f"train.total_steps is {cfg.train.total_steps}; nothing to train")
    elif start:
        print(f"resuming from step {start} ({paths['checkpoints']})")
    guard = training.CheckpointAndGuard(writes["checkpoints"], cfg.train.checkpoint_every,
                                        cfg.train.keep_checkpoints, cfg.train.total_steps)
    callbacks = [guard, training.LearningRateLogger(),
                 keras.callbacks.TensorBoard(writes["logs"], update_freq=cfg.train.log_every)]
    if cfg.eval.every_n_steps and chief and not training.is_multi_worker(strategy):
        callbacks.append(PeriodicEvaluation(cfg, cfg.eval.every_n_steps))
    if accel_memory.lean_allocator_in_use():  # train.py --low-memory
        callbacks.append(accel_callbacks.ReleaseFreeMemory())
    step = start
    for initial, epochs, steps in training.fit_schedule(start, cfg.train.total_steps,
                                                        cfg.train.steps_per_epoch):
        dataset, source = train_dataset(cfg, step, strategy)
        # shuffle=False: the pipeline shuffles (seeded, resumable); Keras' flag cannot apply
        # to a tf.data.Dataset and only warned that it was ignored
        model.fit(dataset, initial_epoch=initial, epochs=epochs, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=1, shuffle=False)
        if guard.failed:
            kept = training.list_checkpoints(paths["checkpoints"])
            message = (f"training stopped: {guard.failed}; last good checkpoint: "
                       f"{kept[-1][1] if kept else 'none'}")
            if guard.error is not None:
                raise training.CheckpointError(message, guard.error.hdf5_damaged)
            raise RuntimeError(message)
        step = int(model.optimizer.iterations.numpy())
    if start < cfg.train.total_steps or not os.path.exists(writes["weights"]):
        training.write_weights(model, writes["weights"])
    _report_skipped(source)
    return model, source


def _output_dir_lock(directory, owner):
    """The output directory's lock when this process writes it (``owner``), else nothing."""
    return lock_lib.output_dir_lock(directory) if owner else contextlib.nullcontext()


def _num_keypoints(cfg):
    return builders.data_requirements(cfg).num_keypoints


def report_annotations(source):
    """Prints the loader's summary of left-out annotations (COCO JSON sources; TFRecords were
    filtered when written)."""
    if source.report is not None:
        print(source.report.summary())


def _report_skipped(source):
    stats = source.stats
    if stats.num_skipped:
        names = ", ".join(path for path, _ in stats.skipped_images[:5])
        log.warning("skipped %d unreadable image(s): %s", stats.num_skipped, names)


class PeriodicEvaluation(keras.callbacks.Callback):
    """COCOeval on the validation split every ``every`` steps (metrics to TensorBoard), and
    the prediction pictures of ``draw_predictions`` (TensorBoard images at that step)."""

    def __init__(self, cfg, every):
        super().__init__()
        self.cfg, self.every = cfg, int(every)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every == 0 and step < self.cfg.train.total_steps:
            evaluate(self.cfg, self.model)
            draw_predictions(self.cfg, self.model)


def evaluate(cfg, model):
    """COCOeval on the validation split; metrics are also written to TensorBoard."""
    paths = _paths(cfg)
    val = pipeline.load_split(cfg.data, "val", _num_keypoints(cfg))
    report_annotations(val)
    metrics = evaluation.evaluate_model(model, val.annotation_file, val.image_dir,
                                        max_images=cfg.eval.max_images,
                                        output_dir=paths["eval"],
                                        max_image_pixels=cfg.input.max_image_pixels)
    writer = tf.summary.create_file_writer(os.path.join(paths["logs"], "eval"))
    with writer.as_default():
        step = int(model.optimizer.iterations.numpy()) if model.optimizer else 0
        for iou_type, values in metrics.items():
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    tf.summary.scalar(f"{iou_type}/{name}", value, step=step)
        for iou_type, rows in metrics.get("per_category", {}).items():
            for row in rows:
                if row["AP"] is not None:
                    tf.summary.scalar(f"{iou_type}_AP_per_category/{row['name']}", row["AP"],
                                      step=step)
    return metrics


def draw_predictions(cfg, model, count=None):
    """PNGs (and TensorBoard images at the optimizer's step) of predictions on the first
    validation images."""
    from keras_maskrcnn import visualize  # PIL: only when pictures are drawn

    paths = _paths(cfg)
    os.makedirs(paths["predictions"], exist_ok=True)
    val = pipeline.load_split(cfg.data, "val", _num_keypoints(cfg))
    names = {i + 1: n for i, n in enumerate(val.categories.names)}
    names.update({d: n for d, n in zip(val.categories.dataset_ids, val.categories.names)})
    drawn = []
    for record in val.images[:count or cfg.eval.num_visualizations]:
        image = images.read_image(record.path, cfg.input.max_image_pixels)
        result = model.detect([image])[0]
        picture = visualize.draw_detections(
            image, result, names, keypoint_skeleton=cfg.model.keypoint_head.skeleton,
            score_threshold=cfg.eval.visualization_score_threshold)
        path = os.path.join(paths["predictions"], f"{record.image_id}.png")
        visualize.save_png(picture, path)
        drawn.append(picture)
    writer = tf.summary.create_file_writer(os.path.join(paths["logs"], "eval"))
    step = int(model.optimizer.iterations.numpy()) if model.optimizer else 0
    with writer.as_default():
        for i, picture in enumerate(drawn):
            tf.summary.image(f"predictions/{i}", picture[None], step=step)
    writer.flush()
    return drawn


def train_and_evaluate(cfg, run_evaluation=True, run_export=True):
    """The main job; returns a process exit code. The output directory stays locked from
    training to export; a failed training is one ``ERROR:`` line and exit code 1
    (``report_failure``)."""
    failure = None
    try:
        with _output_dir_lock(cfg.train.output_dir,
                              training.will_write_outputs(cfg.train.strategy)):
            try:
                model, _ = train(cfg)
            except RuntimeError as e:
                failure = e
            else:
                return _evaluate_and_export(cfg, model, run_evaluation, run_export)
    except lock_lib.OutputDirInUse as e:
        failure = e
    return report_failure(failure)  # the lock is released by now


def report_failure(error):
    """Prints ``ERROR: <error>`` and returns exit code 1.

    When HDF5 failed in the middle of writing a checkpoint (``error.hdf5_damaged``: a disk
    that filled during the write), the process ends here with ``os._exit(1)``: HDF5's state is
    then broken, and freeing its objects at interpreter exit prints pages of errors and can
    crash (h5py issue #914).
    """
    print(f"ERROR: {error}")
    if getattr(error, "hdf5_damaged", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return 1


def _evaluate_and_export(cfg, model, run_evaluation, run_export):
    if not training.is_chief(model.distribute_strategy):
        return 0  # evaluation, export and pictures are the chief's
    paths = _paths(cfg)
    if run_evaluation:
        metrics = evaluate(cfg, model)
        print(json.dumps({k: {m: v for m, v in d.items() if m in ("AP", "AP50")}
                          for k, d in metrics.items() if k != "per_category"}, indent=1))
        draw_predictions(cfg, model)
    if run_export:
        export_lib.export_model(model, paths["saved_model"],
                                include_full_masks=cfg.export.include_full_masks,
                                max_image_pixels=cfg.input.max_image_pixels)
        print(f"exported {paths['saved_model']}")
    print(f"outputs in {paths['root']}")
    return 0
