"""Feature Pyramid Network (Lin et al. 2017, "Feature Pyramid Networks for Object Detection",
section 3: lateral connections and the top-down pathway), NHWC, configured as torchvision's
FeaturePyramidNetwork + LastLevelMaxPool (Mask R-CNN, the defaults) or as YOLACT's FPN (Bolya
et al. 2019, section 4, "Backbone Detector": C3..C5, bilinear top-down, ReLU outputs, P6/P7
by stride-2 convs).

Shape shorthand: B batch, H/W input image height/width, C channels; level Pl has stride
s = 2**l and, on a ResNet, ceil(H / s) x ceil(W / s) cells (at 550x550: C3..C5 are 69, 35, 18
and P3..P7 are 69, 35, 18, 9, 5).

Conventions pinned here (tests/models/test_backbones.py checks the defaults against torchvision's
FPN, tests/layers/test_fpn.py the YOLACT configuration against a torch reference of YOLACT's):
- Lateral 1x1 convs (with bias) map the input levels C_lo..C_hi to ``channels``; top-down, the
  running coarser map is upsampled to the finer lateral's exact size and added; a 3x3 conv
  (bias, torch padding 1 = symmetric), then ReLU if ``output_relu``, gives P_lo..P_hi.
- Top-down "nearest" follows torch's ``F.interpolate(size=..., mode="nearest")``: source index
  src = min(floor(dst * (in / out)), in - 1) computed in float32. ``tf.image.resize`` NEAREST
  uses half-pixel centres and picks other rows for non-2x ratios (e.g. 7 -> 13); see
  ``upsample_nearest_like`` (``upsample_method`` "resize", or "gather" for XLA training).
- Top-down "bilinear" is torch's ``F.interpolate(size=..., mode="bilinear",
  align_corners=False)``: half-pixel centres, no antialias (``upsample_bilinear_like``).
- Extra levels P_hi+1..P_max, each from the previous output: "max_pool" = max_pool(kernel 1,
  stride 2), every second cell from 0 (torchvision's LastLevelMaxPool, Mask R-CNN's P6);
  "conv" = 3x3 stride-2 conv with bias and torch padding 1 on every side, no ReLU (YOLACT's P6,
  P7). Both give ceil(n / 2) cells. Keras' "same" would pad only bottom/right on even sizes,
  hence the explicit pad.
- Initialisation as torchvision: kaiming_uniform(a=1) (= VarianceScaling(1, fan_in, uniform))
  for every conv, zero biases.
"""
import keras
import tensorflow as tf

INPUT_LEVELS = ("C2", "C3", "C4", "C5")
OUTPUT_LEVELS = ("P2", "P3", "P4", "P5", "P6")
TOP_DOWN_MODES = ("nearest", "bilinear")
EXTRA_LEVEL_KINDS = ("max_pool", "conv")


def _nearest_source_indices(in_size, out_size):
    """torch's nearest source index for each output index: [out_size] int32."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)  # float32, as torch
    dst = tf.cast(tf.range(out_size), tf.float32)
    src = tf.cast(tf.floor(dst * scale), tf.int32)
    return tf.minimum(src, in_size - 1)


def _with_static_shape(y, shape):
    """``y`` with the known dims of ``shape`` set statically: no runtime op (``tf.ensure_shape``
    leaves an ``EnsureShape`` check in the graph, which LiteRT has no builtin for)."""
    if not tf.executing_eagerly():
        y.set_shape(shape)
    return y


def upsample_nearest_like(x, target, method="resize"):
    """Nearest upsampling of ``x`` to the spatial size of ``target`` with torch's index rule.

    Equals ``F.interpolate(x, size=target.shape[-2:], mode="nearest")``: output row r reads
    input row min(floor(r * in / out), in - 1) (scale in float32), same for columns.

    Args:
        x: [B, h, w, C] coarse map.
        target: [B, H, W, C'] tensor whose H, W are used (may be dynamic).
        method: "resize" (default) uses TF's legacy ResizeNearestNeighbor kernel
            (align_corners=False, half_pixel_centers=False), which implements exactly this rule
            and is faster than gathers on CPU (bench/README.md); its gradient has no XLA kernel.
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
    return _with_static_shape(y, [x.shape[0], target.shape[1], target.shape[2], x.shape[3]])


def upsample_bilinear_like(x, target):
    """Bilinear resize of ``x`` to the spatial size of ``target``, half-pixel centres.

    Equals ``F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)``
    (no antialias): source coordinate (dst + 0.5) * in / out - 0.5, clamped at 0.

    Args:
        x: [B, h, w, C]. target: [B, H, W, C'] tensor whose H, W are used (may be dynamic).
    Returns:
        [B, H, W, C] in ``x``'s dtype (interpolated in float32).
    """
    in_hw, out_hw = x.shape[1:3], target.shape[1:3]
    if None not in in_hw and None not in out_hw and (out_hw[0] % in_hw[0] or out_hw[1] % in_hw[1]):
        y = _bilinear_by_matrices(x, out_hw)  # static, non-integer ratio (YOLACT's 18 -> 35)
    else:
        y = tf.raw_ops.ResizeBilinear(images=x, size=tf.shape(target)[1:3], align_corners=False,
                                      half_pixel_centers=True)  # float32
    y = tf.cast(y, x.dtype)
    return _with_static_shape(y, [x.shape[0], target.shape[1], target.shape[2], x.shape[3]])


def _interpolation_matrix(in_size, out_size):
    """(out_size, in_size) float32 weights of half-pixel bilinear resampling along one axis
    (TF's ResizeBilinear rule: source (dst + 0.5) * in / out - 0.5, clamped at 0; neighbours
    floor and floor + 1 clamped to in_size - 1)."""
    src = (tf.range(out_size, dtype=tf.float32) + 0.5) * (in_size / out_size) - 0.5
    src = tf.maximum(src, 0.0)  # (out,)
    low = tf.floor(src)
    frac = (src - low)[:, None]  # (out, 1)
    low = tf.cast(low, tf.int32)
    high = tf.minimum(low + 1, in_size - 1)
    return (tf.one_hot(low, in_size) * (1.0 - frac)
            + tf.one_hot(high, in_size) * frac)  # (out, in)


def _bilinear_by_matrices(x, out_hw):
    """``ResizeBilinear`` (half-pixel) of [B, h, w, C] to static out_hw as two matmuls.

    The same weights as the kernel (float rounding apart). Used for static non-integer ratios:
    tf2onnx turns a ResizeBilinear of constant size into an ONNX Resize with float *scales*,
    whose output size ONNX Runtime computes as floor(18 * (35 / 18)) = 34, not 35.
    """
    x = tf.cast(x, tf.float32)
    rows = _interpolation_matrix(x.shape[1], out_hw[0])  # (H, h)
    cols = _interpolation_matrix(x.shape[2], out_hw[1])  # (W, w)
    # lowercase letters only: ONNX Runtime's Einsum does not tell H from h
    y = tf.einsum("ih,bhwc->biwc", rows, x)  # [B, h, w, C] -> [B, H, w, C]
    return tf.einsum("jw,biwc->bijc", cols, y)  # -> [B, H, W, C]


def _initializer():
    return keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="uniform")


def _conv(channels, kernel_size, name):
    # "same" with stride 1 and an odd kernel pads symmetrically, as torch padding=k//2.
    return keras.layers.Conv2D(channels, kernel_size, padding="same", use_bias=True,
                               kernel_initializer=_initializer(), bias_initializer="zeros",
                               name=name)


def _extra_conv(channels, name):
    # "valid" after an explicit 1-pixel pad on every side = torch Conv2d(3, stride 2, padding 1).
    return keras.layers.Conv2D(channels, 3, strides=2, padding="valid", use_bias=True,
                               kernel_initializer=_initializer(), bias_initializer="zeros",
                               name=name)


def _level_numbers(input_levels):
    """("C3", "C4", "C5") -> [3, 4, 5]; the levels must be consecutive, finest first."""
    numbers = []
    for name in input_levels:
        if not (isinstance(name, str) and name[:1] == "C" and name[1:].isdigit()):
            raise ValueError(f"input_levels must be names 'C<int>', got {input_levels!r}")
        numbers.append(int(name[1:]))
    if not numbers or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ValueError(f"input_levels must be consecutive, finest first, got {input_levels!r}")
    return numbers


def _half(n):
    return None if n is None else -(-n // 2)  # ceil(n / 2)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class FPN(keras.layers.Layer):
    """FPN: {"C_lo".."C_hi"} -> {"P_lo".."P_max"}; defaults = torchvision's, C2..C5 -> P2..P6.

    Args:
        channels: output channels of every level (256 in torchvision's and YOLACT's models).
        upsample_method: "resize" (fast on CPU/GPU) or "gather" (XLA-compilable gradient) for
            the "nearest" top-down; identical values, see ``upsample_nearest_like``.
        input_levels: consecutive backbone levels, finest first ("C3", "C4", "C5" for YOLACT).
        max_level: coarsest output level; the levels above the last input level are extra.
        extra_levels: "max_pool" (Mask R-CNN's P6) or "conv" (YOLACT's P6, P7).
        top_down: "nearest" (torchvision) or "bilinear" (YOLACT).
        output_relu: ReLU after the 3x3 output convs (YOLACT); never on the extra levels.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: dict "C_lo".."C_hi" -> [B, H_l, W_l, C_l] (H, W may be unknown); extra keys
            ignored.
    Returns:
        dict "P_lo".."P_max" -> [B, H_l, W_l, channels]; P_lo..P_hi have the sizes of
        C_lo..C_hi, every extra level has ceil(H / 2) x ceil(W / 2) of the level below.

    Sub-layers: ``lateral_convs[i]`` (torchvision ``inner_blocks.i``), ``output_convs[i]``
    (``layer_blocks.i``), i over the input levels; ``extra_convs[j]`` for "conv" extra levels.
    """

    def __init__(self, channels=256, upsample_method="resize", input_levels=INPUT_LEVELS,
                 max_level=6, extra_levels="max_pool", top_down="nearest", output_relu=False,
                 **kwargs):
        super().__init__(**kwargs)
        if upsample_method not in ("resize", "gather"):
            raise ValueError(
                f"upsample_method must be 'resize' or 'gather', got {upsample_method!r}")
        if top_down not in TOP_DOWN_MODES:
            raise ValueError(f"top_down must be one of {TOP_DOWN_MODES}, got {top_down!r}")
        if extra_levels not in EXTRA_LEVEL_KINDS:
            raise ValueError(
                f"extra_levels must be one of {EXTRA_LEVEL_KINDS}, got {extra_levels!r}")
        numbers = _level_numbers(input_levels)
        if int(max_level) < numbers[-1]:
            raise ValueError(f"max_level {max_level} is below the last input level {numbers[-1]}")
        self.channels = int(channels)
        self.upsample_method = upsample_method
        self.input_levels = tuple(input_levels)
        self.max_level = int(max_level)
        self.extra_levels = extra_levels
        self.top_down = top_down
        self.output_relu = bool(output_relu)
        self.output_levels = tuple(f"P{n}" for n in range(numbers[0], self.max_level + 1))
        num_inputs = len(self.input_levels)
        self.lateral_convs = [_conv(self.channels, 1, f"lateral_{c}") for c in self.input_levels]
        self.output_convs = [_conv(self.channels, 3, f"output_{p}")
                             for p in self.output_levels[:num_inputs]]
        extra = self.output_levels[num_inputs:] if extra_levels == "conv" else ()
        self.extra_convs = [_extra_conv(self.channels, f"extra_{p}") for p in extra]

    def build(self, input_shape):
        for level, lateral, output in zip(self.input_levels, self.lateral_convs,
                                          self.output_convs):
            if level not in input_shape or input_shape[level][-1] is None:
                raise ValueError(f"{self.name}: needs {self.input_levels} with known channels, "
                                 f"got {input_shape}")
            lateral.build((None, None, None, input_shape[level][-1]))
            output.build((None, None, None, self.channels))
        for conv in self.extra_convs:
            conv.build((None, None, None, self.channels))
        self.built = True

    def _upsample(self, x, target):
        if self.top_down == "bilinear":
            return upsample_bilinear_like(x, target)
        return upsample_nearest_like(x, target, self.upsample_method)

    def _output(self, i, x):
        y = self.output_convs[i](x)
        return tf.nn.relu(y) if self.output_relu else y

    def call(self, inputs):
        laterals = [conv(inputs[level])
                    for conv, level in zip(self.lateral_convs, self.input_levels)]
        merged = laterals[-1]
        outputs = [self._output(len(laterals) - 1, merged)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down, coarse to fine
            merged = laterals[i] + self._upsample(merged, laterals[i])
            outputs.insert(0, self._output(i, merged))
        for _ in range(len(self.output_levels) - len(laterals)):  # extra levels
            if self.extra_levels == "max_pool":  # max_pool(kernel 1, stride 2)
                outputs.append(outputs[-1][:, ::2, ::2, :])
            else:
                padded = tf.pad(outputs[-1], [[0, 0], [1, 1], [1, 1], [0, 0]])  # torch pad 1
                outputs.append(self.extra_convs[len(outputs) - len(laterals)](padded))
        return dict(zip(self.output_levels, outputs))

    def compute_output_shape(self, input_shape):
        shapes = {}
        for level, out in zip(self.input_levels, self.output_levels):
            shapes[out] = tuple(input_shape[level][:3]) + (self.channels,)
        b, h, w, _ = shapes[self.output_levels[len(self.input_levels) - 1]]
        for out in self.output_levels[len(self.input_levels):]:
            h, w = _half(h), _half(w)
            shapes[out] = (b, h, w, self.channels)
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "upsample_method": self.upsample_method,
                       "input_levels": list(self.input_levels), "max_level": self.max_level,
                       "extra_levels": self.extra_levels, "top_down": self.top_down,
                       "output_relu": self.output_relu})
        return config
