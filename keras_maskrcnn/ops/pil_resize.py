"""Pillow's ``Image.resize(BILINEAR)`` on uint8 images, bit for bit, as graph TensorFlow.

detectron2's test-time ``ResizeShortestEdge`` resizes uint8 images with PIL
(``ResizeTransform.apply_image``: ``Image.fromarray(img).resize((w, h), BILINEAR)``), so its
models see PIL's pixels. Pillow (``src/libImaging/Resample.c``) resizes with a separable
filter and integer arithmetic; the facts reproduced here:
    * Per axis (``precompute_coeffs``), in float64: scale = in / out, filterscale =
      max(scale, 1) (the triangle widens when shrinking: antialiasing), support =
      filterscale (bilinear support 1). Output x has centre c = (x + 0.5) * scale, taps from
      xmin = max(int(c - support + 0.5), 0) to xmax = min(int(c + support + 0.5), in)
      (exclusive; C int() truncates), weight w_i = max(1 - |(i - c + 0.5) / filterscale|, 0)
      (``bilinear_filter``; 1 / filterscale precomputed), each divided by their sum taken
      in tap order (when not 0). At most 2 ceil(support) + 1 taps.
    * ``normalize_coeffs_8bpc``: each weight becomes an int32 in 2^-22 fixed point,
      int(0.5 + w * 2^22) (w >= 0 for the triangle).
    * Each output value = clip((2^21 + sum_i v_i k_i) >> 22, 0, 255) (``clip8``), in int32
      (2 spare bits by Pillow's design, so no overflow); the first pass is stored as uint8
      and the second reads it. A pass over an unchanged size is the identity (a single weight
      2^22), so it is not skipped specially.
    * Pass order. Pillow >= 13.0 (``ImagingResampleInner``) runs the vertical pass first when
      the height shrinks by more than twice as many pixels as the width: H - h > 0 and
      H - h > 2 (W - w); otherwise horizontal first. Pillow <= 12 always ran horizontal first
      (``horizontal_first=True``). The two differ by a level on some pixels, so detectron2's
      pixels depend on the Pillow it runs with; for its aspect-preserving resizes the order
      differs only for shrunk images taller than twice their width.

Sums of float64 weights are taken sequentially (``tf.foldl``) and integer sums are exact, so
every value equals Pillow's (tests/ops/test_pil_resize.py compares with PIL on many sizes).

Shape shorthand: B images, H, W input size, h, w output size, C channels, T taps per output.
"""
import tensorflow as tf

PRECISION_BITS = 22  # Pillow's 32 - 8 - 2


def bilinear_coefficients(in_size, out_size):
    """Pillow's fixed-point bilinear taps of one axis.

    Args:
        in_size, out_size: () int (Python ints or int32 tensors), both >= 1.

    Returns:
        (indices (out, T) int32, coefficients (out, T) int32): output j is
        sum_t input[indices[j, t]] * coefficients[j, t] in 2^-22 fixed point. Taps past a
        row's last one have coefficient 0 (their index is clamped into the input).
    """
    in_size = tf.cast(in_size, tf.int32)
    out_size = tf.cast(out_size, tf.int32)
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale * 1.0  # bilinear_filter's support is 1
    taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1  # T
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale  # (out,)
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)  # trunc, then >= 0
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - xmin  # tap count
    tap = tf.range(taps)[None, :]  # (1, T)
    position = tf.cast(tap + xmin[:, None], tf.float64) - center[:, None] + 0.5  # (out, T)
    weights = tf.maximum(1.0 - tf.abs(position * (1.0 / filterscale)), 0.0)
    weights = tf.where(tap < xmax[:, None], weights, tf.zeros_like(weights))  # (out, T)
    total = tf.foldl(lambda acc, column: acc + column, tf.transpose(weights),
                     initializer=tf.zeros([out_size], tf.float64))  # (out,) in tap order
    safe_total = tf.where(total == 0.0, tf.ones_like(total), total)  # Pillow skips 0
    weights = weights / safe_total[:, None]  # (out, T)
    fixed = tf.cast(0.5 + weights * float(1 << PRECISION_BITS), tf.int32)  # trunc as C
    indices = tf.minimum(tap + xmin[:, None], in_size - 1)  # (out, T)
    return indices, fixed


def _resample_axis(image, out_size, axis):
    """One Pillow pass along ``axis`` of an int32 (B, H, W, C) image -> int32 uint8 values."""
    indices, coefficients = bilinear_coefficients(tf.shape(image)[axis], out_size)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    taps = tf.shape(indices)[1]

    def add_tap(t, acc):
        values = tf.gather(image, indices[:, t], axis=axis)  # (B, ., ., C) out_size on axis
        return t + 1, acc + values * tf.reshape(coefficients[:, t], shape)

    out_shape = tf.tensor_scatter_nd_update(tf.shape(image), [[axis]], [out_size])
    acc = tf.fill(out_shape, tf.constant(1 << (PRECISION_BITS - 1), tf.int32))
    _, acc = tf.while_loop(lambda t, _: t < taps, add_tap, (tf.constant(0), acc),
                           shape_invariants=(tf.TensorShape([]), tf.TensorShape([None] * 4)))
    return tf.clip_by_value(tf.bitwise.right_shift(acc, PRECISION_BITS), 0, 255)


def resize_bilinear_pil(images, size, horizontal_first=None):
    """Pillow's ``Image.resize((w, h), BILINEAR)`` of uint8 images.

    Args:
        images: (B, H, W, C) or (H, W, C) uint8, or another dtype holding uint8 values
            (rounded and clipped to [0, 255] first).
        size: (2,) int (h, w), each >= 1.
        horizontal_first: None = Pillow >= 13's pass order (module docstring); True = width
            pass first always (Pillow <= 12); False = height pass first always.

    Returns:
        (B, h, w, C) or (h, w, C) int32 in [0, 255].
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        images = tf.clip_by_value(tf.round(tf.cast(images, tf.float32)), 0.0, 255.0)
    x = tf.cast(images, tf.int32)
    single = x.shape.rank == 3
    if single:
        x = x[None]  # (1, H, W, C)
    size = tf.cast(tf.convert_to_tensor(size), tf.int32)

    def width_then_height():
        return _resample_axis(_resample_axis(x, size[1], axis=2), size[0], axis=1)

    def height_then_width():
        return _resample_axis(_resample_axis(x, size[0], axis=1), size[1], axis=2)

    if horizontal_first is None:
        shrink_h = tf.shape(x)[1] - size[0]
        shrink_w = tf.shape(x)[2] - size[1]
        vertical_first = tf.logical_and(shrink_h > 0, shrink_h > 2 * shrink_w)
        x = tf.cond(vertical_first, height_then_width, width_then_height)  # (B, h, w, C)
    else:
        x = width_then_height() if horizontal_first else height_then_width()
    return x[0] if single else x
