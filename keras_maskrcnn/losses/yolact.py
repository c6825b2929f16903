"""YOLACT training losses (Bolya et al. 2019, section 3 and section 3.1 "Mask Assembly" /
"Losses"; section 3.3 for the semantic segmentation loss): class confidence with hard
negatives, box regression, prototype mask loss, semantic segmentation.

Conventions pinned here (tests/losses/test_losses_yolact.py against NumPy transcriptions of the
reference's ``MultiBoxLoss`` with ``yolact_base_config``):
    * Every loss returns a float32 scalar; inputs are cast to float32 first (mixed precision).
      Padding GT rows and non-positive anchors contribute nothing, and zero positives give 0
      with a zero gradient (the reference divides by 0 there).
    * Class, box and mask losses are sums divided by the number of positive anchors in the
      batch; pass ``num_positives`` (e.g. summed over replicas) to override the local count.
      The semantic loss is divided by the number of images (``num_images``, default B).
    * Class: softmax cross entropy over positives and hard negatives (``hard_negative_mask``,
      3 per positive of the image), weight 1. Box: smooth L1 (beta 1) over the 4 SSD deltas of
      positives, weight 1.5.
    * Mask: one mask per positive anchor, logits = prototypes @ its coefficients, cropped by
      its matched GT box in prototype pixels (``crop_region``, padding 1); per-pixel binary
      cross entropy against the GT mask downsampled to prototype size and binarised. As the
      reference (``BCE(clamp(sigmoid * crop, 0, 1))``), a cropped-out pixel has probability 0
      and costs 100 (torch's log clamp) where the target is 1; every log term is clamped at
      -100. Each mask's sum is divided by its GT box width x height in prototype pixels
      (0 for a degenerate box instead of inf), weight 6.125. At most ``max_masks`` (100)
      positives per image: when an image has more, a seeded random subset, its sum scaled by
      (positives / max_masks).
    * Semantic: BCE with logits of the segmentation map against, per class, the max of the
      downsampled binarised GT masks of that class (crowds and padding left out), summed and
      divided by Hs * Ws, weight 1.
    * Class ids: labels / gt_classes are contiguous ids >= 1 (the reference's label + 1);
      segmentation channel c is class c + 1.

Shape shorthand:
    B  batch size
    N  anchors per image
    K  classes including background (class 0)
    M  GT rows per image (padded with class -1)
    P  masks trained per image (max_masks)
    Hp, Wp, k  prototype size and count; Hs, Ws segmentation map size; H, W input size
"""
import tensorflow as tf

from keras_maskrcnn.losses.common import masked_sum, normaliser, smooth_l1
from keras_maskrcnn.ops.dense_matching import hard_negative_mask
from keras_maskrcnn.ops.prototype_masks import (assemble_mask_logits, crop_region,
                                                downsample_gt_masks)

#: torch's BCELoss clamps each log term at -100.
LOG_CLAMP = 100.0


def _positive_count(labels, num_positives):
    return normaliser(num_positives, tf.reduce_sum(tf.cast(labels > 0, tf.float32)))


def yolact_class_loss(class_logits, labels, negpos_ratio=3, num_positives=None, weight=1.0):
    """Softmax cross entropy over positive anchors and mined hard negatives.

    Args:
        class_logits: (B, N, K) float logits, class 0 = background.
        labels: (B, N) int from ``match_anchors``: class > 0, 0 background, -1 neutral.
        negpos_ratio: Python int (3).
        num_positives: optional scalar, positives of the global batch.
        weight: Python float (conf_alpha 1).
    Returns:
        float32 scalar: weight x sum of CE / num_positives.
    """
    logits = tf.cast(class_logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    positive = labels > 0
    used = tf.logical_or(positive, hard_negative_mask(logits, labels, negpos_ratio))  # (B, N)
    targets = tf.where(positive, labels, 0)  # (B, N): hard negatives learn background
    safe_logits = tf.where(used[..., None], logits, 0.0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=safe_logits)
    return tf.math.divide_no_nan(weight * masked_sum(ce, used),
                                 _positive_count(labels, num_positives))


def yolact_box_loss(box_deltas, box_targets, labels, num_positives=None, weight=1.5, beta=1.0):
    """Smooth L1 over the SSD deltas of positive anchors.

    Args:
        box_deltas: (B, N, 4) float predicted deltas.
        box_targets: (B, N, 4) float targets from ``match_anchors`` (read where labels > 0).
        labels: (B, N) int.
        num_positives: optional scalar, positives of the global batch.
        weight: Python float (bbox_alpha 1.5). beta: smooth L1 beta (1).
    Returns:
        float32 scalar: weight x sum of smooth L1 / num_positives.
    """
    positive = (tf.cast(labels, tf.int32) > 0)[..., None]  # (B, N, 1)
    deltas = tf.where(positive, tf.cast(box_deltas, tf.float32), 0.0)  # sanitise first
    targets = tf.where(positive, tf.cast(box_targets, tf.float32), 0.0)
    total = masked_sum(smooth_l1(deltas - targets, beta), positive)
    return tf.math.divide_no_nan(weight * total, _positive_count(labels, num_positives))


def select_mask_anchors(labels, max_masks=100, seed=(0, 0)):
    """The positive anchors whose masks are trained: all, or a random ``max_masks`` of them.

    Args:
        labels: (B, N) int, > 0 positive.
        max_masks: Python int P (masks_to_train 100).
        seed: shape-(2,) int, stateless random seed (vary it per step).
    Returns:
        indices: (B, P) int32 anchor indices, -1 padding (positives first, random order).
        scale: (B,) float32, num_positives / P where an image has more than P, else 1.
    """
    positive = tf.cast(labels, tf.int32) > 0
    count = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # (B,)
    keys = tf.random.stateless_uniform(tf.shape(positive), seed=tf.cast(seed, tf.int64),
                                       minval=0, maxval=2**62, dtype=tf.int64)  # (B, N)
    keys = tf.where(positive, keys, -1)  # non-positives last
    pad = tf.fill(tf.stack([tf.shape(keys)[0], max_masks]), tf.constant(-1, tf.int64))
    _, order = tf.math.top_k(tf.concat([keys, pad], 1), k=max_masks)  # (B, P), N + P >= P
    slot = tf.range(max_masks)[None, :]
    indices = tf.where(slot < count[:, None], order, -1)  # (B, P)
    scale = tf.where(count > max_masks, tf.cast(count, tf.float32) / float(max_masks), 1.0)
    return tf.cast(indices, tf.int32), scale


def _mask_bce(logits, targets, inside):
    """Per-pixel BCE of sigmoid(logits) cropped to ``inside``, torch's -100 log clamp."""
    loss_in = (targets * tf.minimum(tf.nn.softplus(-logits), LOG_CLAMP)
               + (1.0 - targets) * tf.minimum(tf.nn.softplus(logits), LOG_CLAMP))
    return tf.where(inside, loss_in, LOG_CLAMP * targets)  # cropped-out: probability 0


def yolact_mask_loss(prototypes, coefficients, labels, matched_gt, gt_boxes, gt_masks,
                     num_positives=None, max_masks=100, seed=(0, 0), weight=6.125):
    """Prototype mask loss of the positive anchors (conventions in the module docstring).

    Args:
        prototypes: (B, Hp, Wp, k) float.
        coefficients: (B, N, k) float mask coefficients (after tanh).
        labels: (B, N) int; matched_gt: (B, N) int GT row per anchor (``match_anchors``).
        gt_boxes: (B, M, 4) float xyxy pixels of the input (H, W); gt_masks: (B, M, H, W) 0/1.
        num_positives: optional scalar, positives of the global batch.
        max_masks, seed: see ``select_mask_anchors`` (the same seed gives the same subset);
        weight: Python float (mask_alpha 6.125).
    Returns:
        float32 scalar.
    """
    protos = tf.cast(prototypes, tf.float32)
    labels = tf.cast(labels, tf.int32)
    proto_h, proto_w = tf.shape(protos)[1], tf.shape(protos)[2]
    image_h = tf.cast(tf.shape(gt_masks)[2], tf.float32)
    image_w = tf.cast(tf.shape(gt_masks)[3], tf.float32)
    indices, scale = select_mask_anchors(labels, max_masks, seed)  # (B, P), (B,)
    valid = indices >= 0  # (B, P)
    safe = tf.maximum(indices, 0)
    coefs = tf.gather(tf.cast(coefficients, tf.float32), safe, batch_dims=1)  # (B, P, k)
    rows = tf.where(valid, tf.gather(tf.cast(matched_gt, tf.int32), safe, batch_dims=1), 0)
    boxes = tf.gather(tf.cast(gt_boxes, tf.float32), rows, batch_dims=1)  # (B, P, 4)
    boxes = tf.where(valid[..., None], boxes, 0.0)  # sanitise padding
    size = tf.cast(tf.stack([proto_w, proto_h, proto_w, proto_h]), tf.float32)
    boxes = boxes / tf.stack([image_w, image_h, image_w, image_h]) * size  # prototype pixels
    targets = downsample_gt_masks(gt_masks, tf.stack([proto_h, proto_w]))  # (B, M, Hp, Wp)
    targets = tf.gather(targets, rows, batch_dims=1)  # (B, P, Hp, Wp)
    logits = assemble_mask_logits(protos, coefs)  # (B, P, Hp, Wp)
    inside = crop_region(boxes, proto_h, proto_w)  # (B, P, Hp, Wp)
    per_mask = tf.reduce_sum(_mask_bce(logits, targets, inside), axis=[2, 3])  # (B, P)
    box_area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (B, P)
    per_mask = tf.math.divide_no_nan(per_mask, box_area) * scale[:, None]
    total = weight * masked_sum(per_mask, valid)
    return tf.math.divide_no_nan(total, _positive_count(labels, num_positives))


def yolact_semantic_loss(segmentation_logits, gt_masks, gt_classes, gt_is_crowd=None,
                         num_images=None, weight=1.0):
    """Semantic segmentation loss on the P3-size map (conventions in the module docstring).

    Args:
        segmentation_logits: (B, Hs, Ws, K - 1) float logits, channel c = class c + 1.
        gt_masks: (B, M, H, W) 0/1; gt_classes: (B, M) int, padding <= 0.
        gt_is_crowd: optional (B, M) bool, left out of the targets.
        num_images: optional scalar, images of the global batch (default B).
        weight: Python float (semantic_segmentation_alpha 1).
    Returns:
        float32 scalar: weight x sum of BCE / (Hs * Ws) / num_images.
    """
    logits = tf.cast(segmentation_logits, tf.float32)
    shape = tf.shape(logits)
    classes = tf.cast(gt_classes, tf.int32)
    keep = classes > 0  # (B, M)
    if gt_is_crowd is not None:
        keep = tf.logical_and(keep, ~tf.cast(gt_is_crowd, tf.bool))
    one_hot = tf.one_hot(tf.where(keep, classes - 1, -1), shape[3])  # (B, M, C); -1 -> zeros
    masks = downsample_gt_masks(gt_masks, shape[1:3])  # (B, M, Hs, Ws)
    targets = tf.minimum(tf.einsum("bmc,bmhw->bhwc", one_hot, masks), 1.0)  # max over GT
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    images = normaliser(num_images, shape[0])
    pixels = tf.cast(shape[1] * shape[2], tf.float32)
    return tf.math.divide_no_nan(weight * tf.reduce_sum(bce) / pixels, images)
