"""A one-layer Keras regression model trained with the real checkpoint guard: fast stand-in for
Mask R-CNN in the checkpoint tests (tests/reliability). Its checkpoints are real Keras weights
files written by ``training.CheckpointAndGuard``."""
import keras
import numpy as np
import tensorflow as tf

from keras_maskrcnn import training


class StepLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """``sane`` before update ``jump_at`` (0-based optimizer step), ``huge`` from there on."""

    def __init__(self, sane, huge=None, jump_at=0):
        self.sane, self.huge, self.jump_at = sane, huge, jump_at

    def __call__(self, step):
        if self.huge is None:
            return tf.constant(self.sane, tf.float32)
        return tf.where(step >= self.jump_at, tf.constant(self.huge, tf.float32),
                        tf.constant(self.sane, tf.float32))

    def get_config(self):
        return {"sane": self.sane, "huge": self.huge, "jump_at": self.jump_at}


def regression_model(schedule):
    """Dense(4 -> 1), SGD with ``schedule``, built (so its optimizer variables exist)."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse", jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    return model


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)


def fit(model, steps, callbacks=(), initial_epoch=0):
    """``steps`` steps of batch 8 in one epoch; returns the per-step losses."""
    x, y = regression_data()
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    model.fit(x, y, batch_size=8, epochs=initial_epoch + 1, initial_epoch=initial_epoch,
              steps_per_epoch=steps, shuffle=False, verbose=0,
              callbacks=[*callbacks, record])
    return losses


def guard(directory, every=1, keep=10, total_steps=100):
    return training.CheckpointAndGuard(str(directory), every=every, keep=keep,
                                       total_steps=total_steps)
