"""Mask R-CNN training losses (He et al. 2017, section 3 "Multi-task loss"; Faster R-CNN section
3.1.2 for the RPN): RPN, Fast R-CNN box head, mask head, keypoint head.

Shape shorthand:
    B  batch size
    N  anchors per image (all FPN levels concatenated)
    R  RoIs per image (sampled, padded to a fixed count)
    K  classes including background (box/mask heads; K = 1 for class-agnostic mask logits)
    Kp keypoints per instance (17 for COCO persons)
    S  mask / heatmap size (28 for masks, 56 for keypoints)

Conventions pinned here (tests/losses/test_losses.py checks each against torchvision's
``RegionProposalNetwork.compute_loss``, ``roi_heads.fastrcnn_loss``, ``maskrcnn_loss`` and
``keypointrcnn_loss``):
    * Every loss is a pure function of batched, padded tensors returning float32 scalars.
      Inputs are cast to float32 first, so mixed-precision heads keep the losses in float32.
    * Padding / ignored entries are marked in the label tensors (-1, or ``valid=False``) and
      contribute exactly nothing: their inputs are replaced by zeros before any arithmetic
      (a NaN or Inf target in a padding row leaves both the loss and the gradient finite).
    * Each loss is ``sum of per-element losses / normaliser``. The normaliser is a count
      (sampled anchors, valid RoIs, positive RoIs, valid keypoints); by default the local
      count of this batch, which reproduces torchvision's means. Pass the count summed over
      all replicas (e.g. ``tf.distribute.get_replica_context().all_reduce("SUM", n)``) to get
      this replica's share: then the SUM over replicas of the per-replica losses (and of
      their gradients, which is what MirroredStrategy all-reduces) equals the single-device
      loss of the whole global batch. Do NOT divide that share by ``num_replicas_in_sync``
      again.
    * A zero normaliser gives a loss of 0 (torchvision returns NaN for the RPN/box losses of
      an empty sample and ``logits.sum() * 0`` for the mask/keypoint losses); the gradient is
      then defined and zero, never NaN.
    * Smooth L1 is ``torch.nn.functional.smooth_l1_loss``: 0.5 x^2 / beta for |x| < beta,
      |x| - 0.5 beta otherwise; beta = 0 is plain L1. torchvision uses beta = 1/9 for the RPN
      and the box head.
"""
import tensorflow as tf

from keras_maskrcnn.losses.common import masked_sum, normaliser, smooth_l1


def rpn_losses(objectness_logits, box_deltas, labels, box_targets, beta=1.0 / 9,
               num_sampled=None):
    """RPN objectness and box-regression losses over the sampled anchors.

    Args:
        objectness_logits: (B, N) float logits.
        box_deltas: (B, N, 4) float predicted deltas (dx, dy, dw, dh).
        labels: (B, N) int, 1 sampled positive, 0 sampled negative, -1 not sampled
            (ignored, between thresholds, or padding).
        box_targets: (B, N, 4) float encoded targets; only read where ``labels == 1``.
        beta: Python float, smooth L1 beta (torchvision: 1/9).
        num_sampled: optional scalar count of sampled anchors (labels >= 0) over the global
            batch (all replicas); default: the count in ``labels``.

    Returns:
        objectness_loss: float32 scalar, sum of BCE-with-logits over sampled anchors /
            num_sampled.
        box_loss: float32 scalar, sum of smooth L1 over the 4 deltas of positive anchors /
            num_sampled (not / positives).

    Convention: torchvision ``RegionProposalNetwork.compute_loss`` on the whole batch (its
    sampled anchors of all images pooled into one mean).
    """
    logits = tf.cast(objectness_logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    sampled = labels >= 0  # (B, N)
    positive = labels > 0  # (B, N)
    count = normaliser(num_sampled, tf.reduce_sum(tf.cast(sampled, tf.float32)))
    targets = tf.cast(positive, tf.float32)  # 1 for positives, 0 for negatives and ignored
    safe_logits = tf.where(sampled, logits, tf.zeros_like(logits))
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=safe_logits)
    objectness_loss = tf.math.divide_no_nan(masked_sum(bce, sampled), count)
    box_sum = _regression_sum(box_deltas, box_targets, positive, beta)
    return objectness_loss, tf.math.divide_no_nan(box_sum, count)


def _regression_sum(box_deltas, box_targets, positive, beta):
    """Sum of smooth L1 over (..., 4) residuals where ``positive`` (...) is True."""
    deltas = tf.cast(box_deltas, tf.float32)
    targets = tf.cast(box_targets, tf.float32)
    mask = positive[..., None]  # (...) -> (..., 1), broadcast over the 4 coordinates
    deltas = tf.where(mask, deltas, tf.zeros_like(deltas))  # sanitise before subtracting
    targets = tf.where(mask, targets, tf.zeros_like(targets))
    return masked_sum(smooth_l1(deltas - targets, beta), mask)


def fastrcnn_losses(class_logits, box_deltas, roi_classes, box_targets, beta=1.0 / 9,
                    num_rois=None):
    """Box-head classification and class-specific box-regression losses.

    Args:
        class_logits: (B, R, K) float logits, class 0 = background.
        box_deltas: (B, R, K, 4) float class-specific deltas, or (B, R, 1, 4) class-agnostic
            (then every positive RoI uses row 0).
        roi_classes: (B, R) int, GT class of each sampled RoI: 0 background, > 0 foreground,
            -1 padding / ignored.
        box_targets: (B, R, 4) float encoded targets (weights 10, 10, 5, 5 in torchvision);
            only read for foreground RoIs.
        beta: Python float, smooth L1 beta (torchvision: 1/9).
        num_rois: optional scalar count of valid RoIs (roi_classes >= 0) over the global
            batch; default: the local count.

    Returns:
        classification_loss: float32 scalar, sum of softmax cross entropy over valid RoIs /
            num_rois.
        box_loss: float32 scalar, sum of smooth L1 over the GT class's 4 deltas of foreground
            RoIs / num_rois.

    Convention: torchvision ``roi_heads.fastrcnn_loss`` on the concatenated valid RoIs.
    """
    logits = tf.cast(class_logits, tf.float32)
    roi_classes = tf.cast(roi_classes, tf.int32)
    valid = roi_classes >= 0  # (B, R)
    positive = roi_classes > 0  # (B, R)
    count = normaliser(num_rois, tf.reduce_sum(tf.cast(valid, tf.float32)))
    safe_classes = tf.maximum(roi_classes, 0)  # (B, R), padding -> 0 (masked out below)
    safe_logits = tf.where(valid[..., None], logits, tf.zeros_like(logits))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_classes,
                                                        logits=safe_logits)  # (B, R)
    classification_loss = tf.math.divide_no_nan(masked_sum(ce, valid), count)
    deltas = tf.convert_to_tensor(box_deltas)
    if deltas.shape[2] == 1:  # class-agnostic regression
        deltas = deltas[:, :, 0]  # (B, R, 1, 4) -> (B, R, 4)
    else:
        deltas = tf.gather(deltas, safe_classes, axis=2, batch_dims=2)  # (B, R, 4): GT class
    box_sum = _regression_sum(deltas, box_targets, positive, beta)
    return classification_loss, tf.math.divide_no_nan(box_sum, count)


def mask_loss(mask_logits, mask_targets, roi_classes, num_positives=None):
    """Mask-head loss: per-pixel BCE-with-logits on the GT class's channel of positive RoIs.

    Args:
        mask_logits: (B, R, S, S, K) float logits (channels last); K = 1 for class-agnostic
            masks (then channel 0 is used for every class).
        mask_targets: (B, R, S, S) float targets in [0, 1] (e.g. from
            ``ops.project_masks_on_boxes``); only read for positive RoIs.
        roi_classes: (B, R) int, > 0 positive (the GT class), 0 background, -1 padding; only
            positive RoIs contribute.
        num_positives: optional scalar count of positive RoIs over the global batch;
            default: the local count. The normaliser is num_positives * S * S.

    Returns:
        float32 scalar: sum of per-pixel BCE over positive RoIs / (num_positives * S * S),
        i.e. torchvision ``maskrcnn_loss``'s mean over all pixels of all positive RoIs; 0
        with a zero gradient when there are no positives (torchvision: ``logits.sum() * 0``).
    """
    logits = tf.cast(mask_logits, tf.float32)
    roi_classes = tf.cast(roi_classes, tf.int32)
    positive = roi_classes > 0  # (B, R)
    size = tf.cast(tf.shape(logits)[2] * tf.shape(logits)[3], tf.float32)  # S * S
    count = normaliser(num_positives, tf.reduce_sum(tf.cast(positive, tf.float32)))
    if logits.shape[-1] == 1:  # class-agnostic
        logits = logits[..., 0]  # (B, R, S, S, 1) -> (B, R, S, S)
    else:
        channel = tf.maximum(roi_classes, 0)  # (B, R)
        logits = tf.gather(logits, channel, axis=4, batch_dims=2)  # (B, R, S, S): GT channel
    mask = positive[:, :, None, None]  # (B, R) -> (B, R, 1, 1), broadcast over pixels
    logits = tf.where(mask, logits, tf.zeros_like(logits))  # sanitise non-positives
    targets = tf.cast(mask_targets, tf.float32)
    targets = tf.where(mask, targets, tf.zeros_like(targets))
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.math.divide_no_nan(masked_sum(bce, mask), count * size)


def keypoint_loss(keypoint_logits, keypoint_targets, keypoint_valid, num_valid=None):
    """Keypoint-head loss: softmax cross entropy over the S * S heatmap positions.

    Args:
        keypoint_logits: (B, R, S, S, Kp) float heatmap logits (channels last, rows = y).
        keypoint_targets: (B, R, Kp) int flat index y * S + x of the GT cell (as returned by
            ``ops.keypoints_to_heatmap``); only read where valid.
        keypoint_valid: (B, R, Kp) bool, True for a labelled keypoint inside its RoI's
            heatmap. The caller must pass False for every keypoint of non-positive RoIs
            (torchvision computes targets for positive RoIs only) and for padding RoIs.
        num_valid: optional scalar count of valid keypoints over the global batch; default:
            the local count.

    Returns:
        float32 scalar: sum of cross entropies over valid keypoints / num_valid, torchvision
        ``keypointrcnn_loss``'s mean; 0 with a zero gradient when none is valid (torchvision:
        ``logits.sum() * 0``).
    """
    logits = tf.cast(keypoint_logits, tf.float32)
    valid = tf.cast(keypoint_valid, tf.bool)
    shape = tf.shape(logits)
    logits = tf.transpose(logits, [0, 1, 4, 2, 3])  # (B, R, S, S, Kp) -> (B, R, Kp, S, S)
    num_cells = shape[2] * shape[3]  # S * S (explicit: -1 cannot be inferred when R = 0)
    flat_shape = tf.concat([shape[:2], shape[4:], [num_cells]], 0)
    logits = tf.reshape(logits, flat_shape)  # (B, R, Kp, S, S) -> (B, R, Kp, S * S)
    targets = tf.cast(keypoint_targets, tf.int32)
    targets = tf.where(valid, tf.clip_by_value(targets, 0, num_cells - 1), 0)  # (B, R, Kp)
    count = normaliser(num_valid, tf.reduce_sum(tf.cast(valid, tf.float32)))
    logits = tf.where(valid[..., None], logits, tf.zeros_like(logits))  # sanitise invalid
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets,
                                                        logits=logits)  # (B, R, Kp)
    return tf.math.divide_no_nan(masked_sum(ce, valid), count)
