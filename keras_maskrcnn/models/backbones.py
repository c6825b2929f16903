"""ResNet and ResNeXt backbones (Mask R-CNN section 3, "Network Architecture": ResNet-50/101
and ResNeXt-101 bodies; ResNeXt: Xie et al. 2017, section 3.3 "aggregated transformations" as
grouped convolutions) in torchvision's layout, NHWC, returning the C2..C5 feature maps.

Shape shorthand: B batch, H/W input image height/width, C channels; ceil(H / s) is the height of
the level with stride s (C2: s=4, C3: 8, C4: 16, C5: 32).

Conventions pinned here (checked against torchvision in tests/models/test_backbones.py and
tests/models/test_resnext.py):
- ResNet v1.5: in a bottleneck the stride sits in the 3x3 conv (conv2), as in torchvision.
  ``stride_in_1x1=True`` moves it onto the first 1x1 conv (conv1) instead: the original MSRA
  ResNet, detectron2's ``RESNETS.STRIDE_IN_1X1`` (its R50/R101 ImageNet weights). Basic blocks
  have no 1x1 conv and ignore it, as detectron2's ``BasicBlock`` does.
- ResNeXt (torchvision's ``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d``): a
  bottleneck's inner width is ``int(planes * width_per_group / 64) * groups`` and its 3x3 conv
  has ``groups`` groups (contiguous channel slices, as torch's); ResNet is groups 1, width 64.
- Convs have no bias; every conv is followed by a FrozenBatchNorm whose eps is ``bn_eps`` (1e-5:
  torchvision's default and detectron2's; torchvision's V1 COCO detection weights need 0).
- Padding is torch's: symmetric. The 7x7 stem conv pads 3 on every side, stride-2 3x3 convs pad
  1 on every side, the 3x3/2 stem max-pool pads 1 with -inf. Keras "same" pads stride-2 convs
  asymmetrically (0 before, 1 after for even sizes), so those use an explicit ``tf.pad`` +
  "valid". Stride-1 3x3 convs use "same", which is symmetric there. Every level therefore has
  ceil(H / stride) rows for any H, including sizes that are not multiples of 32.
- ``freeze_at`` follows detectron2: 0 nothing frozen, 1 the stem, 2 stem + res2 (torchvision's
  default ``trainable_layers=3``), ..., 5 everything. FrozenBatchNorm weights are never
  trainable whatever ``freeze_at`` says.
- Stage names follow detectron2 (res2..res5 = torchvision layer1..layer4); the block sub-layers
  keep torchvision's names (conv1/bn1/.../shortcut_conv = downsample.0, shortcut_bn =
  downsample.1) so that ``keras_maskrcnn.convert.torchvision`` can address them.

Shape shorthand: B batch, H/W input image height/width, C channels; ceil(H / s) is the height of
the level with stride s (C2: s=4, C3: 8, C4: 16, C5: 32).
"""
import keras
import tensorflow as tf

from keras_maskrcnn.layers.frozen_batch_norm import FrozenBatchNorm

# depth -> (block type, number of blocks in res2..res5); torchvision's resnet18..resnet101.
_ARCHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
# ResNeXt name -> (depth, groups, width_per_group); torchvision's resnext* constructors.
_RESNEXT = {
    "resnext50_32x4d": (50, 32, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext101_64x4d": (101, 64, 4),
}
NAMES = tuple(f"resnet{depth}" for depth in _ARCHS) + tuple(_RESNEXT)
_EXPANSION = {"basic": 1, "bottleneck": 4}
_NORMS = ("frozen_bn",)
LEVELS = ("C2", "C3", "C4", "C5")


def _he_fan_out():
    """torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu")."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def _conv(filters, kernel_size, strides, name, groups=1):
    """Bias-free conv; torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu")."""
    # A stride-1 conv pads symmetrically with "same"; stride > 1 gets an explicit pad in call().
    padding = "same" if strides == 1 else "valid"
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                               groups=groups, use_bias=False, kernel_initializer=_he_fan_out(),
                               name=name)


def _pad_hw(x, pad, value=0.0):
    """Pads H and W of an NHWC tensor by ``pad`` on both sides (torch's symmetric padding)."""
    return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=value)


def _conv_pad(conv):
    """Explicit symmetric pad for a "valid" conv with stride > 1 (kernel // 2, as torch's)."""
    return conv.kernel_size[0] // 2 if conv.padding == "valid" else 0


def _apply_conv(conv, x):
    pad = _conv_pad(conv)
    return conv(_pad_hw(x, pad) if pad else x)


def _build_pairs(pairs, in_channels):
    """Builds a chain of (conv, bn) pairs starting from ``in_channels``; returns out channels."""
    for conv, bn in pairs:
        conv.build((None, None, None, in_channels))
        bn.build((None, None, None, conv.filters))
        in_channels = conv.filters
    return in_channels


def bottleneck_width(planes, groups=1, width_per_group=64):
    """torchvision's Bottleneck inner width: int(planes * width_per_group / 64) * groups."""
    width = int(planes * (width_per_group / 64.0)) * groups
    if width < groups:
        raise ValueError(f"bottleneck width {width} for planes {planes}: groups {groups} x "
                         f"width_per_group {width_per_group} leaves < 1 channel per group")
    return width


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ResNetBlock(keras.layers.Layer):
    """One torchvision residual block: "basic" (two 3x3) or "bottleneck" (1x1, 3x3/s, 1x1).

    Args:
        filters: torchvision's ``planes``; the block outputs ``filters * expansion`` channels
            (expansion 1 for "basic", 4 for "bottleneck").
        strides: 1 or 2, applied in the first 3x3 conv (v1.5; the first 1x1 conv with
            ``stride_in_1x1``) and in the shortcut conv.
        block_type: "basic" or "bottleneck".
        use_shortcut_conv: True where torchvision has a ``downsample`` (1x1/s conv + BN).
        groups: groups of the bottleneck's 3x3 conv (ResNeXt cardinality; 1 = ResNet).
        width_per_group: channels per group at planes 64 (torchvision's ``base_width``; 64 =
            ResNet). Basic blocks need groups 1 and width 64, as torchvision's ``BasicBlock``.
        stride_in_1x1: bottleneck only: the stride on conv1 (MSRA / detectron2) instead of conv2.
        bn_eps: epsilon of every FrozenBatchNorm of the block.

    Call: [B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), filters * expansion].
    """

    def __init__(self, filters, strides=1, block_type="bottleneck", use_shortcut_conv=False,
                 groups=1, width_per_group=64, stride_in_1x1=False, bn_eps=1e-5, **kwargs):
        super().__init__(**kwargs)
        if block_type not in _EXPANSION:
            raise ValueError(f"block_type must be one of {sorted(_EXPANSION)}, got {block_type!r}")
        self.filters, self.strides = int(filters), int(strides)
        self.block_type, self.use_shortcut_conv = block_type, bool(use_shortcut_conv)
        self.groups, self.width_per_group = int(groups), int(width_per_group)
        self.stride_in_1x1, self.bn_eps = bool(stride_in_1x1), float(bn_eps)
        out_channels = self.filters * _EXPANSION[block_type]
        if block_type == "bottleneck":
            width = bottleneck_width(self.filters, self.groups, self.width_per_group)
            s1, s2 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
            self.conv1 = _conv(width, 1, s1, "conv1")
            self.conv2 = _conv(width, 3, s2, "conv2", groups=self.groups)
            self.conv3 = _conv(out_channels, 1, 1, "conv3")
            self.bn3 = FrozenBatchNorm(self.bn_eps, name="bn3")
        else:
            if self.groups != 1 or self.width_per_group != 64:
                raise ValueError("basic blocks support only groups=1 and width_per_group=64, "
                                 f"got {self.groups} and {self.width_per_group}")
            self.conv1 = _conv(self.filters, 3, self.strides, "conv1")
            self.conv2 = _conv(out_channels, 3, 1, "conv2")
            self.conv3 = self.bn3 = None
        self.bn1 = FrozenBatchNorm(self.bn_eps, name="bn1")
        self.bn2 = FrozenBatchNorm(self.bn_eps, name="bn2")
        self.shortcut_conv = self.shortcut_bn = None
        if self.use_shortcut_conv:
            # 1x1 stride-s conv without padding: samples pixels 0, s, 2s, ... as torch does.
            self.shortcut_conv = keras.layers.Conv2D(
                out_channels, 1, strides=self.strides, padding="valid", use_bias=False,
                kernel_initializer=_he_fan_out(), name="shortcut_conv")
            self.shortcut_bn = FrozenBatchNorm(self.bn_eps, name="shortcut_bn")

    def conv_bn_pairs(self):
        """[(conv1, bn1), (conv2, bn2)(, (conv3, bn3))] in call order (shortcut excluded)."""
        pairs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
        return pairs + ([(self.conv3, self.bn3)] if self.conv3 is not None else [])

    def build(self, input_shape):
        in_channels = input_shape[-1]
        out_channels = _build_pairs(self.conv_bn_pairs(), in_channels)
        if self.use_shortcut_conv:
            _build_pairs([(self.shortcut_conv, self.shortcut_bn)], in_channels)
        elif in_channels != out_channels or self.strides != 1:
            raise ValueError(f"{self.name}: identity shortcut needs stride 1 and equal channels, "
                             f"got {in_channels} -> {out_channels}, stride {self.strides}")
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        pairs = self.conv_bn_pairs()
        for i, (conv, bn) in enumerate(pairs):
            x = bn(_apply_conv(conv, x))
            if i < len(pairs) - 1:  # no ReLU before the residual addition
                x = tf.nn.relu(x)
        shortcut = inputs
        if self.use_shortcut_conv:
            shortcut = self.shortcut_bn(self.shortcut_conv(inputs))
        return tf.nn.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        down = (lambda n: None if n is None else -(-n // self.strides))  # ceil(n / stride)
        return (b, down(h), down(w), self.filters * _EXPANSION[self.block_type])

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "strides": self.strides,
                       "block_type": self.block_type,
                       "use_shortcut_conv": self.use_shortcut_conv, "groups": self.groups,
                       "width_per_group": self.width_per_group,
                       "stride_in_1x1": self.stride_in_1x1, "bn_eps": self.bn_eps})
        return config


def _parse_depth(depth):
    """Accepts 50 or "resnet50"; returns the int depth."""
    if isinstance(depth, str) and depth.lower().startswith("resnet"):
        depth = depth[len("resnet"):]
    try:
        depth = int(depth)
    except (TypeError, ValueError):
        depth = None
    if depth not in _ARCHS:
        raise ValueError(f"depth must be one of {sorted(_ARCHS)} (or 'resnet<depth>')")
    return depth


def arch_arguments(name):
    """torchvision's model name -> the ``ResNet`` arguments ``depth``, ``groups`` and
    ``width_per_group``: "resnet50" -> (50, 1, 64), "resnext101_32x8d" -> (101, 32, 8)."""
    if name in _RESNEXT:
        depth, groups, width_per_group = _RESNEXT[name]
    elif name in NAMES:
        depth, groups, width_per_group = _parse_depth(name), 1, 64
    else:
        raise ValueError(f"backbone name must be one of {NAMES}, got {name!r}")
    return {"depth": depth, "groups": groups, "width_per_group": width_per_group}


def scaled_channels(channels, width_multiplier):
    """``channels * width_multiplier`` rounded, at least 1 (``ResNet``'s width_multiplier)."""
    return max(1, int(round(channels * width_multiplier)))


def stage_channels(level, depth, width_multiplier=1.0):
    """Output channels of stage res{level} (planes 64 * 2**(level - 2), scaled, x expansion)."""
    block_type, _ = _ARCHS[_parse_depth(depth)]
    return scaled_channels(64 * 2**(level - 2), width_multiplier) * _EXPANSION[block_type]


def make_stage(level, in_channels, depth, width_multiplier=1.0, groups=1, width_per_group=64,
               stride_in_1x1=False, bn_eps=1e-5):
    """Stage res{level} (2..5) of a ResNet / ResNeXt: its blocks and output channels.

    torchvision's ``_make_layer``: planes 64 * 2**(level - 2) (scaled by ``width_multiplier``),
    the first block strided (1 in res2, else 2) with a projection shortcut when the stride or
    the channels change. Blocks are named ``res{level}_{j}``. The backbone (``ResNet``) and
    the C4 RoI head (``models.res5_head.Res5Head``) both build their stages here.

    Returns:
        (list of ``ResNetBlock``, output channels of the stage).
    """
    block_type, counts = _ARCHS[_parse_depth(depth)]
    expansion = _EXPANSION[block_type]
    planes = scaled_channels(64 * 2**(level - 2), width_multiplier)
    stride, blocks = 1 if level == 2 else 2, []
    for j in range(counts[level - 2]):
        s = stride if j == 0 else 1
        shortcut = j == 0 and (s != 1 or in_channels != planes * expansion)
        blocks.append(ResNetBlock(
            planes, s, block_type, shortcut, groups=groups, width_per_group=width_per_group,
            stride_in_1x1=stride_in_1x1, bn_eps=bn_eps, name=f"res{level}_{j}"))
        in_channels = planes * expansion
    return blocks, in_channels


class FreezeAtLayer(keras.layers.Layer):
    """A layer whose ``freeze_at`` parts stay frozen when it is set trainable again.

    Subclasses define ``_apply_freeze_at`` and name the attribute holding those parts in
    ``_frozen_parts`` (before it exists, during Keras' own __init__, nothing is re-frozen).
    """

    _frozen_parts = "stages"

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)  # propagates to every sub-layer
        if value and hasattr(self, self._frozen_parts):
            self._apply_freeze_at()


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ResNet(FreezeAtLayer):
    """torchvision ResNet v1.5 / ResNeXt body (conv1 .. layer4) returning ``{"C2", .., "C5"}``.

    Args:
        depth: 18, 34 (basic blocks), 50 or 101 (bottleneck blocks); "resnet50" also accepted
            (``arch_arguments`` maps any torchvision name, ResNeXt included, to the arguments).
        width_multiplier: scales every channel count (stem 64, planes 64/128/256/512);
            1.0 = torchvision, 0.25 gives tiny test models. Counts are rounded, minimum 1.
            A bottleneck's inner width then follows from the scaled planes (``groups`` stays).
        freeze_at: detectron2 convention, 0..5 (see module docstring). 2 = torchvision's default
            ``trainable_layers=3``; torchvision's ``trainable_layers = 5 - freeze_at``.
        norm: "frozen_bn" (the only option for now).
        groups, width_per_group: ResNeXt cardinality and width (torchvision's ``groups`` and
            ``width_per_group``; 1 and 64 = ResNet). Bottleneck depths only.
        stride_in_1x1: the bottleneck stride on the first 1x1 conv (MSRA / detectron2).
        bn_eps: epsilon of every FrozenBatchNorm.
        max_level: 5 = res2..res5 (C2..C5); 4 = res2..res4 only (C2..C4): the ResNet-C4
            detector, whose res5 runs per RoI (``models.res5_head.Res5Head``).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, H, W, 3] float images, normalised as the checkpoint expects (torchvision:
            RGB in [0, 1], minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224,
            0.225)). H and W may be unknown (None).
    Returns:
        dict "C2".."C{max_level}" -> [B, ceil(H / s), ceil(W / s), out_channels[level]],
        s = 4, 8, 16, 32.

    Sub-layers: ``stem_conv``, ``stem_bn``, ``stages`` = [res2, .., res{max_level}], each a list of
    ``ResNetBlock``. Setting ``trainable = True`` re-applies ``freeze_at`` (frozen stages stay
    frozen); build a new backbone with another ``freeze_at`` to unfreeze them.
    """

    def __init__(self, depth=50, width_multiplier=1.0, freeze_at=2, norm="frozen_bn", groups=1,
                 width_per_group=64, stride_in_1x1=False, bn_eps=1e-5, max_level=5, **kwargs):
        super().__init__(**kwargs)
        self.depth = _parse_depth(depth)
        self.max_level = int(max_level)
        if self.max_level not in (4, 5):
            raise ValueError(f"max_level must be 4 (C2..C4) or 5 (C2..C5), got {max_level!r}")
        self.width_multiplier = float(width_multiplier)
        self.freeze_at = int(freeze_at)
        self.norm = norm
        self.groups, self.width_per_group = int(groups), int(width_per_group)
        self.stride_in_1x1, self.bn_eps = bool(stride_in_1x1), float(bn_eps)
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
        if not 0 <= self.freeze_at <= 5 or self.freeze_at != freeze_at:
            raise ValueError(f"freeze_at must be an int in [0, 5], got {freeze_at!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if not self.bn_eps >= 0:
            raise ValueError(f"bn_eps must be >= 0, got {bn_eps}")
        self.stem_conv = _conv(scaled_channels(64, self.width_multiplier), 7, 2, "stem_conv")
        self.stem_bn = FrozenBatchNorm(self.bn_eps, name="stem_bn")
        self.stages, self.out_channels = self._make_stages()
        self._apply_freeze_at()

    def _make_stages(self):
        """res2..res{max_level} as lists of ``ResNetBlock`` and each level's output channels."""
        in_channels, stages, out_channels = scaled_channels(64, self.width_multiplier), [], {}
        for level in range(2, self.max_level + 1):
            blocks, in_channels = make_stage(
                level, in_channels, self.depth, self.width_multiplier, groups=self.groups,
                width_per_group=self.width_per_group, stride_in_1x1=self.stride_in_1x1,
                bn_eps=self.bn_eps)
            stages.append(blocks)
            out_channels[f"C{level}"] = in_channels
        return stages, out_channels

    def _apply_freeze_at(self):
        """Marks the stem (freeze_at >= 1) and res2..res{freeze_at} non-trainable."""
        if self.freeze_at >= 1:
            self.stem_conv.trainable = False
            self.stem_bn.trainable = False
        for level, blocks in enumerate(self.stages, start=2):
            if self.freeze_at >= level:
                for block in blocks:
                    block.trainable = False

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"{self.name}: the channel axis must be known, got {input_shape}")
        channels = _build_pairs([(self.stem_conv, self.stem_bn)], in_channels)
        for blocks in self.stages:
            for block in blocks:
                block.build((None, None, None, channels))
                channels = block.compute_output_shape((None, None, None, channels))[-1]
        self.built = True

    def call(self, inputs, training=None):
        x = self.stem_bn(_apply_conv(self.stem_conv, inputs))  # pad 3, 7x7/2
        x = tf.nn.relu(x)
        x = _pad_hw(x, 1, value=float("-inf"))  # torch max_pool2d pads with -inf
        x = tf.nn.max_pool2d(x, ksize=3, strides=2, padding="VALID")
        features = {}
        for level, blocks in enumerate(self.stages, start=2):
            for block in blocks:
                x = block(x, training=training)
            features[f"C{level}"] = x
        return features

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        shapes = {}
        for level in range(2, self.max_level + 1):
            stride = 2**level
            down = (lambda n, s=stride: None if n is None else -(-n // s))  # ceil(n / s)
            shapes[f"C{level}"] = (b, down(h), down(w), self.out_channels[f"C{level}"])
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update({"depth": self.depth, "width_multiplier": self.width_multiplier,
                       "freeze_at": self.freeze_at, "norm": self.norm, "groups": self.groups,
                       "width_per_group": self.width_per_group,
                       "stride_in_1x1": self.stride_in_1x1, "bn_eps": self.bn_eps,
                       "max_level": self.max_level})
        return config
