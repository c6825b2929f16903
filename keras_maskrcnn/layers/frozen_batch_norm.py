"""FrozenBatchNorm: batch normalisation with fixed statistics and fixed affine parameters.

Shape shorthand: B batch, H/W feature-map height/width, C channels (NHWC, channels last).

The layer is torchvision's ``FrozenBatchNorm2d`` (the norm of its detection backbones):

    scale  = gamma * rsqrt(moving_variance + eps)
    offset = beta - moving_mean * scale
    y      = x * scale + offset

All four vectors are non-trainable variables; the output is the same in training and inference
(there is no batch-statistics path and nothing is ever updated). ``eps`` defaults to 1e-5 as
torchvision's ``FrozenBatchNorm2d(num_features, eps=1e-5)`` and detectron2's; torchvision runs
its V1 COCO detection weights with eps 0 (``overwrite_eps(model, 0.0)``): the backbone's
``bn_eps`` sets it.
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class FrozenBatchNorm(keras.layers.Layer):
    """Per-channel affine transform with frozen BatchNorm statistics (last axis = channels).

    Args:
        epsilon: added to ``moving_variance`` before the reciprocal square root (1e-5 =
            torchvision).
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype, ...).

    Call args:
        inputs: [B, H, W, C] (any rank >= 1; the last axis is the channel axis).
        training: ignored; the output never depends on it.

    Returns:
        Same shape as ``inputs``, in the layer's compute dtype.

    Weights (all non-trainable, shape [C], float32 variables): ``gamma`` (torch ``weight``),
    ``beta`` (torch ``bias``), ``moving_mean`` (``running_mean``), ``moving_variance``
    (``running_var``). The scale/offset are computed in the variable dtype (float32) and only
    then cast to the compute dtype, so a bfloat16 policy does not lose precision in rsqrt.
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        kwargs.pop("autocast", None)
        # autocast=False: read the float32 variables as float32, cast the folded result.
        super().__init__(autocast=False, **kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis must be known, got {input_shape}")
        for weight_name, init in (
            ("gamma", "ones"),
            ("beta", "zeros"),
            ("moving_mean", "zeros"),
            ("moving_variance", "ones"),
        ):
            var = self.add_weight(name=weight_name, shape=(channels,), initializer=init,
                                  trainable=False)
            setattr(self, weight_name, var)
        self.built = True

    def call(self, inputs, training=None):
        del training  # frozen: identical in training and inference
        x = tf.cast(inputs, self.compute_dtype)
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)  # float32 [C]
        offset = self.beta - self.moving_mean * scale  # float32 [C]
        return x * tf.cast(scale, x.dtype) + tf.cast(offset, x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
