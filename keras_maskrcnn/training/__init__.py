"""Training machinery for ``train.py``: strategy, optimiser and schedule, checkpoints, resume.

The loop itself is ``model.fit``. Checkpoints are ``ckpt-<step>.weights.h5`` files (model and
optimizer variables, the step is the optimizer's ``iterations``) written atomically every
``train.checkpoint_every`` steps; a restarted run loads the newest one, skips the examples the
previous run consumed (the pipeline is deterministic for a seed; multi-worker: each worker
within its own share, ``run.train_dataset``) and continues at that step.
A checkpoint also holds the state of the model's random seed generators (the RPN's and the RoI
sampler's draws), which Keras' weight files leave out, so a resumed run draws what the
uninterrupted one drew. A checkpoint is kept only when sound (finite weights that give a
finite loss), resume falls back over damaged ones (``training.checkpoints``); a non-finite loss
stops training with a message (``training.callbacks``); the output directory of a live run is
locked (``training.lock``). ``enable_determinism`` makes two runs of a seed bit-identical on a
CPU.
"""
import json
import math
import os

import keras
import tensorflow as tf

from keras_maskrcnn.accel.optimizer import UpdateAfterGradient
from keras_maskrcnn.models.base import is_multi_worker  # the models own it (compute_metrics)
from keras_maskrcnn.training.callbacks import CheckpointAndGuard
from keras_maskrcnn.training.checkpoints import (CHECKPOINT_PATTERN, RNG_GROUP, CheckpointError,
                                                 list_checkpoints, restore_latest,
                                                 seed_generator_states, write_checkpoint,
                                                 write_weights)

__all__ = ["CHECKPOINT_PATTERN", "RNG_GROUP", "CheckpointAndGuard", "CheckpointError",
           "list_checkpoints", "restore_latest", "seed_generator_states", "write_checkpoint",
           "write_weights"]  # re-exported: checkpoints and the guard live in their modules


# --------------------------------------------------------------------------- determinism
def enable_determinism(seed):
    """Makes training bit-identical for a seed on CPU (``train.deterministic``).

    For ``model.fit`` users: call it once, before building the model and the dataset; it
    seeds Python, NumPy, TensorFlow and Keras (``keras.utils.set_random_seed``) and turns on
    ``tf.config.experimental.enable_op_determinism``. The one CPU kernel of a Mask R-CNN
    training step found to vary between runs is the gradient of ``tf.image.crop_and_resize``
    with respect to the image (RoIAlign's backward, CropAndResizeGradImage): its threads add
    the RoIs' contributions to the feature map in the order they finish; with op determinism
    its result does not vary. Everything else is already deterministic for a seed: the
    tf.data pipeline (ordered maps, seeded shuffles, stateless augmentation), the samplers
    (stateless draws from seeded Keras SeedGenerators), oneDNN's kernels and the ``accel``
    kernels. Costs and limits (GPUs): README.md, "Deterministic training".
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# ------------------------------------------------------------------------------- strategy
def select_strategy(name):
    """A tf.distribute strategy for ``train.strategy``.

    "auto": TPUStrategy when a TPU is found, MultiWorkerMirroredStrategy when TF_CONFIG names a
    cluster, MirroredStrategy across the visible GPUs when there are several, otherwise the
    default strategy (one device).
    """
    if name == "auto":
        name = _auto_strategy_name()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this process writes the job's outputs (checkpoints, logs, final weights).

    Every process of a single-machine strategy is the chief. In a multi-worker job the chief
    is the "chief" task, or worker 0 when the cluster has no "chief" job (TF_CONFIG rules).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return True
    return _is_chief_task(task_type, resolver.task_id, resolver.cluster_spec().jobs)


def will_write_outputs(strategy_name):
    """``is_chief`` of the strategy ``select_strategy(strategy_name)`` would make, decided from
    TF_CONFIG before any strategy exists (``run`` locks the output directory first)."""
    if strategy_name == "auto":
        multi = bool(os.environ.get("TF_CONFIG")
                     and json.loads(os.environ["TF_CONFIG"]).get("cluster"))
    else:
        multi = strategy_name == "multi_worker"
    if not multi:
        return True
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return _is_chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().jobs)


def _is_chief_task(task_type, task_id, jobs):
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in jobs


def sync_workers(strategy):
    """Waits until every worker of a multi-worker strategy gets here (no-op otherwise)."""
    if is_multi_worker(strategy):
        ones = strategy.run(lambda: tf.ones([]))
        strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)  # a collective: a barrier


def _auto_strategy_name():
    try:
        tf.distribute.cluster_resolver.TPUClusterResolver()
        return "tpu"
    except (ValueError, tf.errors.NotFoundError, ImportError):
        pass
    if os.environ.get("TF_CONFIG") and json.loads(os.environ["TF_CONFIG"]).get("cluster"):
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


# ------------------------------------------------------------------------------ optimiser
@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """torchvision's detection schedule: linear warm-up, then x ``decay_factor`` at each step.

    lr(step) = base * f(step) * decay_factor ** (number of decay_steps <= step), where during
    warm-up f = warmup_factor * (1 - a) + a with a = step / warmup_steps, and f = 1 after.
    """

    def __init__(self, base_learning_rate, decay_steps, decay_factor=0.1, warmup_steps=0,
                 warmup_factor=0.001):
        self.base_learning_rate = float(base_learning_rate)
        self.decay_steps = [int(s) for s in decay_steps]
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decays = tf.add_n([tf.cast(step >= s, tf.float32) for s in self.decay_steps] or
                          [tf.zeros([])])
        lr = self.base_learning_rate * tf.pow(self.decay_factor, decays)
        if self.warmup_steps > 0:
            alpha = tf.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor * (1.0 - alpha) + alpha)
        return lr

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "decay_steps": self.decay_steps,
                "decay_factor": self.decay_factor, "warmup_steps": self.warmup_steps,
                "warmup_factor": self.warmup_factor}


class _GlobalBatchClipping:
    """Optimizer mixin: ``global_clipnorm`` clips the gradient of the global batch.

    Keras (3.15) clips each replica's gradient by its own norm and sums the replicas'
    gradients afterwards, so under a strategy the update differs from one device (measured:
    1.85x larger with 2 replicas). Here the norm is that of the replica sum (one extra
    all-reduce, only when clipping under a strategy) and every replica scales by it; the sum
    of the scaled gradients is then the one-device clipped gradient.
    """

    def _clip_gradients(self, grads):
        context = tf.distribute.get_replica_context()
        if (not self.global_clipnorm or context is None
                or context.num_replicas_in_sync == 1):
            return super()._clip_gradients(grads)
        present = [g for g in grads if g is not None]
        norm = tf.linalg.global_norm(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
        clip = tf.cast(self.global_clipnorm, norm.dtype)
        scale = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)  # NaN if not finite
        return [None if g is None else g * tf.cast(scale, g.dtype) for g in grads]


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class SGD(UpdateAfterGradient, _GlobalBatchClipping, keras.optimizers.SGD):
    """``keras.optimizers.SGD``: global-batch gradient clipping under a strategy, each update
    after its gradient."""


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class AdamW(UpdateAfterGradient, _GlobalBatchClipping, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW``: global-batch gradient clipping under a strategy, each
    update after its gradient."""


def build_optimizer(train_cfg):
    """SGD (momentum, weight decay) or AdamW with the warm-up / step-decay schedule.

    The learning rate is scaled linearly with the global batch (``train.learning_rate``).
    Keras applies weight decay decoupled from the gradient (torch's SGD adds it to the
    gradient before momentum); with momentum 0.9 and lr ~0.02 the two differ little.
    ``train.clip_gradient_norm`` clips the global batch's gradient, also under a strategy.
    """
    schedule = WarmupStepDecay(train_cfg.learning_rate, train_cfg.lr_decay_steps,
                               train_cfg.lr_decay_factor, train_cfg.warmup_steps,
                               train_cfg.warmup_factor)
    common = {"learning_rate": schedule, "weight_decay": train_cfg.weight_decay or None,
              "global_clipnorm": train_cfg.clip_gradient_norm}
    if train_cfg.optimizer == "adamw":
        return AdamW(beta_1=train_cfg.momentum, **common)
    return SGD(momentum=train_cfg.momentum, **common)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the logs (so TensorBoard and the bar show it)."""

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            optimizer = self.model.optimizer
            logs["learning_rate"] = float(optimizer.learning_rate.numpy()
                                          if hasattr(optimizer.learning_rate, "numpy")
                                          else optimizer.learning_rate)


def fit_schedule(start_step, total_steps, steps_per_epoch):
    """The fit calls that take training from ``start_step`` to ``total_steps``.

    Returns [(initial_epoch, epochs, steps_per_epoch)], at most three calls whatever the
    counts: the rest of a partly done epoch (after a resume), the whole epochs in one call,
    then a last shorter epoch. Empty when ``start_step >= total_steps`` (a finished run).
    """
    calls, step = [], start_step
    epoch, done = divmod(step, steps_per_epoch)
    if done and step < total_steps:
        n = min(steps_per_epoch - done, total_steps - step)
        calls.append((epoch, epoch + 1, n))
        step, epoch = step + n, epoch + 1
    whole = max(total_steps - step, 0) // steps_per_epoch
    if whole:
        calls.append((epoch, epoch + whole, steps_per_epoch))
        step, epoch = step + whole * steps_per_epoch, epoch + whole
    if step < total_steps:
        calls.append((epoch, epoch + 1, total_steps - step))
    return calls


def epochs_for(total_steps, steps_per_epoch):
    return math.ceil(total_steps / steps_per_epoch)
