"""Conv2D / Conv2DTranspose: Keras' layers with faster CPU paths for the shapes Mask R-CNN uses.

Same weights, names, config and forward output as Keras' layer; only the gradient of an
eligible convolution (stride 1, "same" padding, no dilation, one group, channels last, odd
square kernel) comes from ``ops.conv.conv2d_same`` (forward convs and matmuls instead of
TensorFlow's conv backprop kernels). Every other configuration is Keras' own, and so is every
convolution when a GPU or TPU is visible (cuDNN's and XLA's gradient kernels are the fast path
there; the matmul gradient was tuned on CPU only).
"""
import keras
import tensorflow as tf

from keras_maskrcnn.ops.conv import conv2d_same, conv2d_transpose_unstrided_blocks


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


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose``; stride = kernel size, "valid" (the mask predictor's
    2x2 / stride 2) runs as a matmul + depth_to_space (``ops.conv``), same output. Same weights,
    names and config as Keras' layer; other configurations are Keras' own."""

    @property
    def uses_block_matmul(self):
        return (tuple(self.strides) == tuple(self.kernel_size) and self.padding == "valid"
                and self.output_padding is None and tuple(self.dilation_rate) == (1, 1)
                and self.data_format == "channels_last")

    def call(self, inputs):
        if not (self.uses_block_matmul and keras.backend.backend() == "tensorflow"):
            return super().call(inputs)
        outputs = conv2d_transpose_unstrided_blocks(inputs, self.kernel)
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, outputs.dtype)
        return self.activation(outputs) if self.activation is not None else outputs
