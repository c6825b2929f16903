"""FPN RoIAlign (Mask R-CNN section 3 "RoIAlign"; FPN section 4.2 level assignment) by gathers:
the portable twin of ``ops.roi_align.multilevel_roi_align`` for the ONNX and LiteRT exports.

``multilevel_roi_align`` partitions the RoIs by level (``DynamicPartition`` /
``DynamicStitch``) and samples with ``CropAndResize``: fast on TensorFlow, but neither op is
an ONNX Runtime or LiteRT builtin. Here every pyramid level is flattened into one (T, C) table
of feature vectors, each RoI's sample points are computed on its own level (stride, height,
width and table offset gathered per RoI), and the four bilinear neighbours of every sample are
gathered from the table and weighted: ``Gather``, ``Mul``, ``Add``, ``Floor``, ``Minimum``,
``Maximum``, ``Reshape`` and ``Mean`` only, static shapes apart from the RoI count.

Conventions: those of ``ops.roi_align`` (torchvision's ``roi_align`` sampling with
``sampling_ratio`` = G > 0: sample y = roi_start + p * bin + (g + 0.5) * bin / G; a sample
with y < -1 or y > H is 0, y <= 0 reads row 0, y_low >= H - 1 reads row H - 1; the G x G
samples of a bin are averaged; ``aligned`` half-pixel shift; level mapping "torchvision" /
"detectron2"). Adaptive sampling (G = 0) has a data-dependent sample count and is not
supported. tests/ops/test_roi_align_gather.py compares it with ``torchvision.ops.roi_align``
and with ``multilevel_roi_align``.

Memory: four (K, P * G, Q * G, C) gathers, summed one after the other.

Shape shorthand: B batch; R RoIs per image; K = B * R; L levels; H_l, W_l level size;
C channels; P, Q output size; G sampling ratio; N = P * G (or Q * G) samples per axis.
"""
import tensorflow as tf

from keras_maskrcnn.ops.roi_align import (_flatten_rois, _unflatten, fpn_levels,
                                          pyramid_level_names)
from keras_maskrcnn.ops.roi_bins import output_pair, roi_extent


def _axis_neighbours(start, end, size, num_bins, grid, aligned):
    """Bilinear neighbours of the N = num_bins * grid samples of each RoI along one axis.

    Args:
        start, end: (K,) box edges in feature pixels.  size: (K,) float32 map size (H or W).
        num_bins: P.  grid: G.  aligned: half-pixel shift.

    Returns:
        low, high (K, N) int32 rows / columns; w_low, w_high (K, N) float32 weights, zero for
        samples outside [-1, size]. Sample n = p * G + g.
    """
    roi_start, roi_size = roi_extent(start, end, aligned)
    bin_size = roi_size / num_bins
    bins = tf.constant([p for p in range(num_bins) for _ in range(grid)], tf.float32)  # (N,)
    offsets = tf.constant([g + 0.5 for _ in range(num_bins) for g in range(grid)], tf.float32)
    coords = (roi_start[:, None] + bins[None] * bin_size[:, None]
              + offsets[None] * (bin_size / grid)[:, None])  # (K, N)
    size = size[:, None]  # (K, 1)
    inside = tf.cast((coords >= -1.0) & (coords <= size), tf.float32)
    coords = tf.maximum(coords, 0.0)
    low = tf.floor(coords)
    at_edge = low >= size - 1.0
    low = tf.where(at_edge, size - 1.0, low)
    high = tf.where(at_edge, low, low + 1.0)
    frac = tf.where(at_edge, 0.0, coords - low)
    return (tf.cast(low, tf.int32), tf.cast(high, tf.int32), (1.0 - frac) * inside,
            frac * inside)


def _level_table(features, names):
    """{name: (B, H_l, W_l, C)} -> table (T, C) float32 of every level's vectors (level-major,
    then image, row, column), and (L,) int32 heights, widths and first table rows."""
    rows, heights, widths, firsts, first = [], [], [], [], tf.constant(0, tf.int32)
    for name in names:
        level = tf.cast(features[name], tf.float32)
        shape = tf.shape(level)
        rows.append(tf.reshape(level, [-1, shape[3]]))  # (B * H_l * W_l, C)
        heights.append(shape[1])
        widths.append(shape[2])
        firsts.append(first)
        first = first + shape[0] * shape[1] * shape[2]
    return tf.concat(rows, 0), tf.stack(heights), tf.stack(widths), tf.stack(firsts)


def _pool(table, base, width, ys, xs, out_hw, grid):
    """(K, P, Q, C): the bilinear samples of each RoI averaged over each bin's G x G.

    ys, xs: ``_axis_neighbours`` of the two axes; base (K,) table row of the RoI's image on its
    level; width (K,) its W_l.
    """
    total = None
    for y, wy in ((ys[0], ys[2]), (ys[1], ys[3])):
        for x, wx in ((xs[0], xs[2]), (xs[1], xs[3])):
            with tf.control_dependencies([] if total is None else [total]):
                index = (base[:, None, None] + y[:, :, None] * width[:, None, None]
                         + x[:, None, :])  # (K, N_y, N_x)
                term = tf.gather(table, index) * (wy[:, :, None] * wx[:, None, :])[..., None]
            total = term if total is None else total + term  # (K, N_y, N_x, C)
    out_h, out_w = out_hw
    if grid == 1:
        return total
    shape = tf.shape(total)
    total = tf.reshape(total, tf.stack([shape[0], out_h, grid, out_w, grid, shape[3]]))
    return tf.reduce_mean(total, axis=[2, 4])


def multilevel_roi_align_gather(features, boxes, output_size, sampling_ratio=2, aligned=True,
                                min_level=2, max_level=5, canonical_size=224,
                                canonical_level=4, level_mapping="torchvision"):
    """``ops.roi_align.multilevel_roi_align`` with gathers only (module docstring).

    Args: as ``multilevel_roi_align``, with ``sampling_ratio`` a positive int.

    Returns:
        (B, R, P, Q, C) pooled features in the dtype of ``features["P{min_level}"]``.
    """
    grid = int(sampling_ratio)
    if grid != sampling_ratio or grid < 1:
        raise ValueError(f"the portable RoIAlign needs a fixed sampling_ratio > 0, got "
                         f"{sampling_ratio!r} (0 = adaptive sampling, whose sample count "
                         "depends on each RoI's size)")
    out_hw = output_pair(output_size)
    names = pyramid_level_names(features, min_level, max_level)
    first = tf.convert_to_tensor(features[names[0]])
    boxes = tf.stop_gradient(tf.convert_to_tensor(boxes, tf.float32))  # as multilevel_roi_align
    flat, images = _flatten_rois(boxes)  # (K, 4), (K,) batch index
    level = fpn_levels(flat, level_mapping, min_level=min_level, max_level=max_level,
                       canonical_size=canonical_size,
                       canonical_level=canonical_level) - min_level  # (K,) in [0, L)
    table, heights, widths, firsts = _level_table(features, names)
    height, width = tf.gather(heights, level), tf.gather(widths, level)  # (K,)
    base = tf.gather(firsts, level) + images * height * width  # (K,)
    scale = tf.gather(tf.constant([0.5 ** lv for lv in range(min_level, max_level + 1)],
                                  tf.float32), level)  # (K,)
    x1, y1, x2, y2 = tf.unstack(flat * scale[:, None], axis=-1)  # 4 x (K,)
    ys = _axis_neighbours(y1, y2, tf.cast(height, tf.float32), out_hw[0], grid, aligned)
    xs = _axis_neighbours(x1, x2, tf.cast(width, tf.float32), out_hw[1], grid, aligned)
    pooled = _pool(table, base, width, ys, xs, out_hw, grid)  # (K, P, Q, C)
    return _unflatten(pooled, boxes, out_hw, first.shape[-1], first.dtype)
