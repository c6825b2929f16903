"""Class-aware, batched non-maximum suppression with a static output size.

Method: the greedy NMS of Ren et al. 2015 (Faster R-CNN, §3.3: IoU 0.7 over the proposals) and
the per-class NMS of the final detections (He et al. 2017, Mask R-CNN, §3.1 "Inference").

Conventions pinned here (tests/ops/test_nms.py checks each one against ``torchvision.ops.nms`` /
``torchvision.ops.batched_nms`` and a numpy loop oracle):
    * Greedy NMS in decreasing score order; **ties in score go to the lower index** (torchvision's
      CPU kernel sorts with a stable sort). A box is suppressed by an already kept box of the
      same class when ``IoU > iou_threshold`` (strict: an IoU exactly at the threshold is kept).
    * The IoU is torchvision's float32 arithmetic, ``inter / (area_i + area_j - inter)`` with
      ``area = (x2 - x1) * (y2 - y1)``. A Python-float threshold is compared in float64 like
      torch's ``double`` argument (an IoU of float32(0.3) IS suppressed at threshold 0.3).
    * Degenerate boxes (x2 <= x1 or y2 <= y1, inverted ones included) never suppress and are
      never suppressed (torchvision's intersection is 0 for them); they are still returned.
    * Boxes of different classes never suppress each other.
    * Output: the first ``D`` kept indices in decreasing score order, padded with -1, and the
      number of valid entries per image.

torchvision's ``batched_nms`` has two CPU code paths that round differently: up to 1000 boxes it
offsets each box by ``class * (max_coordinate + 1)`` and runs one NMS (the float32 offsets
round the coordinates); above 1000 it runs NMS per class on the exact coordinates. The results
differ only where an IoU lies within rounding error of the threshold (measured: 1 image in 60
at 4000 clustered boxes). ``method`` picks the path:
    * "offset" (default, fastest): the offset path. One ``NonMaxSuppressionV4`` per image
      (tf.map_fn), which stops as soon as D boxes are kept.
    * "per_class": the per-class path (exact coordinates), via
      ``tf.image.combined_non_max_suppression`` fed with stable-sort ranks as scores (its own
      tie order is unspecified); the kept ranks map back to indices.
    * "torchvision_cpu": per image, whichever path torchvision (CPU) takes for that image's
      candidate count (both are computed), for bit-exact parity tests.
No XLA kernel exists for these ops: compile models that use them with ``jit_compile=False``.

"offset" is the fastest path; "per_class" builds a dense (B, N, K) score matrix and falls
behind with many flattened detections (timings: bench/README.md).

Known deviations from torchvision (none arises with boxes clipped to the image):
    * With a coordinate below -1, torchvision's offsets let different classes overlap and
      suppress each other; here the offset step widens so they never do.
    * Above 1000 boxes torchvision orders kept boxes with EQUAL scores by an unstable sort;
      here they stay in index order (the kept set and the score sequence are the same).

Shape shorthand:
    B  batch size
    N  candidate boxes per image (proposals or detections)
    K  distinct class ids in the batch
    D  ``max_output``, the static number of kept indices returned per image
"""
import tensorflow as tf

#: torchvision (CPU) offsets boxes up to this many candidates per call and loops over classes
#: above it (``torchvision.ops.boxes.batched_nms``: ``boxes.numel() > 4000``).
TORCHVISION_CPU_OFFSET_MAX_BOXES = 1000
METHODS = ("offset", "per_class", "torchvision_cpu")


def _torch_iou_threshold(iou_threshold):
    """float32 threshold t32 with ``x > t32 <=> float64(x) > t`` for every float32 ``x``.

    torch compares the float32 IoU with a ``double`` threshold; TF compares in float32. Where
    float32(t) rounds above t, the IoU equal to float32(t) still counts as "> t", so the
    threshold steps one ulp down. A float32 tensor passes through unchanged.
    """
    if not tf.is_tensor(iou_threshold):  # a Python float must not pass through float32
        iou_threshold = tf.constant(iou_threshold, tf.float64)
    t64 = tf.cast(iou_threshold, tf.float64)
    t32 = tf.cast(t64, tf.float32)
    lower = tf.math.nextafter(t32, tf.constant(-1.0, tf.float32))
    return tf.where(tf.cast(t32, tf.float64) > t64, lower, t32)


def _zero_degenerate(boxes):
    """(B, N, 4) -> (B, N, 4): boxes with x2 <= x1 or y2 <= y1 become (0, 0, 0, 0).

    TF's IoU sorts each box's corners (an inverted box would overlap others); a zero-area box
    has IoU 0 with everything there, as degenerate boxes do in torchvision.
    """
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)  # (B, N, 4) -> 4 x (B, N)
    proper = (x2 > x1) & (y2 > y1)
    return tf.where(proper[..., None], boxes, 0.0)  # proper (B, N) -> (B, N, 1)


def _class_offset_boxes(boxes, classes, valid):
    """torchvision's coordinate trick: ``boxes + class * (max_coordinate + 1)``, per image.

    ``max_coordinate`` is the largest coordinate over the image's valid boxes (torchvision only
    sees those), computed in float32 as torch does. torchvision's classes can overlap when a
    coordinate is below -1; there the step becomes ``max - min + 1`` so they never do.

    Args:
        boxes: (B, N, 4) float32. classes: (B, N) int (raw ids, as torchvision uses them).
        valid: (B, N) bool.

    Returns:
        (B, N, 4) float32 offset boxes.
    """
    inf = tf.constant(float("inf"), boxes.dtype)
    max_coordinate = tf.reduce_max(tf.where(valid[..., None], boxes, -inf), axis=[1, 2])  # (B,)
    min_coordinate = tf.reduce_min(tf.where(valid[..., None], boxes, inf), axis=[1, 2])  # (B,)
    step = tf.where(
        min_coordinate >= -1.0, max_coordinate + 1.0, max_coordinate - min_coordinate + 1.0
    )  # (B,)
    step = tf.where(tf.math.is_finite(step), step, 0.0)  # no valid box: no offset
    offsets = tf.cast(classes, boxes.dtype) * step[:, None]  # (B, N)
    return boxes + offsets[..., None]  # offsets (B, N) -> (B, N, 1)


def _offset_nms(boxes, scores, classes, valid, iou_threshold, max_output):
    """The "offset" path: one greedy NMS per image on class-offset boxes. Returns (B, D), (B,)."""
    boxes = _zero_degenerate(_class_offset_boxes(boxes, classes, valid))
    lowest = tf.constant(tf.float32.min, tf.float32)
    # TF keeps candidates with score > -inf; a valid -inf score becomes the lowest float
    # (it then ties with a valid score of exactly float32.min: lower index first).
    scores = tf.where(valid, tf.maximum(scores, lowest), float("-inf"))

    def one_image(args):
        image_boxes, image_scores = args  # (N, 4), (N,)
        kept, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=image_boxes,
            scores=image_scores,
            max_output_size=max_output,
            iou_threshold=iou_threshold,
            score_threshold=tf.constant(float("-inf"), tf.float32),
            pad_to_max_output_size=True,
        )  # kept (D,) padded with 0, ties in score -> lower index first
        return tf.where(tf.range(max_output) < count, kept, -1), count

    if boxes.shape[0] == 1:  # a static batch of one (the ONNX / LiteRT graphs): no loop
        kept, count = one_image((boxes[0], scores[0]))
        return kept[None], count[None]  # (1, D), (1,)
    return tf.map_fn(
        one_image, (boxes, scores), fn_output_signature=(tf.int32, tf.int32)
    )  # (B, D), (B,)


def _per_class_nms(boxes, scores, classes, valid, iou_threshold, max_output):
    """The "per_class" path: combined NMS on exact coordinates. Returns (B, D), (B,)."""
    num_boxes = tf.shape(scores)[1]
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)  # (B, N)
    class_ids, compact = tf.unique(tf.reshape(classes, [-1]))  # (B*N,) -> ids in 0..K-1
    compact = tf.reshape(compact, tf.shape(classes))  # (B*N,) -> (B, N)
    compact = tf.gather(tf.where(valid, compact, -1), order, batch_dims=1)  # (B, N) sorted
    ranks = tf.cast(num_boxes - tf.range(num_boxes), tf.float32)  # (N,): N, N-1, ..., 1
    num_classes = tf.maximum(tf.size(class_ids), 1)
    rank_matrix = tf.one_hot(compact, num_classes) * ranks[None, :, None]  # (B, N, K)
    sorted_boxes = tf.gather(_zero_degenerate(boxes), order, batch_dims=1)  # (B, N, 4)
    _, kept_ranks, _, count = tf.image.combined_non_max_suppression(
        sorted_boxes[:, :, None, :],  # (B, N, 4) -> (B, N, 1, 4): one box for all classes
        rank_matrix,
        max_output_size_per_class=max_output,
        max_total_size=max_output,
        iou_threshold=iou_threshold,
        score_threshold=0.5,  # ranks are >= 1; invalid entries and other classes are 0
        pad_per_class=False,
        clip_boxes=False,
    )  # kept_ranks (B, D), decreasing, 0 where padded
    position = num_boxes - tf.cast(kept_ranks, tf.int32)  # (B, D); padding -> N
    order = tf.pad(order, [[0, 0], [0, 1]], constant_values=-1)  # (B, N + 1), [b, N] = -1
    return tf.gather(order, position, batch_dims=1), count  # (B, D) indices into N, or -1


def batched_nms(
    boxes,
    scores,
    classes,
    iou_threshold,
    max_output,
    valid=None,
    score_threshold=None,
    method="offset",
):
    """Class-aware greedy NMS per image: torchvision's ``batched_nms`` with a static size.

    Per image ``b`` this returns the first ``max_output`` entries of
    ``torchvision.ops.batched_nms(boxes[b][keep], scores[b][keep], classes[b][keep], t)``
    mapped back to indices into N, where ``keep = valid[b] & (scores[b] > score_threshold)``
    (bit-exact with method="torchvision_cpu"; see the module docstring for the others).

    Args:
        boxes: (B, N, 4) float32 xyxy boxes; N may be unknown or 0.
        scores: (B, N) float scores, not NaN; ``-inf`` is an ordinary (lowest) score.
        classes: (B, N) integer class ids (torchvision offsets by the raw id: keep ids small).
        iou_threshold: scalar in [0, 1]; a box is suppressed when ``IoU > iou_threshold``.
            A Python float is honoured in float64 like torch's; a float32 tensor in float32.
        max_output: Python int D >= 1, the static number of indices returned per image.
        valid: optional (B, N) bool; False marks padding/invalid candidates: never returned,
            never suppressing anything, not counted by torchvision's max coordinate.
        score_threshold: optional scalar; only boxes with ``score > score_threshold`` are
            candidates (torchvision's ``box_score_thresh`` convention).
        method: "offset", "per_class" or "torchvision_cpu" (module docstring).

    Returns:
        indices: (B, D) int32 indices into N, decreasing score (ties: lower index first),
            -1 after the valid entries.
        num_valid: (B,) int32 number of valid entries in ``indices``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    classes = tf.convert_to_tensor(classes)
    valid = tf.ones_like(scores, tf.bool) if valid is None else tf.cast(valid, tf.bool)
    if score_threshold is not None:
        valid &= scores > tf.cast(score_threshold, tf.float32)
    args = (boxes, scores, classes, valid, _torch_iou_threshold(iou_threshold), max_output)
    if method == "offset":
        return _offset_nms(*args)
    if method == "per_class":
        return _per_class_nms(*args)
    offset_indices, offset_count = _offset_nms(*args)
    class_indices, class_count = _per_class_nms(*args)
    num_candidates = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)  # (B,)
    use_offset = num_candidates <= TORCHVISION_CPU_OFFSET_MAX_BOXES  # (B,)
    indices = tf.where(use_offset[:, None], offset_indices, class_indices)  # (B, D)
    return indices, tf.where(use_offset, offset_count, class_count)


def nms(boxes, scores, iou_threshold, max_output, valid=None, score_threshold=None):
    """Single-image, single-class greedy NMS: ``torchvision.ops.nms(boxes, scores, t)[:D]``.

    Same conventions as ``batched_nms`` (strict ``IoU > iou_threshold``, ties to the lower
    index, degenerate boxes never interact, -1 padding); bit-exact with torchvision.

    Args:
        boxes: (N, 4) float32 xyxy boxes. scores: (N,) float scores, not NaN.
        iou_threshold: scalar in [0, 1]. max_output: Python int D >= 1.
        valid: optional (N,) bool candidate mask. score_threshold: optional scalar; only
            ``score > score_threshold`` are candidates.

    Returns:
        indices: (D,) int32 kept indices into N, decreasing score, -1 padded.
        num_valid: () int32 number of valid entries.
    """
    scores = tf.cast(scores, tf.float32)
    indices, num_valid = batched_nms(
        tf.convert_to_tensor(boxes, tf.float32)[None],  # (N, 4) -> (1, N, 4)
        scores[None],  # (N,) -> (1, N)
        tf.zeros_like(scores[None], tf.int32),  # one class: all offsets are 0
        iou_threshold,
        max_output,
        valid=None if valid is None else tf.convert_to_tensor(valid)[None],  # (N,) -> (1, N)
        score_threshold=score_threshold,
    )
    return indices[0], num_valid[0]  # (1, D) -> (D,), (1,) -> ()
