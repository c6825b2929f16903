"""Fast NMS (YOLACT, Bolya et al. 2019, section 3.3), batched with static shapes.

Per class, the top ``top_k`` candidates sorted by score form an IoU matrix; its strict upper
triangle (``triu(diagonal=1)``: each box against the boxes ranked above it) is reduced by a
column max, and a box survives when that max is ``<= iou_threshold``. A box already
suppressed still suppresses the boxes below it, so Fast NMS keeps a subset of what greedy NMS
keeps (A suppresses B and B suppresses C: greedy keeps C, Fast NMS drops it). Then the top
``max_detections`` over all classes by score.

Conventions pinned here (tests/ops/test_fast_nms.py checks each one against a NumPy loop):
    * IoU is ``ops.boxes.pairwise_iou`` (width = x2 - x1, no +1; YOLACT's ``jaccard`` is the
      same formula), computed in float32 and compared in float32 (``iou <= float32(t)``, as
      YOLACT's torch comparison with a Python float). A zero-area or inverted box has IoU 0
      with every box: it never suppresses and is never suppressed (YOLACT's ``jaccard`` gives
      0 / 0 = NaN for two empty boxes, which drops the lower one).
    * Candidates, ``threshold_on="anchor"`` (default; YOLACT's ``Detect`` with
      ``second_threshold=False``, which the ``YOLACT`` model uses): an anchor is kept when its
      best class score is ``> score_threshold``, and then every class score of a kept anchor
      is a candidate, however low, so returned scores may be ``<= score_threshold``. With
      every default (IoU 0.5, score 0.05, top 200 per class, 100 detections) ``fast_nms``
      is the reference's evaluation-time Fast NMS. ``threshold_on="class"``: (anchor, class)
      pairs with ``score > score_threshold`` (torchvision's and ``ops.nms``' rule: every
      returned score is above it); pairs at or below it never suppress nor survive.
    * Each group's candidates are taken by ``tf.math.top_k``: decreasing score, equal scores
      in increasing anchor index. The final top D is ``tf.math.top_k`` over the groups'
      survivors flattened group-major: equal scores go to the lower class (per-class mode),
      then the lower rank.
    * Cross-class (``cross_class=True``, YOLACT's ``cc_fast_nms``): an anchor's score is its
      best class score and its class the lowest class index attaining it; one group of the
      top K anchors, compared regardless of class. YOLACT returns every survivor (up to K);
      here the first D survivors (pass ``max_detections=top_k`` for all of them).
    * ``method="standard"`` runs greedy NMS (``ops.nms.batched_nms``, "per_class" path: IoU
      ``> t`` suppresses, exact coordinates, a Python-float ``t`` compared in float64) on the
      same candidates, for comparison.
    * Outputs are padded to D after the ``num_detections`` real rows: boxes 0, scores 0,
      classes -1, indices -1. ``classes`` is the 0-based index into the scores' last axis C
      (add 1 for background-first labels); ``indices`` points into N (to gather mask
      coefficients); in the per-class mode one anchor may appear under several classes.
Inside, candidates are compacted (anchors above the threshold, groups by candidate count) into
tensors of data-dependent size: compile with ``jit_compile=False``, as for ``ops.nms``.

Shape shorthand:
    B  batch size (may be unknown)
    N  anchors per image (may be unknown or 0); one box per anchor, shared by all classes
    C  foreground classes (background already removed), static
    G  candidate groups: C per class, 1 cross-class
    K  candidates per group: at most ``top_k`` (trimmed to the largest group inside)
    D  ``max_detections``, the static number of output rows
"""
import tensorflow as tf

from keras_maskrcnn.ops import nms as nms_ops

METHODS = ("fast", "standard")
THRESHOLD_ON = ("class", "anchor")


def _rank_key(scores, valid):
    """Sort key: valid entries keep their score (-inf raised to float32.min), others -inf."""
    lowest = tf.constant(tf.float32.min, tf.float32)
    return tf.where(valid, tf.maximum(scores, lowest), float("-inf"))


def _pad_axis(values, axis, min_size, pad_value):
    """Pads ``values`` along ``axis`` with ``pad_value`` up to at least ``min_size`` entries."""
    amount = tf.maximum(min_size - tf.shape(values)[axis], 0)
    paddings = tf.scatter_nd([[axis, 1]], [amount], [values.shape.rank, 2])  # after the end only
    padded = tf.pad(values, paddings, constant_values=pad_value)
    static = values.shape.as_list()
    static[axis] = None
    padded.set_shape(static)  # tf.pad with tensor paddings forgets every static dim
    return padded


def _compact_anchors(boxes, scores, score_threshold):
    """Moves the anchors whose best score is ``> score_threshold`` to the front, in order.

    Every candidate needs that (a class score above the threshold implies it), so the rest is
    dropped before sorting; the anchors keep their relative order, so do ties.

    Args:
        boxes: (B, N, 4). scores: (B, N, C).

    Returns:
        boxes (B, M, 4), scores (B, M, C), anchor_ids (B, M) int32 into N, live (B, M) bool,
        with M = max(1, the largest count over the batch).
    """
    live = tf.reduce_max(scores, axis=-1) > tf.cast(score_threshold, tf.float32)  # (B, N)
    live = _pad_axis(live, 1, 1, False)  # (B, max(N, 1)): top_k needs one entry
    count = tf.reduce_max(tf.reduce_sum(tf.cast(live, tf.int32), axis=1))
    _, anchor_ids = tf.math.top_k(tf.cast(live, tf.float32), k=tf.maximum(count, 1))  # (B, M)
    live = tf.gather(live, anchor_ids, batch_dims=1)  # (B, M): ties kept index order above
    boxes = tf.gather(_pad_axis(boxes, 1, 1, 0.0), anchor_ids, batch_dims=1)  # (B, M, 4)
    scores = tf.gather(_pad_axis(scores, 1, 1, 0.0), anchor_ids, batch_dims=1)  # (B, M, C)
    return boxes, scores, anchor_ids, live


def _candidate_groups(scores, live, score_threshold, cross_class, threshold_on):
    """Scores per group and anchor, and which (group, anchor) pairs are candidates.

    Args:
        scores: (B, M, C) float32. live: (B, M) bool, the anchor's best score passes.

    Returns:
        group_scores (B, G, M), valid (B, G, M) bool, classes (B, G, M) int32.
    """
    if cross_class:
        num_classes = tf.shape(scores)[-1]
        best = tf.reduce_max(scores, axis=-1)  # (B, M, C) -> (B, M)
        is_best = tf.equal(scores, best[..., None])  # best (B, M) -> (B, M, 1)
        classes = tf.reduce_min(tf.where(is_best, tf.range(num_classes), num_classes),
                                axis=-1)  # (B, M): lowest class attaining the max
        return best[:, None], live[:, None], classes[:, None]  # (B, 1, M) each
    group_scores = tf.transpose(scores, [0, 2, 1])  # (B, M, C) -> (B, C, M)
    valid = live[:, None]  # (B, M) -> (B, 1, M)
    if threshold_on == "class":
        valid &= group_scores > tf.cast(score_threshold, tf.float32)  # (B, C, M)
    valid = tf.broadcast_to(valid, tf.shape(group_scores))  # (B, C, M)
    classes = tf.broadcast_to(tf.range(tf.shape(scores)[-1])[None, :, None],
                              tf.shape(group_scores))  # (C,) -> (B, C, M)
    return group_scores, valid, classes


def _top_candidates(boxes, anchor_ids, group_scores, valid, classes, top_k):
    """Each group's top K candidates by score (``tf.math.top_k`` order).

    K = min(top_k, the largest candidate count of any group), at least 1: no row is longer
    than it needs to be.

    Args:
        boxes: (B, M, 4). anchor_ids: (B, M) int32. group_scores, classes: (B, G, M).
        valid: (B, G, M) bool.

    Returns:
        dict boxes (B, G, K, 4), scores (B, G, K), valid (B, G, K) bool (valid entries first),
        indices (B, G, K) int32 into N and classes (B, G, K) int32, -1 where not valid.
    """
    count = tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=2))
    k = tf.clip_by_value(count, 1, top_k)  # <= M, as M >= max(count, 1)
    _, order = tf.math.top_k(_rank_key(group_scores, valid), k=k, sorted=True)  # (B, G, K)
    valid = tf.gather(valid, order, batch_dims=2)  # (B, G, K)
    top_boxes = tf.gather(boxes, order, batch_dims=1)  # (B, G, K) -> (B, G, K, 4)
    return {
        "boxes": tf.where(valid[..., None], top_boxes, 0.0),  # valid (B, G, K) -> (B, G, K, 1)
        "scores": tf.where(valid, tf.gather(group_scores, order, batch_dims=2), 0.0),
        "valid": valid,
        "indices": tf.where(valid, tf.gather(anchor_ids, order, batch_dims=1), -1),
        "classes": tf.where(valid, tf.gather(classes, order, batch_dims=2), -1),
    }


def _iou_matrix(boxes):
    """(..., K, 4) -> (..., K, K) IoU; bit-equal to ``ops.boxes.pairwise_iou(boxes, boxes)``.

    The same float32 operations on (..., K) coordinate vectors instead of (..., K, K, 2)
    corner tensors, which is several times faster for K = 200.
    """
    # slices, not tf.unstack (LiteRT's Unpack rejects the empty blocks of ``_fast_keep``), and
    # expand_dims, not v[..., None] (LiteRT has no builtin StridedSlice with a new axis)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))  # (..., K) each
    area = tf.maximum(x2 - x1, 0.0) * tf.maximum(y2 - y1, 0.0)  # (..., K)
    col, row = (lambda v: tf.expand_dims(v, -1)), (lambda v: tf.expand_dims(v, -2))
    # col: (..., K) -> (..., K, 1); row: (..., K) -> (..., 1, K)
    w = tf.maximum(tf.minimum(col(x2), row(x2)) - tf.maximum(col(x1), row(x1)), 0.0)
    h = tf.maximum(tf.minimum(col(y2), row(y2)) - tf.maximum(col(y1), row(y1)), 0.0)
    inter = w * h  # (..., K, K)
    return tf.math.divide_no_nan(inter, col(area) + row(area) - inter)


def _keep_block(boxes, valid, iou_threshold):
    """Fast NMS on rows of sorted candidates: boxes (R, W, 4), valid (R, W) -> (R, W) bool.

    Invalid entries come last in each row: they only sit above other invalid entries, whose
    columns the final ``valid &`` drops, so the triangle needs no row mask.
    """
    rank = tf.range(tf.shape(valid)[1])
    above = rank[:, None] < rank[None, :]  # (W, W): triu(diagonal=1), row ranked above column
    iou_max = tf.reduce_max(tf.where(above, _iou_matrix(boxes), 0.0), axis=1)  # (R, W)
    return valid & (iou_max <= tf.cast(iou_threshold, tf.float32))


def _bucket_widths(top_k):
    """Block widths 8, 11, 16, 23, 32, ... (steps of sqrt(2)) below ``top_k``, then ``top_k``."""
    widths = [8]
    while round(widths[-1] * 2 ** 0.5) < top_k:
        widths.append(round(widths[-1] * 2 ** 0.5))
    return [w for w in widths if w < top_k] + [top_k]


def _fast_keep(boxes, valid, iou_threshold, top_k):
    """Fast NMS on sorted candidates: (B, G, K) bool, True where a candidate survives.

    Args: boxes (B, G, K, 4); valid (B, G, K) bool, a prefix of each group.

    Each group is computed on a block as wide as its candidate count rounded up to the next
    ``_bucket_widths`` entry (valid entries come first), so that the many nearly empty
    classes do not each cost a K x K matrix; groups without a candidate cost nothing.
    """
    shape = tf.shape(valid)
    rows, width = shape[0] * shape[1], shape[2]
    valid = tf.reshape(valid, [rows, width])  # (B, G, K) -> (B*G, K)
    boxes = tf.reshape(boxes, [rows, width, 4])  # (B, G, K, 4) -> (B*G, K, 4)
    counts = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)  # (B*G,)
    keep = tf.zeros([rows, width], tf.int32)
    lower = 0
    for upper in _bucket_widths(top_k):
        live = tf.where((counts > lower) & (counts <= upper))  # (R, 1) rows of this bucket
        cols = tf.minimum(width, upper)
        block = _keep_block(tf.gather_nd(boxes, live)[:, :cols],  # (R, W, 4)
                            tf.gather_nd(valid, live)[:, :cols], iou_threshold)  # (R, W)
        block = tf.pad(tf.cast(block, tf.int32), [[0, 0], [0, width - cols]])  # (R, K)
        keep += tf.scatter_nd(live, block, [rows, width])  # each row is in one bucket
        lower = upper
    return tf.reshape(keep > 0, shape)  # (B*G, K) -> (B, G, K)


def _top_of_image(key, limit):
    """(B, G, K) bool: the ``limit`` largest keys of each image (``tf.math.top_k`` order)."""
    shape = tf.shape(key)
    batch, flat = shape[0], shape[1] * shape[2]
    _, top = tf.math.top_k(tf.reshape(key, [batch, flat]), k=tf.minimum(limit, flat))  # (B, L)
    images = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(top))  # (B, L)
    marks = tf.scatter_nd(tf.stack([images, top], -1), tf.ones_like(top), [batch, flat])
    return tf.reshape(marks > 0, shape)  # (B, G*K) -> (B, G, K)


def _lazy_fast_keep(candidates, iou_threshold, top_k, max_detections):
    """``_fast_keep`` on the candidates that can reach the output; (B, G, K) bool.

    A candidate's fate depends only on the candidates ranked above it in its group, and
    survivors come out in score order: once D survive among an image's L best candidates
    (over all groups, a prefix of each group), the others cannot be output. So L starts at
    2D and doubles until every image has D survivors or all its candidates are in.
    """
    valid = candidates["valid"]
    key = _rank_key(candidates["scores"], valid)  # (B, G, K)
    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32), axis=[1, 2])  # (B,)

    def keep_top(limit):
        top = valid & _top_of_image(key, limit)  # (B, G, K), a prefix of each group
        return _fast_keep(candidates["boxes"], top, iou_threshold, top_k)

    def short(limit, keep):
        survivors = tf.reduce_sum(tf.cast(keep, tf.int32), axis=[1, 2])  # (B,)
        return tf.reduce_any((survivors < max_detections) & (num_valid > limit))

    limit = tf.constant(2 * max_detections)
    _, keep = tf.while_loop(short, lambda limit, _: (2 * limit, keep_top(2 * limit)),
                            (limit, keep_top(limit)))
    return keep


def _standard_order(candidates, iou_threshold, max_detections):
    """Greedy per-group NMS on the same candidates: (B, D) positions into G * K, (B,) counts."""
    shape = tf.shape(candidates["scores"])
    batch, flat = shape[0], shape[1] * shape[2]
    group_ids = tf.broadcast_to(tf.range(shape[1])[None, :, None], shape)  # (B, G, K)
    return nms_ops.batched_nms(
        tf.reshape(candidates["boxes"], [batch, flat, 4]),  # (B, G, K, 4) -> (B, G*K, 4)
        tf.reshape(candidates["scores"], [batch, flat]),  # (B, G, K) -> (B, G*K)
        tf.reshape(group_ids, [batch, flat]),  # (B, G, K) -> (B, G*K)
        iou_threshold, max_detections,
        valid=tf.reshape(candidates["valid"], [batch, flat]),  # (B, G, K) -> (B, G*K)
        method="per_class")  # (B, D) into G*K, decreasing score, -1 padded; (B,)


def _fast_order(candidates, keep, max_detections):
    """Top D survivors over all groups: (B, D) positions into G * K (-1 padded), (B,) counts."""
    shape = tf.shape(keep)
    batch, flat = shape[0], shape[1] * shape[2]
    key = tf.reshape(_rank_key(candidates["scores"], keep), [batch, flat])  # (B, G*K)
    key = _pad_axis(key, 1, max_detections, float("-inf"))  # (B, max(G*K, D))
    flat_keep = _pad_axis(tf.reshape(keep, [batch, flat]), 1, max_detections, False)
    _, positions = tf.math.top_k(key, k=max_detections, sorted=True)  # (B, D)
    kept = tf.gather(flat_keep, positions, batch_dims=1)  # (B, D); survivors come first
    return tf.where(kept, positions, -1), tf.reduce_sum(tf.cast(kept, tf.int32), axis=1)


def _gather_rows(values, positions, pad_value):
    """values (B, G, K, ...) flattened to (B, G*K, ...) at positions (B, D), -1 -> pad."""
    trailing = values.shape[3:].as_list()  # static: [4] for boxes, [] otherwise
    flat = tf.reshape(values, [tf.shape(values)[0], -1] + trailing)  # (B, G*K, ...)
    rows = tf.gather(flat, tf.maximum(positions, 0), batch_dims=1)  # (B, D, ...)
    kept = tf.reshape(positions >= 0, [tf.shape(positions)[0], positions.shape[1]]
                      + [1] * len(trailing))  # (B, D) -> (B, D, 1...)
    return tf.where(kept, rows, tf.cast(pad_value, values.dtype))


def _check_args(boxes, scores, method, threshold_on, top_k, max_detections):
    """Validates the static arguments; returns float32 boxes (B, N, 4) and scores (B, N, C)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if threshold_on not in THRESHOLD_ON:
        raise ValueError(f"threshold_on must be one of {THRESHOLD_ON}, got {threshold_on!r}")
    for name, value in (("top_k", top_k), ("max_detections", max_detections)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a Python int >= 1, got {value!r}")
    boxes = tf.cast(boxes, tf.float32)  # bfloat16 head outputs included
    scores = tf.cast(scores, tf.float32)
    if scores.shape.rank != 3 or scores.shape[-1] is None:
        raise ValueError(f"scores must be (B, N, C) with a static C, got {scores.shape}")
    return boxes, scores


def fast_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.05, top_k=200,
             max_detections=100, cross_class=False, threshold_on="anchor", method="fast"):
    """YOLACT's Fast NMS per image and class, then the top D (see the module docstring).

    Args:
        boxes: (B, N, 4) float32 xyxy boxes, one per anchor shared by all classes.
        scores: (B, N, C) foreground class scores, finite (background column removed).
        iou_threshold: a candidate survives when its max IoU with the candidates ranked above
            it in its group (suppressed or not) is ``<= iou_threshold`` (0.5).
        score_threshold: the score gate (0.05), ``> score_threshold`` passes; what it gates
            is ``threshold_on``'s.
        top_k: Python int K, candidates per class (per image when ``cross_class``) (200).
        max_detections: Python int D, output rows per image (100).
        cross_class: one group per image over each anchor's best class (``cc_fast_nms``).
        threshold_on: "anchor" (default, YOLACT's ``Detect``: an anchor whose best score
            passes enters with ALL its class scores, so low ones can be returned) or "class"
            (each (anchor, class) score is gated on its own: every returned score passes).
            No effect with ``cross_class`` (an anchor's one candidate is its best score).
        method: "fast" (Fast NMS) or "standard" (greedy NMS on the same candidates).

    Returns:
        dict boxes (B, D, 4) float32, scores (B, D) float32, classes (B, D) int32 (0-based into
        C, -1 padding), indices (B, D) int32 into N (-1 padding), num_detections (B,) int32;
        rows in decreasing score order, real rows first.
    """
    boxes, scores = _check_args(boxes, scores, method, threshold_on, top_k, max_detections)
    boxes, scores, anchor_ids, live = _compact_anchors(boxes, scores, score_threshold)
    group_scores, valid, classes = _candidate_groups(scores, live, score_threshold, cross_class,
                                                     threshold_on)  # (B, G, M) each
    candidates = _top_candidates(boxes, anchor_ids, group_scores, valid, classes,
                                 top_k)  # (B, G, K, ...)
    if method == "fast":
        keep = _lazy_fast_keep(candidates, iou_threshold, top_k, max_detections)  # (B, G, K)
        positions, num_detections = _fast_order(candidates, keep, max_detections)
    else:
        positions, num_detections = _standard_order(candidates, iou_threshold, max_detections)
    return {
        "boxes": _gather_rows(candidates["boxes"], positions, 0.0),  # (B, D, 4)
        "scores": _gather_rows(candidates["scores"], positions, 0.0),  # (B, D)
        "classes": _gather_rows(candidates["classes"], positions, -1),  # (B, D)
        "indices": _gather_rows(candidates["indices"], positions, -1),  # (B, D)
        "num_detections": num_detections,  # (B,)
    }


def standard_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.05, top_k=200,
                 max_detections=100, cross_class=False, threshold_on="anchor"):
    """``fast_nms`` with greedy NMS in place of Fast NMS: the same candidates, per-class
    (or cross-class) greedy NMS (IoU ``> iou_threshold`` suppresses), then the top D.
    Same arguments and outputs as ``fast_nms``."""
    return fast_nms(boxes, scores, iou_threshold, score_threshold, top_k, max_detections,
                    cross_class, threshold_on, method="standard")
