"""CpuConv2D / CpuConv2DTranspose / CpuDense: Keras' layers with the CPU kernels of ``accel``.

Not a step of the method: ``accel.accelerate`` swaps a model's eligible ``keras.layers.Conv2D``
/ ``Conv2DTranspose`` / ``Dense`` instances to these subclasses (``__class__`` swap). Each only
overrides the compute method, so weights, variable paths, names and the Keras config stay
(``CpuConv2D`` adds its ``winograd`` flag); the forward output is Keras' to float32 rounding.
Each reports its Keras class's ``__name__`` (end of module): weight files are the same with
and without acceleration.

- ``CpuConv2D``: the gradient of an eligible convolution (``conv2d_eligible``: stride 1, "same"
  padding or a 1x1 kernel, no dilation, one group, channels last, odd square kernel) comes from
  ``accel.conv.conv2d_same`` (forward convs and matmuls instead of TensorFlow's conv backprop
  kernels); with ``winograd=True`` an eligible 3x3 float32 forward pass runs Winograd's
  F(2x2, 3x3) (``accel.winograd``): faster on small RoI maps only, so it is set per layer.
- ``CpuConv2DTranspose``: stride = kernel size, "valid" (the mask predictor's 2x2 / stride 2)
  runs as a matmul + depth_to_space (``accel.conv``).
- ``CpuDense``: the kernel gradient is computed after the input gradient (``accel.dense``);
  LoRA and quantized layers are not eligible.

Shape shorthand: B batch, H, W map size, C input channels, O output channels.
"""
import keras
import tensorflow as tf

from keras_maskrcnn.accel.conv import conv2d_same, conv2d_transpose_unstrided_blocks
from keras_maskrcnn.accel.dense import dense
from keras_maskrcnn.accel.winograd import conv2d_winograd_3x3


def conv2d_eligible(layer):
    """True when a ``keras.layers.Conv2D``'s configuration has the matmul-based gradient."""
    k = tuple(layer.kernel_size)
    same = layer.padding == "same" or k == (1, 1)  # a 1x1 "valid" conv is a "same" one
    return (tuple(layer.strides) == (1, 1) and same
            and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and layer.data_format == "channels_last" and k[0] == k[1] and k[0] % 2 == 1)


def conv2d_transpose_eligible(layer):
    """True when a ``keras.layers.Conv2DTranspose`` is a block matmul (stride = kernel)."""
    return (tuple(layer.strides) == tuple(layer.kernel_size) and layer.padding == "valid"
            and layer.output_padding is None and tuple(layer.dilation_rate) == (1, 1)
            and layer.data_format == "channels_last")


def dense_eligible(layer):
    """True for a ``keras.layers.Dense`` without LoRA or quantization."""
    return not layer.lora_enabled and layer.quantization_mode is None


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class CpuConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with the matmul-based gradient and, with ``winograd=True``,
    Winograd's forward pass for 3x3 float32 inputs (see module). Built for eligible
    configurations (``conv2d_eligible``); others compute as Keras."""

    winograd = False  # instances swapped in by ``accelerate`` start here

    def __init__(self, *args, winograd=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.winograd = bool(winograd)

    def convolution_op(self, inputs, kernel):
        if not conv2d_eligible(self):
            return super().convolution_op(inputs, kernel)
        if self.winograd and tuple(self.kernel_size) == (3, 3) and inputs.dtype == tf.float32:
            return conv2d_winograd_3x3(inputs, kernel)
        return conv2d_same(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        config["winograd"] = self.winograd
        return config


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class CpuConv2DTranspose(keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` as a block matmul when stride = kernel size, "valid"
    (``conv2d_transpose_eligible``); others compute as Keras."""

    def call(self, inputs):
        if not conv2d_transpose_eligible(self):
            return super().call(inputs)
        outputs = conv2d_transpose_unstrided_blocks(inputs, self.kernel)  # (B, sH, sW, O)
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, outputs.dtype)
        return self.activation(outputs) if self.activation is not None else outputs


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class CpuDense(keras.layers.Dense):
    """``keras.layers.Dense`` whose kernel gradient follows its input gradient
    (``accel.dense``); LoRA and quantized layers compute as Keras."""

    def call(self, inputs, training=None):
        if not dense_eligible(self):
            return super().call(inputs, training=training)
        x = dense(inputs, self.kernel)
        if self.bias is not None:
            x = x + tf.cast(self.bias, x.dtype)
        return self.activation(x) if self.activation is not None else x


#: plain Keras class -> (accelerated subclass, eligibility test); exact classes only.
ACCELERATED = {
    keras.layers.Conv2D: (CpuConv2D, conv2d_eligible),
    keras.layers.Conv2DTranspose: (CpuConv2DTranspose, conv2d_transpose_eligible),
    keras.layers.Dense: (CpuDense, dense_eligible),
}

# Keras' saving (``saving_lib``, 3.15) keys the weights of a layer held in a list (a head's
# ``convs``, ``fcs``) by ``snake_case(type(layer).__name__)``: each accelerated class takes its
# Keras class's ``__name__`` (``__qualname__`` and the registered name, "keras_maskrcnn>
# CpuConv2D", stay), so ``.weights.h5`` / ``.keras`` files are the same with and without it.
for _keras_class, (_accelerated, _) in ACCELERATED.items():
    _accelerated.__name__ = _keras_class.__name__
