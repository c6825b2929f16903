"""Anchors: cell anchors, anchors on one feature grid, anchors for all FPN levels (Faster R-CNN
section 3.1.1, FPN section 4.1); YOLACT's priors (YOLACT section 3.3) in ``yolact_anchors``,
whose docstring pins its own conventions (aspect ratio w / h, centre offset 0.5).

Method: the anchors of Ren et al. 2015 (Faster R-CNN, §3.1.1: k boxes of several scales and
aspect ratios centred at every feature location), one scale per pyramid level as in Lin et al.
2017 (FPN, §4.1: areas 32^2..512^2 on P2..P6, ratios 1:2, 1:1, 2:1). ``feature_keys`` and
``level_sizes`` fix the order in which the levels are concatenated into N.

Conventions pinned here (tests/ops/test_anchors.py checks each one against torchvision's
``AnchorGenerator``):
    * Aspect ratio = height / width. A cell anchor of size s and ratio r has
      w = s / sqrt(r), h = s * sqrt(r), corners (-w/2, -h/2, w/2, h/2) rounded to integers
      (round half to even), computed in float32.
    * ``rounded=False`` is detectron2's ``DefaultAnchorGenerator``: w = sqrt(s * s / r),
      h = r * w and corners (-w/2, -h/2, w/2, h/2) in float64 (Python floats), not rounded,
      then float32.
    * Cell anchors are ordered ratio-major, size-minor: [(r0, s0), (r0, s1), ..., (r1, s0)...]
      in both modes. detectron2 orders them size-major ([(s0, r0), (s0, r1), ...]): the same
      set, a different order when a level has several sizes (C4: 32..512 on one map), so RPN
      predictor channels converted from detectron2 must be permuted to this order.
    * Anchor centre offset 0: the anchor at feature cell (i, j) is centred at
      (j * stride_w, i * stride_h). Anchors are ordered row-major over locations (y, then x),
      anchors-per-location minor: index = (i * W + j) * A + a.
    * The stride of a level is ``image_size // feature_size`` (integer floor division, per
      axis), exactly as torchvision: a P6 of 13 rows on an 800-row input has stride 61.
      ``multilevel_anchors(strides=...)`` gives fixed strides instead (detectron2: the
      feature's nominal stride 2**l, 64 for that P6).
    * Levels are concatenated in ``feature_keys`` order: the keys of the feature dict sorted
      naturally ("P2" < "P3" < ... < "P10"); ``level_sizes`` gives N_l = H_l * W_l * A per
      level in that order (the RPN head's outputs and ``multilevel_anchors`` for P2..P6 agree;
      tests/layers/test_rpn.py checks both helpers).
    * The anchors are the same for every image of a batch (they depend only on the padded
      input size), so no batch dim is produced.

All functions accept Python ints or scalar int tensors for image and feature sizes, so they
work inside ``tf.function`` with dynamic input sizes. With Python ints the output shapes are
static.

Shape shorthand:
    B  batch size
    N  anchors per image (all levels concatenated)
    A  anchors per location (len(sizes) * len(aspect_ratios) of a level)
    H, W  feature map height and width of one level
    R, M, K, S  (RoIs, GT, classes, mask size) are not used here
"""
import math

import tensorflow as tf

DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(sizes, aspect_ratios, rounded=True):
    """Zero-centred anchors of one level, torchvision's ``generate_anchors``.

    Args:
        sizes: sequence of Python numbers (anchor side for ratio 1), e.g. (32,).
        aspect_ratios: sequence of Python numbers, height / width, e.g. (0.5, 1.0, 2.0).
        rounded: True: torchvision (float32, corners rounded); False: detectron2's
            ``generate_cell_anchors`` (float64, unrounded), cast to float32.

    Returns:
        (A, 4) float32 xyxy, A = len(aspect_ratios) * len(sizes), ratio-major/size-minor,
        corners rounded half-to-even (w = 45.25 -> x2 = round(22.625) = 23) when ``rounded``.
    """
    if not rounded:
        corners = []
        for ratio in aspect_ratios:  # ratio-major, as torchvision (detectron2: size-major)
            for size in sizes:
                w = math.sqrt(float(size) ** 2.0 / float(ratio))
                h = float(ratio) * w
                corners.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return tf.constant(corners, tf.float32)  # (A, 4), float64 values rounded to float32
    scales = tf.constant(sizes, tf.float32)
    ratios = tf.constant(aspect_ratios, tf.float32)
    h_ratios = tf.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = tf.reshape(w_ratios[:, None] * scales[None, :], [-1])  # (ratios, sizes) -> (A,)
    hs = tf.reshape(h_ratios[:, None] * scales[None, :], [-1])  # (ratios, sizes) -> (A,)
    base = tf.stack([-ws, -hs, ws, hs], axis=1) / 2.0  # (A, 4)
    return tf.round(base)


def grid_anchors(cell, feature_height, feature_width, stride_h, stride_w):
    """Tile the cell anchors over one feature grid.

    Args:
        cell: (A, 4) float32 zero-centred anchors from ``cell_anchors``.
        feature_height, feature_width: Python ints or scalar int tensors (H, W).
        stride_h, stride_w: Python ints or scalar int tensors, pixels between cells.

    Returns:
        (H * W * A, 4) float32 xyxy anchors; anchor (i, j, a) at row (i * W + j) * A + a is
        ``cell[a] + (j * stride_w, i * stride_h, j * stride_w, i * stride_h)`` (centre
        offset 0), torchvision's ``AnchorGenerator.grid_anchors`` order.
    """
    cell = tf.convert_to_tensor(cell, tf.float32)
    shifts_x = tf.range(tf.cast(feature_width, tf.int32)) * tf.cast(stride_w, tf.int32)  # (W,)
    shifts_y = tf.range(tf.cast(feature_height, tf.int32)) * tf.cast(stride_h, tf.int32)  # (H,)
    shift_y, shift_x = tf.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each
    shift_x = tf.reshape(shift_x, [-1])  # (H, W) -> (H*W,), row-major
    shift_y = tf.reshape(shift_y, [-1])  # (H, W) -> (H*W,)
    shifts = tf.cast(tf.stack([shift_x, shift_y, shift_x, shift_y], axis=1), tf.float32)
    anchors = shifts[:, None, :] + cell[None, :, :]  # (H*W, 1, 4) + (1, A, 4) -> (H*W, A, 4)
    return tf.reshape(anchors, [-1, 4])  # (H*W, A, 4) -> (H*W*A, 4), anchors minor


def _per_level(values, num_levels, name):
    """Normalise per-level specs: a flat sequence of numbers is used for every level."""
    values = tuple(values)
    if values and not isinstance(values[0], (list, tuple)):
        return (values,) * num_levels
    if len(values) != num_levels:
        raise ValueError(f"{name} has {len(values)} levels but there are {num_levels} feature maps")
    return values


def multilevel_anchors(
    image_height,
    image_width,
    feature_sizes,
    sizes=DEFAULT_SIZES,
    aspect_ratios=DEFAULT_ASPECT_RATIOS,
    rounded=True,
    strides=None,
):
    """Anchors of every pyramid level for one padded input size.

    Args:
        image_height, image_width: padded input size, Python ints or scalar int tensors.
        feature_sizes: sequence of (H_l, W_l) per level, Python ints or scalar int tensors
            (e.g. from ``fpn_feature_sizes``).
        sizes: per-level sequences of anchor sizes, ((32,), (64,), ...) for P2..P6.
        aspect_ratios: per-level sequences of ratios (h / w), or one flat sequence used for
            every level (torchvision's AnchorGenerator does the same).
        rounded: ``cell_anchors``' rounding (False: detectron2's unrounded cell anchors).
        strides: None (torchvision: image size // feature size per axis) or one Python int
            per level used on both axes (detectron2: the nominal stride, e.g. 4..64).

    Returns:
        list of (H_l * W_l * A_l, 4) float32 xyxy anchors, one per level. Concatenated over
        levels they equal torchvision's ``AnchorGenerator`` output for one image. Level l
        uses stride (image_height // H_l, image_width // W_l) (floor division).
    """
    feature_sizes = tuple(feature_sizes)
    sizes = _per_level(sizes, len(feature_sizes), "sizes")
    aspect_ratios = _per_level(aspect_ratios, len(feature_sizes), "aspect_ratios")
    anchors = []
    if strides is not None and len(strides) != len(feature_sizes):
        raise ValueError(f"{len(strides)} strides for {len(feature_sizes)} feature maps")
    for index, ((height, width), level_anchor_sizes, level_ratios) in enumerate(
            zip(feature_sizes, sizes, aspect_ratios)):
        if strides is None:
            stride_h, stride_w = image_height // height, image_width // width
        else:
            stride_h = stride_w = int(strides[index])
        cell = cell_anchors(level_anchor_sizes, level_ratios, rounded)
        anchors.append(grid_anchors(cell, height, width, stride_h, stride_w))
    return anchors


def _conv_stride2(size):
    """Output size of a stride-2 layer that ResNet-FPN uses (ceil(size / 2))."""
    # conv 7x7/2 pad 3, maxpool 3x3/2 pad 1, conv 3x3/2 pad 1, conv 1x1/2 pad 0 and
    # max_pool 1x1/2 pad 0 all give floor((size - 1) / 2) + 1 = ceil(size / 2).
    return (size - 1) // 2 + 1


def fpn_feature_sizes(image_height, image_width, min_level=2, max_level=6):
    """Feature map sizes P{min_level}..P{max_level} of a ResNet-FPN for a padded input.

    Args:
        image_height, image_width: Python ints or scalar int tensors.
        min_level, max_level: Python ints, 1 <= min_level <= max_level. P1 is conv1's
            output, P2 is after the stem max-pool (layer1), P3..P5 are after layer2..4
            (stride in the 3x3 conv), P6 = max_pool(P5, kernel 1, stride 2).

    Returns:
        list of (H_l, W_l) tuples, one per level; H_l = ceil(image_height / 2**l)
        (each stride-2 layer rounds up). Python ints in, Python ints out.
    """
    if not 1 <= min_level <= max_level:
        raise ValueError(f"need 1 <= min_level <= max_level, got {min_level}, {max_level}")
    height, width = image_height, image_width
    feature_sizes = []
    for level in range(1, max_level + 1):
        height, width = _conv_stride2(height), _conv_stride2(width)
        if level >= min_level:
            feature_sizes.append((height, width))
    return feature_sizes


def yolact_anchors(image_size, feature_sizes, scales=(24, 48, 96, 192, 384),
                   aspect_ratios=(1, 0.5, 2), square=True, reference_size=550):
    """YOLACT's priors (Bolya et al. 2019, section 3.3 / ``Yolact.make_priors``) as xyxy pixels.

    Conventions (the reference's ``make_priors`` with ``use_pixel_scales``, ``preapply_sqrt``
    off; tests/ops/test_anchors.py compares bit for bit with a NumPy transcription):
        * Aspect ratio = width / height. An anchor of scale s and ratio r has relative width
          w = s * sqrt(r) / reference_size and height s / sqrt(r) / reference_size; with
          ``square`` (the released v1 weights) the height is set to the width, so every
          anchor is a square of side s * sqrt(r) (in reference_size pixels).
        * Centres at ((j + 0.5) / W_l, (i + 0.5) / H_l) of the image (no stride rounding).
        * Relative coordinates times the image size: the scales are therefore scaled by
          image_size / reference_size, per axis (the reference always feeds a square image;
          its 700 px config instead truncates int(s * 700 / 550) and keeps the ratio 1).
        * Order: level, then row-major (y, x), then scale, then ratio (ratio minor).
        * Computed in float64 (the reference builds them from Python floats), cast to float32
          at the end.

    Args:
        image_size: Python int (square) or (height, width) pair of ints / scalar tensors.
        feature_sizes: sequence of (H_l, W_l) per level (69, 35, 18, 9, 5 at 550).
        scales: one number per level, or one sequence of numbers per level.
        aspect_ratios: flat sequence of ratios (w / h) used at every level.
        square: Python bool, the released weights' square anchors.
        reference_size: Python number, the input size the scales are given for.

    Returns:
        (N, 4) float32 xyxy anchors, N = sum_l H_l * W_l * S_l * R (19,248 at 550).
    """
    if isinstance(image_size, (tuple, list)):
        height, width = image_size
    else:
        height = width = image_size
    height = tf.cast(height, tf.float64)
    width = tf.cast(width, tf.float64)
    feature_sizes = tuple(feature_sizes)
    if len(scales) != len(feature_sizes):
        raise ValueError(f"{len(scales)} scales for {len(feature_sizes)} feature maps")
    roots = [math.sqrt(r) for r in aspect_ratios]
    levels = []
    for (rows, cols), level_scales in zip(feature_sizes, scales):
        if not isinstance(level_scales, (tuple, list)):
            level_scales = (level_scales,)
        sides_w = [s * r / reference_size for s in level_scales for r in roots]  # scale-major
        sides_h = sides_w if square else [s / r / reference_size
                                          for s in level_scales for r in roots]
        half_w = tf.constant(sides_w, tf.float64) / 2.0  # (A,)
        half_h = tf.constant(sides_h, tf.float64) / 2.0  # (A,)
        rows_f = tf.cast(rows, tf.float64)
        cols_f = tf.cast(cols, tf.float64)
        cy = (tf.cast(tf.range(rows), tf.float64) + 0.5) / rows_f  # (H,)
        cx = (tf.cast(tf.range(cols), tf.float64) + 0.5) / cols_f  # (W,)
        cy, cx = tf.meshgrid(cy, cx, indexing="ij")  # (H, W) each
        cy = tf.reshape(cy, [-1, 1])  # (H, W) -> (H*W, 1), row-major
        cx = tf.reshape(cx, [-1, 1])  # (H, W) -> (H*W, 1)
        boxes = tf.stack([(cx - half_w) * width, (cy - half_h) * height,
                          (cx + half_w) * width, (cy + half_h) * height], axis=-1)  # (H*W, A, 4)
        levels.append(tf.reshape(boxes, [-1, 4]))  # (H*W, A, 4) -> (H*W*A, 4), anchors minor
    return tf.cast(tf.concat(levels, axis=0), tf.float32)


def _natural_key(key):
    """"P10" sorts after "P9": (prefix, number) when the key ends in digits."""
    digits = len(key) - len(key.rstrip("0123456789"))
    if digits:
        return (key[:-digits], int(key[-digits:]))
    return (key, -1)


def feature_keys(features):
    """The level keys of a feature dict in the order the RPN concatenates them (natural sort)."""
    return sorted(features, key=_natural_key)


def level_sizes(features, num_anchors):
    """Anchors per level, N_l = H_l * W_l * A, in ``feature_keys`` order.

    Args:
        features: dict level -> (B, H_l, W_l, C) tensor (or a shape tuple).
        num_anchors: Python int A.

    Returns:
        list of L counts: Python ints where H_l and W_l are static, else scalar int32 tensors.
    """
    counts = []
    for key in feature_keys(features):
        value = features[key]
        shape = tuple(value) if isinstance(value, (tuple, list)) else tuple(value.shape)
        if shape[1] is not None and shape[2] is not None:  # static H_l, W_l
            counts.append(int(shape[1]) * int(shape[2]) * int(num_anchors))
        else:
            dynamic = tf.shape(value)  # (4,) int32
            counts.append(dynamic[1] * dynamic[2] * int(num_anchors))
    return counts
