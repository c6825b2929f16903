"""Conv2D: ``keras.layers.Conv2D`` whose stride-1 "same" convolutions train faster on CPU.

Same weights, names, config and forward output as Keras' layer; only the gradient of an
eligible convolution (stride 1, "same" padding, no dilation, one group, channels last, odd
square kernel) comes from ``ops.conv.conv2d_same`` (forward convs and matmuls instead of
TensorFlow's conv backprop kernels). Every other configuration is Keras' own, and so is every
convolution when a GPU or TPU is visible (cuDNN's and XLA's gradient kernels are the fast path
there; the matmul gradient was tuned on CPU only).
"""
import keras
import tensorflow as tf

from keras_maskrcnn.ops.conv import conv2d_same


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with the matmul-based gradient where it applies (see module)."""

    @property
    def uses_fast_gradient(self):
        k = self.kernel_size
        return (tuple(self.strides) == (1, 1) and self.padding == "same"
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                and self.data_format == "channels_last" and k[0] == k[1] and k[0] % 2 == 1)

    def convolution_op(self, inputs, kernel):
        if self.uses_fast_gradient and keras.backend.backend() == "tensorflow" and cpu_only():
            return conv2d_same(inputs, kernel)
        return super().convolution_op(inputs, kernel)


def cpu_only():
    """True when TensorFlow sees no GPU or TPU (convolutions then run on the CPU)."""
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
