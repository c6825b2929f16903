"""Training callbacks of ``keras_maskrcnn.accel`` (not a step of the method).

``ReleaseFreeMemory`` goes with the lean allocator of ``train.py --low-memory``
(``accel.memory``): ``run`` adds it when that allocator is in use.
"""
import keras

from keras_maskrcnn.accel import memory


class ReleaseFreeMemory(keras.callbacks.Callback):
    """After each training step, returns malloc's free heap pages to the system
    (``accel.memory.release_free_memory``)."""

    def on_train_batch_end(self, batch, logs=None):
        memory.release_free_memory()
