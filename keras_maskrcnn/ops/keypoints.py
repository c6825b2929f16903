"""Keypoints <-> heatmaps: training targets for the keypoint head and inference decoding.

Method: He et al. 2017 (Mask R-CNN, §5 "Mask R-CNN for Human Pose Estimation": each keypoint
is a one-hot m x m target, the loss a softmax over the m^2 positions; 56 x 56 output).

Conventions pinned here (tests/ops/test_keypoints.py checks each against torchvision's
``roi_heads.keypoints_to_heatmap`` / ``heatmaps_to_keypoints``):
    * Keypoints are (x, y, visibility) in absolute image pixels; visibility > 0 means labelled.
    * Heatmap cell (i, j) of an S x S heatmap covers RoI-relative continuous coordinates
      [j, j + 1) x [i, i + 1) after scaling the RoI to S x S (Heckbert: c = d + 0.5), so a
      keypoint maps to floor((x - x1) * S / (x2 - x1)); a keypoint exactly on the right
      (bottom) RoI edge goes to the last column (row), as in torchvision.
    * Decoding resizes each heatmap to ceil(RoI size) (at least 1 px) with PyTorch's bicubic
      kernel (A = -0.75, align_corners=False, taps clamped to the border), takes the argmax
      (first maximum in row-major order on ties) and maps it back with the +0.5 offset.
    * Scores: "logit" (torchvision's ``keypoints_scores``): the resized heatmap's value at the
      argmax; "detectron2" (the score column its ``keypoint_rcnn_inference`` keeps): the
      resized map's softmax at the argmax, normalised over the S x S heatmap,
      exp(v - v) / sum exp(h - v) = 1 / sum_ij exp(h_ij - v), h the S x S logits and v the
      resized maximum (tests/ops/test_keypoints_detectron2.py, against a torch transcription
      of detectron2's decoding in tests/support/d2_keypoints.py).
    * Absent keypoints (detections of a class without keypoints) are (0, 0, -inf):
      ``ABSENT_SCORE`` is below any threshold, and ``shift_keypoints`` leaves them alone.

Shape shorthand:
    B  batch size
    R  RoIs per image;  D  detections per image
    M  GT instances per image
    K  keypoints per instance (17 for COCO persons; here K never means classes)
    S  heatmap size (56 in Keypoint R-CNN)
    ...  any number of leading (batch) dims, e.g. (B,); every function here accepts them
"""
import tensorflow as tf

SCORES = ("logit", "detectron2")  # heatmaps_to_keypoints score choices
ABSENT_SCORE = float("-inf")  # score of a keypoint a detection's class does not have


def keypoints_to_heatmap(keypoints, rois, heatmap_size):
    """Heatmap classification targets of GT keypoints inside their RoIs.

    Args:
        keypoints: (..., R, K, 3) float [x, y, visibility] in image pixels: the keypoints of
            the GT instance each RoI is matched to.
        rois: (..., R, 4) float xyxy RoIs.
        heatmap_size: Python int S.

    Returns:
        targets: (..., R, K) int32 flat index y * S + x of the keypoint's heatmap cell, 0
            where not valid.
        valid: (..., R, K) bool, True where the keypoint is labelled (visibility > 0) and its
            cell lies inside the S x S heatmap.

    Equal to torchvision's ``keypoints_to_heatmap`` (which returns int64 and a 0/1 valid).
    Keypoints exactly on x == x2 (y == y2) get column (row) S - 1. RoIs of zero width or
    height give non-finite scales; their keypoints are invalid unless on that boundary.
    """
    keypoints = tf.convert_to_tensor(keypoints, dtype=tf.float32)
    rois = tf.convert_to_tensor(rois, dtype=tf.float32)
    size = float(heatmap_size)
    rois = rois[..., :, None, :]  # (..., R, 4) -> (..., R, 1, 4) to broadcast over K
    x1, y1, x2, y2 = rois[..., 0], rois[..., 1], rois[..., 2], rois[..., 3]  # (..., R, 1)
    scale_x = size / (x2 - x1)  # torchvision's order: scale first, then (x - x1) * scale
    scale_y = size / (y2 - y1)
    x, y, vis = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]  # (..., R, K)
    fx = tf.floor((x - x1) * scale_x)
    fy = tf.floor((y - y1) * scale_y)
    # The border keypoint goes to the last cell whatever its scaled value.
    fx = tf.where(tf.equal(x, x2), size - 1.0, fx)
    fy = tf.where(tf.equal(y, y2), size - 1.0, fy)
    # Decide validity on floats (floor(v) in [0, S) <=> v in [0, S); NaN -> invalid), so that
    # huge or non-finite values are never cast to int.
    valid = (fx >= 0.0) & (fx < size) & (fy >= 0.0) & (fy < size) & (vis > 0.0)
    fx = tf.where(valid, fx, 0.0)
    fy = tf.where(valid, fy, 0.0)
    targets = tf.cast(fy, tf.int32) * heatmap_size + tf.cast(fx, tf.int32)
    return targets, valid


def _cubic_coefficients(t):
    """PyTorch's ``get_cubic_upsample_coefficients`` (A = -0.75) for fractions t, 4 x (n,)."""
    a = -0.75

    def near(x):  # |x| <= 1 branch of the Keys kernel, PyTorch's operation order
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2 branch
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    t2 = 1.0 - t
    return far(t + 1.0), near(t), near(t2), far(t2 + 1.0)


def bicubic_resize_matrix(out_size, in_size):
    """Interpolation matrix of PyTorch's 1-D bicubic resize (``align_corners=False``).

    Args:
        out_size: int32 scalar (tensor or Python int), the output length (>= 1).
        in_size: int32 scalar, the input length.

    Returns:
        (out_size, in_size) float32 W such that ``W @ v`` is
        ``F.interpolate(v, out_size, mode="bicubic", align_corners=False)`` along one axis:
        source x = (in / out) * (i + 0.5) - 0.5 (not clamped), taps floor(x) - 1 .. floor(x)
        + 2 clamped to [0, in - 1], weights of the Keys kernel with A = -0.75.
    """
    in_f = tf.cast(in_size, tf.float32)
    scale = in_f / tf.cast(out_size, tf.float32)  # float(in) / out, as PyTorch's opmath
    real = scale * (tf.cast(tf.range(out_size), tf.float32) + 0.5) - 0.5  # (out,)
    index = tf.minimum(tf.floor(real), in_f - 1.0)  # (out,)
    t = tf.clip_by_value(real - index, 0.0, 1.0)
    index = tf.cast(index, tf.int32)
    weights = tf.zeros([out_size, in_size], tf.float32)
    for tap, coef in enumerate(_cubic_coefficients(t)):  # 4 taps, unrolled at trace time
        source = tf.clip_by_value(index + (tap - 1), 0, in_size - 1)  # border clamp
        weights += tf.one_hot(source, in_size, dtype=tf.float32) * coef[:, None]
    return weights


def _decode_one(args, num_keypoints, size, score):
    """Argmax of one RoI's K heatmaps after the bicubic resize to (map_h, map_w).

    args: maps (K, S, S), map_h, map_w int32 scalars. Returns (x_int, y_int) int32 (K,) and
    the score (K,): the resized heatmap's maximum v ("logit") or 1 / sum exp(maps - v)
    ("detectron2").
    """
    maps, map_h, map_w = args
    wy = bicubic_resize_matrix(map_h, size)  # (map_h, S)
    wx = bicubic_resize_matrix(map_w, size)  # (map_w, S)
    # Horizontal pass first, then vertical: PyTorch's summation nesting.
    rows = tf.matmul(maps, wx, transpose_b=True)  # (K, S, S) @ (S, map_w) -> (K, S, map_w)
    resized = tf.matmul(tf.broadcast_to(wy, [num_keypoints, map_h, size]), rows)
    flat = tf.reshape(resized, [num_keypoints, -1])  # (K, map_h, map_w) -> (K, map_h * map_w)
    pos = tf.argmax(flat, axis=1, output_type=tf.int32)  # (K,), first maximum on ties
    peak = tf.reduce_max(flat, axis=1)  # (K,) the value at pos
    if score == "detectron2":  # softmax at the peak, normalised over the S x S logits
        peak = 1.0 / tf.reduce_sum(tf.exp(maps - peak[:, None, None]), axis=[1, 2])
    return pos % map_w, pos // map_w, peak


def heatmaps_to_keypoints(heatmaps, rois, parallel_iterations=4, score="logit", unroll=False):
    """Keypoint locations and scores from heatmap logits (Keypoint R-CNN inference).

    Args:
        heatmaps: (..., R, K, S, S) float heatmap logits.
        rois: (..., R, 4) float xyxy RoIs (detections) in image pixels.
        parallel_iterations: RoIs resized concurrently; peak memory is about this many times
            K * ceil(h) * ceil(w) floats of the largest RoIs.
        score: "logit" or "detectron2" (module docstring).
        unroll: decode the RoIs one by one in a static Python loop instead of ``tf.map_fn``
            (R static): the ONNX / LiteRT graphs, whose converters do not lower a loop over
            tensors of dynamic inner shapes.

    Returns:
        (..., R, K, 3) float32 [x, y, score]: x = x1 + (j + 0.5) * w / ceil(w) with j the
        argmax column of the heatmap resized to ceil(h) x ceil(w) (w = max(x2 - x1, 1), same
        for y), and score the resized heatmap's value there (torchvision's ``end_scores``) or
        detectron2's normalised softmax there.

    Matches torchvision's ``heatmaps_to_keypoints`` (x, y, end_scores) and detectron2's (x, y
    and its 4th column; positions are the same in both). The resized map size
    varies per RoI, so RoIs are processed with ``tf.map_fn`` (dynamic inner shapes: graph mode
    yes, XLA no); the resize is a pair of matrix products with PyTorch's bicubic weights.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    heatmaps = tf.convert_to_tensor(heatmaps, dtype=tf.float32)
    rois = tf.convert_to_tensor(rois, dtype=tf.float32)
    num_keypoints, size = heatmaps.shape[-3], heatmaps.shape[-1]
    if num_keypoints is None or size is None:
        num_keypoints, size = tf.shape(heatmaps)[-3], tf.shape(heatmaps)[-1]
    flat_maps = tf.reshape(heatmaps, [-1, num_keypoints, size, size])  # (..., R) -> (N,)
    flat_rois = tf.reshape(rois, [-1, 4])  # (..., R, 4) -> (N, 4)
    x1, y1, x2, y2 = tf.unstack(flat_rois, axis=1)  # each (N,)
    widths = tf.maximum(x2 - x1, 1.0)
    heights = tf.maximum(y2 - y1, 1.0)
    map_w = tf.math.ceil(widths)  # (N,) resized heatmap width, >= 1
    map_h = tf.math.ceil(heights)
    per_roi = (flat_maps, tf.cast(map_h, tf.int32), tf.cast(map_w, tf.int32))
    if unroll:
        x_int, y_int, scores = _decode_unrolled(per_roi, num_keypoints, size, score)
    else:
        x_int, y_int, scores = tf.map_fn(
            lambda a: _decode_one(a, num_keypoints, size, score), per_roi,
            fn_output_signature=(tf.int32, tf.int32, tf.float32),
            # eagerly map_fn runs one RoI at a time anyway, and warns when asked for more
            parallel_iterations=None if tf.executing_eagerly() else parallel_iterations,
        )  # each (N, K)
    width_correction = (widths / map_w)[:, None]  # (N,) -> (N, 1)
    height_correction = (heights / map_h)[:, None]
    x = (tf.cast(x_int, tf.float32) + 0.5) * width_correction + x1[:, None]
    y = (tf.cast(y_int, tf.float32) + 0.5) * height_correction + y1[:, None]
    keypoints = tf.stack([x, y, scores], axis=-1)  # (N, K, 3)
    out_shape = tf.concat([tf.shape(rois)[:-1], [num_keypoints, 3]], axis=0)
    keypoints = tf.reshape(keypoints, out_shape)  # (N, K, 3) -> (..., R, K, 3)
    keypoints.set_shape(rois.shape[:-1].concatenate([heatmaps.shape[-3], 3]))
    return keypoints


def _decode_unrolled(per_roi, num_keypoints, size, score):
    """``_decode_one`` of each of the N RoIs (N static), stacked: 3 x (N, K)."""
    count = per_roi[0].shape[0]
    if count is None:
        raise ValueError("unrolled keypoint decoding needs a static number of RoIs")
    decoded = [_decode_one([t[i] for t in per_roi], num_keypoints, size, score)
               for i in range(count)]
    if not decoded:  # no RoI
        return (tf.zeros([0, num_keypoints], tf.int32),) * 2 + (
            tf.zeros([0, num_keypoints], tf.float32),)
    return tuple(tf.stack(column) for column in zip(*decoded))


def mask_absent_keypoints(keypoints, present):
    """Keypoints of detections whose class has none set to (0, 0, ``ABSENT_SCORE``).

    Args:
        keypoints: (..., D, K, 3) float [x, y, score].
        present: (..., D) bool, True where the detection's class has keypoints.

    Returns:
        (..., D, K, 3) float32: the rows of ``present`` detections unchanged.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    absent = tf.constant([0.0, 0.0, ABSENT_SCORE], tf.float32)  # (3,) broadcast over D, K
    return tf.where(present[..., None, None], keypoints, absent)


def shift_keypoints(keypoints, offset):
    """x and y of the present keypoints moved by ``offset`` pixels (absent ones unchanged).

    Args:
        keypoints: (..., K, 3) float [x, y, score]; absent keypoints have score -inf.
        offset: Python float, e.g. -0.5 for detectron2 models, whose COCO evaluator subtracts
            half a pixel from its predictions (their training data adds it to the GT).

    Returns:
        (..., K, 3) float32; the same tensor when ``offset`` is 0.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    if offset == 0.0:
        return keypoints
    present = keypoints[..., 2:] > ABSENT_SCORE  # (..., K, 1)
    return tf.where(present, keypoints + tf.constant([offset, offset, 0.0], tf.float32),
                    keypoints)
