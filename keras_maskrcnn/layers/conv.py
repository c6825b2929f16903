"""Conv2D / Conv2DTranspose / Dense: Keras' layers with faster CPU paths (and, for Dense, a
training-memory-friendlier gradient order) for the shapes Mask R-CNN uses.

Same weights, names, config and forward output as Keras' layer; only the gradient of an
eligible convolution (stride 1, "same" padding or a 1x1 kernel, no dilation, one group,
channels last, odd square kernel) comes from ``ops.conv.conv2d_same`` (forward convs and matmuls instead of
TensorFlow's conv backprop kernels). Every other configuration is Keras' own, and so is every
convolution when a GPU or TPU is visible (cuDNN's and XLA's gradient kernels are the fast path
there; the matmul gradient was tuned on CPU only).

``Conv2D(..., winograd=True)`` (the mask and keypoint heads' 3x3 convs on 14x14 RoI features)
also computes an eligible 3x3 float32 forward pass on the CPU with Winograd's F(2x2, 3x3)
(``ops.winograd``; 0.71x the time of TensorFlow's conv for 100 RoIs x 512 channels, 0.78x for
256, measured on the 2-core CPU; no gain on the backbone's large maps, so it is opt-in per layer).
"""
import keras
import tensorflow as tf

from keras_maskrcnn.ops.conv import conv2d_same, conv2d_transpose_unstrided_blocks
from keras_maskrcnn.ops.dense import dense
from keras_maskrcnn.ops.winograd import conv2d_winograd_3x3


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with the matmul-based gradient where it applies and, with
    ``winograd=True``, a Winograd forward pass for 3x3 kernels (see module)."""

    def __init__(self, *args, winograd=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.winograd = bool(winograd)

    @property
    def uses_fast_gradient(self):
        k = tuple(self.kernel_size)
        same = self.padding == "same" or k == (1, 1)  # a 1x1 "valid" conv is a "same" one
        return (tuple(self.strides) == (1, 1) and same
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                and self.data_format == "channels_last" and k[0] == k[1] and k[0] % 2 == 1)

    def convolution_op(self, inputs, kernel):
        if self.uses_fast_gradient and keras.backend.backend() == "tensorflow" and cpu_only():
            if self.winograd and tuple(self.kernel_size) == (3, 3) and inputs.dtype == tf.float32:
                return conv2d_winograd_3x3(inputs, kernel)
            return conv2d_same(inputs, kernel)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        config["winograd"] = self.winograd
        return config


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


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Dense(keras.layers.Dense):
    """``keras.layers.Dense`` whose kernel gradient is computed after its input gradient
    (``ops.dense``: no copy of the kernel when the optimizer updates it during the backward
    pass). Same weights, names, config and values; LoRA and quantized layers are Keras' own."""

    def call(self, inputs, training=None):
        if (self.lora_enabled or self.quantization_mode is not None
                or keras.backend.backend() != "tensorflow"):
            return super().call(inputs, training=training)
        x = dense(inputs, self.kernel)
        if self.bias is not None:
            x = x + tf.cast(self.bias, x.dtype)
        return self.activation(x) if self.activation is not None else x
