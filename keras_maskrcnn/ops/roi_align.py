"""RoIAlign (single map and FPN multi-level) and FPN level assignment.

Method: RoIAlign of He et al. 2017 (Mask R-CNN, §3 "RoIAlign": bilinear interpolation at
regularly sampled points of each bin, averaged, with no quantisation of the RoI or the bins);
each RoI is pooled from one pyramid level, assigned as in Lin et al. 2017 (FPN, §4.2, eq. 1:
k = floor(k0 + log2(sqrt(wh) / 224)), k0 = 4).

Conventions pinned here (tests/ops/test_roi_align.py checks each against torchvision):
    * Features are NHWC; boxes are ``xyxy`` float32 pixels of the (padded) input image and are
      mapped to feature coordinates by ``spatial_scale`` (1 / stride).
    * ``roi_align`` equals ``torchvision.ops.roi_align`` with ``sampling_ratio > 0``:
      roi_start = x1 * scale - offset (offset 0.5 if ``aligned``), roi_w = roi_end - roi_start,
      clamped to >= 1 only when not aligned; bin = roi_w / Q; the G x G sample points of a bin
      sit at roi_start + q * bin + (i + 0.5) * bin / G and are averaged. A sample with
      y < -1 or y > H (same for x) is 0; samples in [-1, 0] read row 0 and in [H - 1, H] read
      row H - 1 (torchvision's clamp), bilinear interpolation in between.
    * ``aligned=True`` is detectron2's / the paper's half-pixel convention; torchvision's Mask
      R-CNN uses ``aligned=False``.
    * ``sampling_ratio=0`` (torchvision's / detectron2's adaptive sampling, ceil(roi / output)
      points per bin and RoI) is accepted by ``multilevel_roi_align`` and ``roi_align_indexed``,
      which then pool with ``ops.roi_align_adaptive``; ``roi_align`` (one map) takes only
      G > 0 (call ``roi_align_adaptive`` there). Negative values raise ValueError.
    * Level mapping (``LEVEL_MAPPINGS``): "torchvision" (``LevelMapper``: floor(k0 +
      log2(sqrt(area) / 224) + 1e-6)) or "detectron2" (``assign_boxes_to_levels``: floor(k0 +
      log2(sqrt(area) / 224 + 1e-8))), both clamped to [min_level, max_level].

Implementation: for each of the G x G sub-grids, one ``tf.image.crop_and_resize`` samples one
point per bin (P by Q points per RoI); the G * G crops are averaged. crop_and_resize
extrapolates (with 0) outside [0, size - 1], so the map is first padded by one edge-replicated
pixel per side and coordinates shifted by +1: samples in [-1, H] then interpolate exactly like
torchvision and samples beyond it give 0. The crop boxes are chosen so that crop_and_resize's
sample points ``y1 * (H + 1) + k * (y2 - y1) * (H + 1) / (n - 1)`` (or the centre when
n == 1) are torchvision's points. Gradients flow to the features (not to
the boxes). Everything runs in float32; the result is cast back to the features' dtype.

Shape shorthand:
    B  batch size
    R  RoIs per image
    K  flattened RoIs (B * R, or the RoIs of one pyramid level)
    H, W  feature map height and width;  C  channels
    P, Q  output height and width (``output_size``)
    G  sampling_ratio (sample points per bin and axis)
"""
import tensorflow as tf

from keras_maskrcnn.ops.roi_align_adaptive import roi_align_adaptive_indexed
from keras_maskrcnn.ops.roi_bins import output_pair, roi_extent


LEVEL_MAPPINGS = ("torchvision", "detectron2")  # multilevel_roi_align's level_mapping choices


def _check_sampling_ratio(sampling_ratio, allow_adaptive=False):
    """Validate G: a positive Python int, or 0 (adaptive) where ``allow_adaptive``."""
    lowest = 0 if allow_adaptive else 1
    if int(sampling_ratio) != sampling_ratio or sampling_ratio < lowest:
        where = ("0 = adaptive (ceil(roi_size / output_size) points per bin) or a positive int"
                 if allow_adaptive else "a positive int here: for adaptive sampling "
                 "(ceil(roi_size / output_size) points per bin) use "
                 "ops.roi_align_adaptive.roi_align_adaptive")
        raise ValueError(f"sampling_ratio must be {where}, got {sampling_ratio!r}")
    return int(sampling_ratio)


def _sample_spans(start, end, num_bins, grid, aligned):
    """First and last sample coordinate of each of the G sub-grids along one axis.

    Args:
        start, end: (K,) box edges already multiplied by the spatial scale.
        num_bins: P (or Q), Python int.  grid: G, Python int.  aligned: half-pixel offset.

    Returns:
        G pairs (first, last) of (K,) tensors: sub-grid g holds the P samples
        roi_start + p * bin + (g + 0.5) * bin / G, p = 0 .. P - 1, evenly spaced from first to
        last (first == last when P == 1).
    """
    roi_start, roi_size = roi_extent(start, end, aligned)
    bin_size = roi_size / num_bins
    step = bin_size / grid
    spans = []
    for g in range(grid):
        first = roi_start + (g + 0.5) * step
        spans.append((first, first + (num_bins - 1) * bin_size))
    return spans


def _crop_and_pool(padded, boxes, box_indices, spatial_scale, out_hw, grid, aligned):
    """RoIAlign of flattened RoIs on one edge-padded map.

    Args:
        padded: (B, H + 2, W + 2, C) uint8 or float map, padded by one replicated pixel per side.
        boxes: (K, 4) xyxy float32 boxes in input pixels.
        box_indices: (K,) int32 batch index of each box.
        spatial_scale: Python float, input pixels -> feature pixels.
        out_hw: (P, Q) Python ints.  grid: G.  aligned: half-pixel offset.

    Returns:
        (K, P, Q, C) float32 pooled features: the mean over the G x G sub-grids (gy, gx), each
        one (P, Q) crop_and_resize whose samples are the (gy, gx)-th point of every bin.
    """
    out_h, out_w = out_hw
    shape = tf.shape(padded)
    norm_h = tf.cast(shape[1] - 1, tf.float32)  # H + 1: crop_and_resize's y normaliser
    norm_w = tf.cast(shape[2] - 1, tf.float32)  # W + 1
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32)) * spatial_scale
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)  # 4 x (K,)
    crop_boxes = [
        tf.stack([(y_first + 1.0) / norm_h, (x_first + 1.0) / norm_w,
                  (y_last + 1.0) / norm_h, (x_last + 1.0) / norm_w], axis=-1)  # +1: the pad
        for y_first, y_last in _sample_spans(y1, y2, out_h, grid, aligned)
        for x_first, x_last in _sample_spans(x1, x2, out_w, grid, aligned)]  # G * G x (K, 4)
    return _mean_of_crops(padded, crop_boxes, box_indices, out_hw)


def _chained_sum(terms):
    """sum(term(i)) where term i + 1 starts after the running sum of terms 0..i exists.

    TensorFlow's executor would otherwise run every (independent) term first and hold them
    all; chained, at most the running sum, one term and the next sum are alive.
    """
    total = None
    for term in terms:
        with tf.control_dependencies([] if total is None else [total]):
            value = term()
        total = value if total is None else total + value
    return total


def _mean_of_crops(padded, crop_boxes, box_indices, out_hw):
    """Mean of ``crop_and_resize(padded, b, box_indices, out_hw)`` over b in ``crop_boxes``.

    Instead of one (K, P * G, Q * G, C) crop and a G x G average pool, G * G crops of (K, P, Q,
    C) are summed one after the other: the same samples, a quarter of the largest temporary
    for G = 2 (the box head's P2 crop was a large part of a training step's peak). The
    gradient sums the G * G ``CropAndResizeGradImage`` maps the same way (it held the
    (K, P * G, Q * G, C) AvgPoolGrad before).
    """
    count = len(crop_boxes)

    @tf.custom_gradient
    def mean(image):
        crops = [lambda b=b: tf.image.crop_and_resize(image, b, box_indices, out_hw,
                                                      extrapolation_value=0.0)
                 for b in crop_boxes]  # each (K, P, Q, C) float32
        out = _chained_sum(crops)
        if count > 1:
            out = out / count

        def grad(upstream):
            upstream = upstream / count
            image_size = tf.shape(image)
            maps = [lambda b=b: tf.raw_ops.CropAndResizeGradImage(
                grads=upstream, boxes=b, box_ind=box_indices, image_size=image_size,
                T=image.dtype, method="bilinear") for b in crop_boxes]  # each like image
            return _chained_sum(maps)

        return out, grad

    return mean(padded)


# Dtypes tf.image.crop_and_resize samples directly (it returns float32); others are cast.
_SAMPLABLE_DTYPES = ("uint8", "float16", "float32", "float64")


def _pad_map(images):
    """(N, H, W, C) -> (N, H + 2, W + 2, C), one edge-replicated pixel per side.

    Keeps uint8/float16/float32/float64 as they are (crop_and_resize reads them directly and
    returns float32), casts anything else (bool, bfloat16) to float32. Two concats: about 2x
    faster than ``tf.pad(mode="SYMMETRIC")`` on large uint8 masks.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype.name not in _SAMPLABLE_DTYPES:
        images = tf.cast(images, tf.float32)
    if images.dtype.is_floating:
        return _edge_pad_folding_gradient(images)
    return _edge_pad(images)


def _edge_pad(images):
    """(N, H, W, C) -> (N, H + 2, W + 2, C) by replicating the edge rows and columns."""
    images = tf.concat([images[:, :1], images, images[:, -1:]], axis=1)  # rows
    return tf.concat([images[:, :, :1], images, images[:, :, -1:]], axis=2)  # columns


@tf.custom_gradient
def _edge_pad_folding_gradient(images):
    """``_edge_pad`` whose gradient folds the border back onto the edge pixels directly.

    TensorFlow's gradient of the two concats slices the incoming gradient and scatters each
    edge slice into a zero map of full size (StridedSliceGrad), then sums: six
    (N, H + 2, W + 2, C) temporaries per call (bench/README.md), in the
    backward pass of every RoIAlign. Here: a copy of the interior and one scatter-add of the
    2 (H + W) + 4 border pixels into it (TensorFlow's kernel allocated its output anew in the
    traced step: two full-size temporaries).
    """
    def grad(upstream):
        return _fold_border(upstream)

    return _edge_pad(images), grad


def _fold_border(upstream):
    """Gradient of ``_edge_pad``: (N, H + 2, W + 2, C) -> (N, H, W, C).

    Padded pixel (i, j) copies input pixel (clamp(i - 1, 0, H - 1), clamp(j - 1, 0, W - 1)),
    so each input pixel receives the upstream values of all padded pixels that copy it: its
    own interior pixel, plus the border pixels for edge (and corner) pixels. Also right for
    H = 1 or W = 1, where both borders of an axis fold onto the same row or column.
    """
    shape = tf.shape(upstream)
    n, h, w = shape[0], shape[1] - 2, shape[2] - 2
    interior = upstream[:, 1:-1, 1:-1]  # (N, H, W, C)
    images = tf.range(n)
    cols = tf.clip_by_value(tf.range(w + 2) - 1, 0, w - 1)  # (W + 2,) input column copied
    rows = tf.range(h)  # (H,)

    def points(b, y, x):  # broadcastable (image, row, column) parts -> (K, 3) index triples
        size = tf.shape(b + y + x)
        parts = [tf.broadcast_to(part, size) for part in (b, y, x)]
        return tf.reshape(tf.stack(parts, axis=-1), [-1, 3])

    indices = tf.concat([
        points(images[:, None], 0, cols[None, :]),  # border row 0 -> input row 0
        points(images[:, None], h - 1, cols[None, :]),  # border row H + 1 -> input row H - 1
        points(images[:, None], rows[None, :], 0),  # border column 0 -> input column 0
        points(images[:, None], rows[None, :], w - 1)], 0)  # border column W + 1 -> W - 1
    channels = shape[3]
    updates = tf.concat([
        tf.reshape(upstream[:, 0], [-1, channels]),  # (N * (W + 2), C)
        tf.reshape(upstream[:, -1], [-1, channels]),
        tf.reshape(upstream[:, 1:-1, 0], [-1, channels]),  # (N * H, C)
        tf.reshape(upstream[:, 1:-1, -1], [-1, channels])], 0)
    return tf.tensor_scatter_nd_add(interior, indices, updates)


def _flatten_rois(boxes):
    """(B, R, 4) boxes -> (B * R, 4) boxes and (B * R,) int32 batch index of each."""
    shape = tf.shape(boxes)
    flat = tf.reshape(boxes, [-1, 4])  # (B * R, 4), image-major
    indices = tf.repeat(tf.range(shape[0], dtype=tf.int32), shape[1])  # (B * R,) batch index
    return flat, indices


def _unflatten(pooled, boxes, out_hw, channels, dtype):
    """(B * R, P, Q, C) -> (B, R, P, Q, C) in ``dtype``, keeping the known static dims."""
    b, r = tf.shape(boxes)[0], tf.shape(boxes)[1]
    out = tf.reshape(pooled, tf.stack([b, r, out_hw[0], out_hw[1], tf.shape(pooled)[-1]]))
    out.set_shape(boxes.shape[:2].concatenate([out_hw[0], out_hw[1], channels]))  # static dims
    return tf.cast(out, dtype)


def roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    """RoIAlign of every box on one feature map (average of G x G bilinear samples per bin).

    Args:
        features: (B, H, W, C) float feature map (any float dtype; computed in float32).
        boxes: (B, R, 4) xyxy boxes in input pixels; R may be 0 or unknown. No gradient flows
            into them.
        output_size: int or (P, Q).
        spatial_scale: input pixels -> feature pixels (1 / stride).
        sampling_ratio: G > 0 sample points per bin and axis. <= 0 raises ValueError.
        aligned: True shifts boxes by -0.5 feature pixel (detectron2); False is torchvision's
            legacy mode (also clamps RoI sides to >= 1 feature pixel).

    Returns:
        (B, R, P, Q, C) pooled features in the features' dtype.

    Convention: equals ``torchvision.ops.roi_align(nchw, [batch_idx, x1, y1, x2, y2], ...)``
    transposed to NHWC (see the module docstring for the exact sampling rules).
    """
    out_hw = output_pair(output_size)
    grid = _check_sampling_ratio(sampling_ratio)
    features = tf.convert_to_tensor(features)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    flat, indices = _flatten_rois(boxes)
    pooled = _crop_and_pool(_pad_map(features), flat, indices, float(spatial_scale), out_hw,
                            grid, aligned)  # (B * R, P, Q, C)
    return _unflatten(pooled, boxes, out_hw, features.shape[-1], features.dtype)


def _pool_indexed(images, boxes, box_indices, spatial_scale, out_hw, grid, aligned):
    """(K, P, Q, C) float32 RoIAlign of flattened boxes on (N, H, W, C) maps: G x G fixed
    samples per bin, or adaptive sampling when G == 0 (``ops.roi_align_adaptive``)."""
    if grid == 0:
        return roi_align_adaptive_indexed(images, boxes, box_indices, out_hw, spatial_scale,
                                          aligned)
    return _crop_and_pool(_pad_map(tf.convert_to_tensor(images)), boxes, box_indices,
                          spatial_scale, out_hw, grid, aligned)


def roi_align_indexed(images, boxes, box_indices, output_size, spatial_scale=1.0,
                      sampling_ratio=2, aligned=True):
    """RoIAlign of flattened RoIs, each on the image ``box_indices`` names.

    For pooling many single-channel maps (e.g. GT masks, one per RoI) without gathering them.

    Args:
        images: (N, H, W, C) maps; uint8 and float maps are sampled without a copy to float32
            (G > 0; adaptive sampling reads them as float32).
        boxes: (K, 4) xyxy boxes in input pixels.
        box_indices: (K,) int32 index into N of the map each box is pooled from.
        output_size, spatial_scale, aligned: as in ``roi_align``.
        sampling_ratio: G > 0 sample points per bin and axis, or 0: adaptive sampling
            (``ops.roi_align_adaptive``, torchvision's ``sampling_ratio=0``).

    Returns:
        (K, P, Q, C) float32 pooled maps (``roi_align``'s sampling rules).
    """
    grid = _check_sampling_ratio(sampling_ratio, allow_adaptive=True)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    return _pool_indexed(images, boxes, tf.cast(box_indices, tf.int32), float(spatial_scale),
                         output_pair(output_size), grid, aligned)


def assign_fpn_levels(boxes, min_level=2, max_level=5, canonical_size=224, canonical_level=4,
                      eps=1e-6):
    """FPN level of each RoI: floor(canonical_level + log2(sqrt(area) / canonical_size) + eps).

    Args:
        boxes: (..., 4) xyxy boxes in input pixels.
        min_level, max_level: levels are clamped to [min_level, max_level].
        canonical_size, canonical_level: a canonical_size x canonical_size box maps to
            canonical_level (FPN paper eq. 1: 224 and 4).
        eps: added before the floor (torchvision's 1e-6, keeps exact powers of two stable).

    Returns:
        (...) int32 absolute levels (e.g. 2..5, not 0-based).

    Convention: torchvision's ``LevelMapper`` in float32 with area = (x2 - x1) * (y2 - y1)
    (no +1). Zero-area boxes go to ``min_level``; a box inverted on exactly one side (negative
    area, where torchvision casts NaN to int) also goes to ``min_level``.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)  # 4 x (...)
    area = (x2 - x1) * (y2 - y1)
    scale = tf.sqrt(tf.maximum(area, 0.0))
    log2 = tf.math.log(scale / float(canonical_size)) / tf.math.log(2.0)  # -inf for area 0
    levels = tf.floor(float(canonical_level) + log2 + eps)
    levels = tf.clip_by_value(levels, float(min_level), float(max_level))
    return tf.cast(levels, tf.int32)


def assign_fpn_levels_detectron2(boxes, min_level=2, max_level=5, canonical_size=224,
                                 canonical_level=4):
    """FPN level of each RoI by detectron2's ``assign_boxes_to_levels``.

    Args:
        boxes: (..., 4) xyxy boxes in input pixels.
        min_level, max_level: levels are clamped to [min_level, max_level].
        canonical_size, canonical_level: a canonical_size x canonical_size box maps to
            canonical_level (FPN paper eq. 1: 224 and 4).

    Returns:
        (...) int32 absolute levels: floor(canonical_level + log2(sqrt(area) / canonical_size
        + 1e-8)) in float32, area = (x2 - x1) * (y2 - y1) (no +1). The 1e-8 sits inside the
        log (torchvision's ``LevelMapper`` adds 1e-6 outside it). Zero-area boxes, and inverted
        ones (negative area, NaN in detectron2), go to ``min_level``.
    """
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)  # 4 x (...)
    size = tf.sqrt(tf.maximum((x2 - x1) * (y2 - y1), 0.0))
    log2 = tf.math.log(size / float(canonical_size) + 1e-8) / tf.math.log(2.0)
    levels = tf.floor(float(canonical_level) + log2)
    return tf.cast(tf.clip_by_value(levels, float(min_level), float(max_level)), tf.int32)


def fpn_levels(boxes, level_mapping="torchvision", **settings):
    """``assign_fpn_levels`` ("torchvision") or ``assign_fpn_levels_detectron2``
    ("detectron2") of (..., 4) boxes; ``settings``: min_level, max_level, canonical_size,
    canonical_level."""
    if level_mapping == "torchvision":
        return assign_fpn_levels(boxes, **settings)
    if level_mapping == "detectron2":
        return assign_fpn_levels_detectron2(boxes, **settings)
    raise ValueError(f"level_mapping must be one of {LEVEL_MAPPINGS}, got {level_mapping!r}")


def pyramid_level_names(features, min_level, max_level):
    """["P{min_level}", ..., "P{max_level}"]; ValueError naming the levels ``features`` lacks."""
    names = [f"P{level}" for level in range(min_level, max_level + 1)]
    missing = [name for name in names if name not in features]
    if missing:
        raise ValueError(f"features lacks levels {missing}; got keys {sorted(features)}")
    return names


def multilevel_roi_align(features, boxes, output_size, sampling_ratio=2, aligned=True,
                         min_level=2, max_level=5, canonical_size=224, canonical_level=4,
                         level_mapping="torchvision"):
    """FPN RoIAlign: each RoI is pooled from its ``fpn_levels`` level only.

    Args:
        features: dict {"P{l}": (B, H_l, W_l, C)} holding at least levels min_level..max_level
            (other keys, e.g. "P6", are ignored). Level l has stride 2**l, i.e. spatial scale
            1 / 2**l. torchvision infers the scale of each map as 2**round(log2(H_l / H_img));
            for inputs padded to a multiple of 2**max_level that is exactly 1 / 2**l.
        boxes: (B, R, 4) xyxy boxes in input pixels; R may be 0 or unknown (tf.function).
        output_size: int or (P, Q).
        sampling_ratio: G > 0 sample points per bin and axis, or 0: adaptive sampling
            (``ops.roi_align_adaptive``; detectron2's ROIAlignV2 with ``aligned``).
        aligned: half-pixel offset (False = torchvision's MultiScaleRoIAlign).
        min_level, max_level: pyramid levels used (torchvision: P2..P5 -> 2, 5).
        canonical_size, canonical_level: level mapping, see ``assign_fpn_levels``.
        level_mapping: "torchvision" or "detectron2" (``LEVEL_MAPPINGS``, ``fpn_levels``).

    Returns:
        (B, R, P, Q, C) pooled features in the dtype of ``features["P{min_level}"]``.

    Convention: equals ``torchvision.ops.MultiScaleRoIAlign`` (with ``aligned=False``), and
    with (0, True, "detectron2") detectron2's ``ROIPooler`` (ROIAlignV2). Each level gathers
    its RoIs (``tf.dynamic_partition``), pools them with batch indices into that level, and the
    results are stitched back in RoI order.
    """
    out_hw = output_pair(output_size)
    grid = _check_sampling_ratio(sampling_ratio, allow_adaptive=True)
    names = pyramid_level_names(features, min_level, max_level)
    first = tf.convert_to_tensor(features[names[0]])
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    flat, indices = _flatten_rois(boxes)
    levels = fpn_levels(flat, level_mapping, min_level=min_level, max_level=max_level,
                        canonical_size=canonical_size, canonical_level=canonical_level)
    positions = tf.range(tf.shape(flat)[0])  # (B * R,) RoI position in the flat order
    part_ids = tf.dynamic_partition(positions, levels - min_level, len(names))  # per level (K_l,)
    pooled = []
    for level, name, ids in zip(range(min_level, max_level + 1), names, part_ids):
        level_boxes = tf.gather(flat, ids)  # (K_l, 4) this level's RoIs
        level_indices = tf.gather(indices, ids)  # (K_l,) their batch indices
        pooled.append(_pool_indexed(features[name], level_boxes, level_indices,
                                    1.0 / 2**level, out_hw, grid, aligned))  # (K_l, P, Q, C)
    merged = tf.dynamic_stitch(part_ids, pooled)  # (B * R, P, Q, C) back in RoI order
    return _unflatten(merged, boxes, out_hw, first.shape[-1], first.dtype)
