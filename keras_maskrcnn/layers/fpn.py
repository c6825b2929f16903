"""Feature Pyramid Network (torchvision FeaturePyramidNetwork + LastLevelMaxPool), NHWC.

Shape shorthand: B batch, H/W input image height/width, C channels; level Pl (l = 2..6) has
stride s = 2**l and, on a ResNet, ceil(H / s) x ceil(W / s) cells.

Conventions pinned here (checked against torchvision in tests/test_backbones.py):
- Lateral 1x1 convs (with bias) map C2..C5 to ``channels``; top-down, the running coarser map is
  upsampled with NEAREST to the finer lateral's exact size and added; a 3x3 conv (bias, torch
  padding 1 = symmetric) then gives P2..P5. P6 = max_pool(P5, kernel 1, stride 2), i.e. every
  second cell starting at 0 (ceil(H5 / 2) rows).
- NEAREST follows torch's ``F.interpolate(size=..., mode="nearest")``: source index
  src = min(floor(dst * (in / out)), in - 1) computed in float32. ``tf.image.resize`` NEAREST
  uses half-pixel centres and picks other rows for non-2x ratios (e.g. 7 -> 13); see
  ``upsample_nearest_like`` (``upsample_method`` "resize", or "gather" for XLA training).
- Initialisation as torchvision: kaiming_uniform(a=1) (= VarianceScaling(1, fan_in, uniform))
  for every conv, zero biases.
"""
import keras
import tensorflow as tf


INPUT_LEVELS = ("C2", "C3", "C4", "C5")
OUTPUT_LEVELS = ("P2", "P3", "P4", "P5", "P6")


def _nearest_source_indices(in_size, out_size):
    """torch's nearest source index for each output index: [out_size] int32."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)  # float32, as torch
    dst = tf.cast(tf.range(out_size), tf.float32)
    src = tf.cast(tf.floor(dst * scale), tf.int32)
    return tf.minimum(src, in_size - 1)


def upsample_nearest_like(x, target, method="resize"):
    """Nearest upsampling of ``x`` to the spatial size of ``target`` with torch's index rule.

    Equals ``F.interpolate(x, size=target.shape[-2:], mode="nearest")``: output row r reads
    input row min(floor(r * in / out), in - 1) (scale in float32), same for columns.

    Args:
        x: [B, h, w, C] coarse map.
        target: [B, H, W, C'] tensor whose H, W are used (may be dynamic).
        method: "resize" (default) uses TF's legacy ResizeNearestNeighbor kernel
            (align_corners=False, half_pixel_centers=False), which implements exactly this rule
            and was ~8x faster than gathers on CPU; its gradient has no XLA kernel.
            "gather" uses two ``tf.gather``s: same values, XLA-compilable forward and backward.
    Returns:
        [B, H, W, C] in ``x``'s dtype.
    """
    out_hw = tf.shape(target)[1:3]
    if method == "resize":
        y = tf.raw_ops.ResizeNearestNeighbor(images=x, size=out_hw, align_corners=False,
                                             half_pixel_centers=False)
    elif method == "gather":
        in_hw = tf.shape(x)[1:3]
        y = tf.gather(x, _nearest_source_indices(in_hw[0], out_hw[0]), axis=1)  # [B, H, w, C]
        y = tf.gather(y, _nearest_source_indices(in_hw[1], out_hw[1]), axis=2)  # [B, H, W, C]
    else:
        raise ValueError(f"method must be 'resize' or 'gather', got {method!r}")
    # Keep whatever H, W are statically known from the target.
    return tf.ensure_shape(y, [x.shape[0], target.shape[1], target.shape[2], x.shape[3]])


def _conv(channels, kernel_size, name):
    init = keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="uniform")
    # "same" with stride 1 and an odd kernel pads symmetrically, as torch padding=k//2.
    return keras.layers.Conv2D(channels, kernel_size, padding="same", use_bias=True,
                               kernel_initializer=init, bias_initializer="zeros", name=name)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class FPN(keras.layers.Layer):
    """torchvision FPN with the max-pool extra level: {"C2".."C5"} -> {"P2".."P6"}.

    Args:
        channels: output channels of every level (256 in torchvision's detection models).
        upsample_method: "resize" (fast on CPU/GPU) or "gather" (XLA-compilable gradient);
            identical values, see ``upsample_nearest_like``.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: dict "C2".."C5" -> [B, H_l, W_l, C_l] (H, W may be unknown); extra keys ignored.
    Returns:
        dict "P2".."P6" -> [B, H_l, W_l, channels]; P2..P5 have the sizes of C2..C5,
        P6 has ceil(H_5 / 2) x ceil(W_5 / 2).

    Sub-layers: ``lateral_convs[i]`` (torchvision ``inner_blocks.i``) and ``output_convs[i]``
    (``layer_blocks.i``), i = 0..3 for C2..C5.
    """

    def __init__(self, channels=256, upsample_method="resize", **kwargs):
        super().__init__(**kwargs)
        if upsample_method not in ("resize", "gather"):
            raise ValueError(
                f"upsample_method must be 'resize' or 'gather', got {upsample_method!r}")
        self.channels = int(channels)
        self.upsample_method = upsample_method
        self.lateral_convs = [_conv(self.channels, 1, f"lateral_{c}") for c in INPUT_LEVELS]
        self.output_convs = [_conv(self.channels, 3, f"output_{p}") for p in OUTPUT_LEVELS[:4]]

    def build(self, input_shape):
        for level, lateral, output in zip(INPUT_LEVELS, self.lateral_convs, self.output_convs):
            if level not in input_shape or input_shape[level][-1] is None:
                raise ValueError(f"{self.name}: needs {INPUT_LEVELS} with known channels, "
                                 f"got {input_shape}")
            lateral.build((None, None, None, input_shape[level][-1]))
            output.build((None, None, None, self.channels))
        self.built = True

    def call(self, inputs):
        laterals = [conv(inputs[level]) for conv, level in zip(self.lateral_convs, INPUT_LEVELS)]
        merged = laterals[-1]
        outputs = [self.output_convs[-1](merged)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down: C4, C3, C2
            merged = laterals[i] + upsample_nearest_like(merged, laterals[i],
                                                           self.upsample_method)
            outputs.insert(0, self.output_convs[i](merged))
        outputs.append(outputs[-1][:, ::2, ::2, :])  # P6 = max_pool(P5, kernel 1, stride 2)
        return dict(zip(OUTPUT_LEVELS, outputs))

    def compute_output_shape(self, input_shape):
        shapes = {}
        for level, out in zip(INPUT_LEVELS, OUTPUT_LEVELS):
            shapes[out] = tuple(input_shape[level][:3]) + (self.channels,)
        b, h, w, _ = shapes["P5"]
        half = (lambda n: None if n is None else -(-n // 2))  # ceil(n / 2)
        shapes["P6"] = (b, half(h), half(w), self.channels)
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "upsample_method": self.upsample_method})
        return config
