"""YOLACT's prototype network (Bolya et al. 2019, section 3.1 "Prototype Generation", figure 3):
a fully convolutional branch on P3 producing k image-sized prototype masks.

Conventions pinned here (the reference's ``mask_proto_net`` of ``yolact_base_config``;
tests/models/test_yolact_model.py):
    * Three 3x3 convs (``channels``, "same" = torch padding 1) + ReLU, a bilinear x2 upsample
      with half-pixel centres and no antialias (torch ``interpolate(scale_factor=2,
      mode="bilinear", align_corners=False)``), one 3x3 conv + ReLU, one 1x1 conv to k, then
      ReLU on the prototypes (``mask_proto_prototype_activation``).
    * Weights as the reference: xavier (glorot) uniform kernels, zero biases.
    * Sub-layers ``convs[i]`` named ``conv_{i}`` = the reference's ``proto_net.{0, 2, 4, 8, 10}``.
    * Output float32 (losses and mask assembly stay float32 under mixed precision).

Shape shorthand: B batch; H3, W3 the P3 size (69 at 550); C input channels (256); k prototypes.
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Protonet(keras.layers.Layer):
    """P3 (B, H3, W3, C) -> prototypes (B, 2 H3, 2 W3, k) float32, non-negative.

    Args:
        num_prototypes: k (32).
        channels: width of the four 3x3 convs (256).
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, num_prototypes=32, channels=256, **kwargs):
        super().__init__(**kwargs)
        self.num_prototypes, self.channels = int(num_prototypes), int(channels)
        kernels = (3, 3, 3, 3, 1)
        filters = (self.channels,) * 4 + (self.num_prototypes,)
        self.convs = [keras.layers.Conv2D(f, k, padding="same", kernel_initializer="glorot_uniform",
                                          bias_initializer="zeros", name=f"conv_{i}",
                                          dtype=self.dtype_policy)
                      for i, (f, k) in enumerate(zip(filters, kernels))]

    def build(self, input_shape):
        channels = input_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = conv.filters
        self.built = True

    def call(self, x):
        for conv in self.convs[:3]:
            x = tf.nn.relu(conv(x))
        size = tf.shape(x)[1:3] * 2
        x = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=False,
                                      half_pixel_centers=True)  # float32
        x = tf.cast(x, self.compute_dtype)
        x = tf.nn.relu(self.convs[3](x))
        return tf.nn.relu(tf.cast(self.convs[4](x), tf.float32))  # (B, 2 H3, 2 W3, k)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w,
                self.num_prototypes)

    def get_config(self):
        config = super().get_config()
        config.update({"num_prototypes": self.num_prototypes, "channels": self.channels})
        return config
