"""SSD-style dense anchor matching and online hard negative mining, as YOLACT trains its
one-stage head (SSD, Liu et al. 2016, section 2.2 "Matching strategy" and "Hard negative
mining"; YOLACT, Bolya et al. 2019, section 3 and its reference ``match`` / ``ohem_conf_loss``).

Conventions pinned here (tests/ops/test_dense_matching.py compares with NumPy loop transcriptions
of the reference's ``match`` and ``ohem_conf_loss``):
    * IoU >= pos_threshold (0.5) positive, < neg_threshold (0.4) background, in between
      neutral (label -1). Every non-crowd GT is forced onto its best anchor in the reference's
      greedy order: repeatedly pick the GT whose best remaining anchor has the highest IoU,
      give it that anchor (IoU set to 2, never thresholded), and remove both the anchor and the
      GT from further picks. Ties go to the lowest index (GT and anchor), like torch's max.
    * Each anchor's GT before forcing is its highest-IoU non-crowd GT (lowest index on ties).
    * Crowd GT (``gt_is_crowd``) are never matched; a non-positive anchor whose intersection
      with a crowd box divided by the ANCHOR's area exceeds crowd_iou_threshold (0.7) becomes
      neutral. A threshold >= 1 switches the rule off (as the reference).
    * Labels are the GT class ids (contiguous, 1..K-1 = the reference's label + 1), 0 for
      background, -1 for neutral. Box targets are SSD's encoding with variances (0.1, 0.2) =
      ``encode_boxes`` with weights (10, 10, 5, 5), no clamp; zero where the label is not
      positive (the reference encodes every anchor; only positives are ever read).
    * An image with no valid non-crowd GT is all background (the reference resamples such
      images); matching needs N >= the number of GT rows M.
    * Hard negatives: per image, the non-positive, non-neutral anchors with the largest
      background loss logsumexp(logits) - logits[0], at most negpos_ratio x num_pos of that
      image, capped at N - 1. As the reference, positives and neutrals enter the ranking with
      loss 0 and are then dropped, so fewer negatives are kept when some have loss exactly 0.
      Ties are broken by the lower anchor index (a stable sort; torch's sort leaves them
      unspecified).

Shape shorthand:
    B  batch size
    N  anchors per image (all levels concatenated)
    M  GT rows per image (padded; padding rows have class <= 0)
    K  classes including background (class 0)
"""
import tensorflow as tf

from keras_maskrcnn.ops.boxes import area, encode_boxes

#: SSD's variances (0.1, 0.2) as box-coder weights.
SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _intersection(boxes1, boxes2):
    """(B, M, 4) x (N, 4) -> (B, M, N) intersection areas of xyxy boxes."""
    gx1, gy1, gx2, gy2 = tf.unstack(boxes1[:, :, None, :], axis=-1)  # (B, M, 1) each
    ax1, ay1, ax2, ay2 = tf.unstack(boxes2, axis=-1)  # (N,) each
    # per coordinate on (B, M, N): faster on CPU than a (B, M, N, 2) broadcast (bench/README.md)
    width = tf.maximum(tf.minimum(gx2, ax2) - tf.maximum(gx1, ax1), 0.0)
    height = tf.maximum(tf.minimum(gy2, ay2) - tf.maximum(gy1, ay1), 0.0)
    return width * height


def _forced_anchors(iou, matchable):
    """The reference's forcing loop: for each GT the anchor it is forced onto, or -1.

    Each GT's best remaining anchor is among its top-min(M, N) anchors (at most M - 1 anchors
    are taken before it), so the loop runs on (B, M, M) candidates instead of (B, M, N).

    Args:
        iou: (B, M, N) float32 IoU.
        matchable: (B, M) bool, valid non-crowd GT.
    Returns:
        (B, M) int32 anchor index per GT, -1 for GT that are not matchable.
    """
    num_gt = tf.shape(iou)[1]
    k = tf.minimum(num_gt, tf.shape(iou)[2])
    cand_val, cand_idx = tf.math.top_k(iou, k=k, sorted=True)  # (B, M, k); ties: lower index
    neg_inf = tf.constant(float("-inf"), iou.dtype)

    def body(step, available, done, forced):
        first = tf.argmax(tf.cast(available, tf.int32), axis=2, output_type=tf.int32)  # (B, M)
        best_val = tf.gather(cand_val, first, batch_dims=2)  # (B, M) best remaining IoU
        best_idx = tf.gather(cand_idx, first, batch_dims=2)  # (B, M) its anchor
        score = tf.where(done, neg_inf, best_val)  # (B, M)
        gt = tf.argmax(score, axis=1, output_type=tf.int32)  # (B,) first GT on ties
        active = tf.reduce_max(score, axis=1) > neg_inf  # (B,) some GT left
        anchor = tf.gather(best_idx, gt, batch_dims=1)  # (B,)
        pick = tf.logical_and(tf.one_hot(gt, num_gt, on_value=True, off_value=False),
                              active[:, None])  # (B, M)
        forced = tf.where(pick, anchor[:, None], forced)
        taken = tf.logical_and(tf.equal(cand_idx, anchor[:, None, None]),
                               active[:, None, None])  # (B, M, k): the anchor leaves every row
        return step + 1, tf.logical_and(available, ~taken), tf.logical_or(done, pick), forced

    state = (tf.constant(0), tf.ones_like(cand_idx, tf.bool), ~matchable,
             tf.fill(tf.shape(matchable), -1))
    steps = tf.reduce_max(tf.reduce_sum(tf.cast(matchable, tf.int32), axis=1))  # padding: no step
    _, _, _, forced = tf.while_loop(lambda step, *_: step < steps, body, state)
    return forced


def _scatter_forced(forced, num_anchors):
    """(B, M) anchor per GT (-1 none) -> (B, N) GT row per anchor (-1 none)."""
    batch, num_gt = tf.shape(forced)[0], tf.shape(forced)[1]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(forced))  # (B, M)
    cols = tf.where(forced >= 0, forced, num_anchors)  # (B, M); unforced -> spare column N
    gt = tf.broadcast_to(tf.range(num_gt)[None, :], tf.shape(forced))  # (B, M)
    table = tf.fill(tf.stack([batch, num_anchors + 1]), -1)  # (B, N + 1)
    table = tf.tensor_scatter_nd_update(table, tf.stack([rows, cols], -1), gt)
    return table[:, :num_anchors]  # (B, N + 1) -> (B, N); each anchor forced at most once


def match_anchors(anchors, gt_boxes, gt_classes, gt_is_crowd=None, pos_threshold=0.5,
                  neg_threshold=0.4, crowd_iou_threshold=0.7):
    """YOLACT / SSD matching of every anchor (conventions in the module docstring).

    Args:
        anchors: (N, 4) float xyxy pixels (``yolact_anchors``).
        gt_boxes: (B, M, 4) float xyxy pixels; padding rows -1.
        gt_classes: (B, M) int, contiguous class ids >= 1; padding <= 0 (the pipeline uses -1).
        gt_is_crowd: optional (B, M) bool / 0-1 int, crowd regions (COCO ``iscrowd``).
        pos_threshold, neg_threshold, crowd_iou_threshold: Python floats (0.5, 0.4, 0.7).

    Returns:
        labels: (B, N) int32, GT class for positives, 0 background, -1 neutral.
        matched_gt: (B, N) int32 in [0, M): the GT row each anchor is assigned (for every
            anchor, as the reference's ``idx_t``; 0 in images without matchable GT).
        box_targets: (B, N, 4) float32 SSD-encoded matched boxes, 0 where labels <= 0.
    """
    anchors = tf.cast(anchors, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_classes = tf.cast(gt_classes, tf.int32)
    valid = gt_classes > 0  # (B, M)
    crowd = tf.zeros_like(valid) if gt_is_crowd is None else tf.cast(gt_is_crowd, tf.bool)
    crowd = tf.logical_and(crowd, valid)
    matchable = tf.logical_and(valid, ~crowd)  # (B, M)

    if gt_classes.shape[1] == 0:  # no GT rows at all: everything is background
        num = tf.shape(anchors)[0]
        labels = tf.zeros(tf.stack([tf.shape(gt_classes)[0], num]), tf.int32)
        return labels, labels, tf.zeros(tf.stack([tf.shape(gt_classes)[0], num, 4]))
    inter = _intersection(gt_boxes, anchors)  # (B, M, N)
    anchor_area = area(anchors)[None, None]  # (1, 1, N)
    union = area(gt_boxes)[:, :, None] + anchor_area - inter
    iou = tf.math.divide_no_nan(inter, union)  # (B, M, N), the reference's jaccard
    iou = tf.where(matchable[:, :, None], iou, -1.0)  # non-matchable rows never win
    best_gt = tf.argmax(iou, axis=1, output_type=tf.int32)  # (B, N) lowest GT on ties
    best_iou = tf.reduce_max(iou, axis=1)  # (B, N); -1 without matchable GT

    forced_gt = _scatter_forced(_forced_anchors(iou, matchable), tf.shape(anchors)[0])  # (B, N)
    forced_any = forced_gt >= 0
    matched_gt = tf.where(forced_any, forced_gt, best_gt)
    best_iou = tf.where(forced_any, 2.0, best_iou)

    labels = tf.gather(gt_classes, matched_gt, batch_dims=1)  # (B, N)
    labels = tf.where(best_iou < tf.cast(pos_threshold, tf.float32), -1, labels)
    labels = tf.where(best_iou < tf.cast(neg_threshold, tf.float32), 0, labels)
    if crowd_iou_threshold < 1:
        overlap = tf.math.divide_no_nan(inter, anchor_area)  # (B, M, N) over the anchor area
        overlap = tf.reduce_max(tf.where(crowd[:, :, None], overlap, 0.0), axis=1)  # (B, N)
        labels = tf.where(tf.logical_and(labels <= 0, overlap > crowd_iou_threshold), -1, labels)

    matched = tf.gather(gt_boxes, matched_gt, batch_dims=1)  # (B, N, 4)
    positive = (labels > 0)[..., None]  # (B, N, 1)
    matched = tf.where(positive, matched, anchors[None])  # sanitise: log() of padding rows
    box_targets = encode_boxes(matched, anchors[None], SSD_WEIGHTS)
    box_targets = tf.where(positive, box_targets, 0.0)
    return labels, matched_gt, box_targets


def hard_negative_mask(class_logits, labels, negpos_ratio=3):
    """Online hard negative mining of SSD / YOLACT (conventions in the module docstring).

    Args:
        class_logits: (B, N, K) float logits, class 0 = background.
        labels: (B, N) int, > 0 positive, 0 background, < 0 neutral.
        negpos_ratio: Python int, negatives kept per positive (3).

    Returns:
        (B, N) bool: the background anchors whose loss is used (positives not included).
    """
    logits = tf.stop_gradient(tf.cast(class_logits, tf.float32))
    labels = tf.cast(labels, tf.int32)
    positive = labels > 0
    candidate = tf.equal(labels, 0)
    background_loss = tf.reduce_logsumexp(logits, axis=-1) - logits[..., 0]  # (B, N)
    key = tf.where(candidate, background_loss, 0.0)  # positives, neutrals rank with loss 0
    order = tf.argsort(key, axis=1, direction="DESCENDING", stable=True)  # (B, N)
    rank = tf.argsort(order, axis=1, stable=True)  # (B, N): inverse permutation
    num_pos = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # (B,)
    num_neg = tf.minimum(negpos_ratio * num_pos, tf.shape(labels)[1] - 1)  # (B,)
    return tf.logical_and(rank < num_neg[:, None], candidate)
