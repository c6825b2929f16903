"""Training targets: anchor labels for the RPN, sampled RoIs with class and box targets.

Method: the RPN targets of Ren et al. 2015 (Faster R-CNN, §3.1.2: anchor labels by IoU, box
targets in the anchor's parameterisation; §3.1.3: 256 anchors per image, up to 1:1) and the
RoI targets of He et al. 2017 (Mask R-CNN, §3.1 "Training": a RoI is positive at IoU >= 0.5,
512 RoIs per image for FPN at 1:3), i.e. Girshick 2015 (Fast R-CNN, §2.3 "Mini-batch
sampling"). Mask and keypoint targets are in ``ops.masks`` and ``ops.keypoints``.

Conventions pinned here (tests/ops/test_anchor_targets.py and tests/layers/test_roi_sampler.py check
each against torchvision):
    * Anchors (``assign_anchor_targets`` / ``rpn_targets``): torchvision's
      ``assign_targets_to_anchors`` (Matcher with low-quality matches) and
      ``BalancedPositiveNegativeSampler`` counts. Images without GT: every anchor is a
      negative candidate.
    * RoI candidates (``label_candidates``) are the valid proposals followed by the valid GT
      boxes (torchvision's ``add_gt_proposals``); padded GT rows and invalid proposals are
      never candidates. Each candidate is matched to the valid GT of highest IoU
      (``ops.matching.match_boxes``, torchvision's Matcher): IoU >= fg threshold -> the GT's
      class; IoU < bg threshold -> background (0); in between -> ignored (never sampled).
      Images without valid GT: every candidate is background.
    * Balanced sampling (``ops.matching.sample_balanced``): min(int(S * positive_fraction), #fg)
      positives and min(S - #pos, #bg) negatives, uniformly at random; sampled positives come
      first, then negatives, then padding (torchvision returns the sample in candidate-index
      order; only the set and the counts are comparable).
    * Regression targets: ``encode_boxes(matched GT, roi, box_weights)`` for positives, zeros
      for background and padding (torchvision encodes negatives against GT 0 too; the box loss
      never reads them).
    * Randomness is stateless: every sampler takes a (2,) seed; ``replica_seed`` folds the
      tf.distribute replica id into it so that replicas draw independently.
    * No gradient flows into the RoIs or the targets (``stop_gradient``).

Shape shorthand:
    B  batch size
    N  anchors per image (RPN), or candidates per image = P + M (RoIs)
    P  proposals per image (padded; ``proposal_valid`` flags the real ones)
    M  GT boxes per image (padded with -1; a GT row is valid where ``gt_classes > 0``)
    R  sampled anchors per image (``batch_size_per_image`` of the RPN)
    S  sampled RoIs per image (``batch_size_per_image``, static)
    F  foreground slots (S * positive_fraction); F' those in use (dynamic)
"""
import tensorflow as tf

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import matching
from keras_maskrcnn.ops.matching import gather_or_pad

#: int64 stride between replicas in the second seed word (the per-call counter stays below).
_REPLICA_SEED_STRIDE = 2**32


# ------------------------------------------------------------------------------ RPN anchors
def assign_anchor_targets(anchors, gt_boxes, gt_valid, fg_iou_threshold=0.7,
                          bg_iou_threshold=0.3, allow_low_quality_matches=True,
                          box_weights=box_ops.RPN_BOX_WEIGHTS):
    """torchvision's ``assign_targets_to_anchors`` + ``BoxCoder.encode``, before sampling.

    Args:
        anchors: (N, 4) float32 xyxy. gt_boxes: (B, M, 4) float32 xyxy, padding rows anything.
        gt_valid: (B, M) bool, False on padding rows.
        fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches: the Matcher's.
        box_weights: encoding weights.

    Returns:
        labels: (B, N) int32, 1 matched (IoU >= fg or low-quality match), 0 background
            (IoU < bg, or an image without valid GT), -1 between thresholds.
        box_targets: (B, N, 4) float32 deltas of the matched GT where labels == 1, else 0
            (torchvision encodes GT 0 / zeros there; those values are never used).
    """
    anchors = tf.cast(anchors, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    iou = box_ops.pairwise_iou(gt_boxes, anchors[None])  # (B, M, N)
    matches = matching.match_boxes(iou, gt_valid, fg_iou_threshold, bg_iou_threshold,
                                   allow_low_quality_matches)  # (B, N)
    labels = tf.where(matches >= 0, 1, tf.where(matches == matching.BELOW_LOW_THRESHOLD, 0, -1))
    num_gt = tf.shape(gt_boxes)[1]
    padded_gt = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])  # (B, M + 1, 4): row M is a dummy
    matched = tf.gather(padded_gt, tf.where(matches >= 0, matches, num_gt),
                        batch_dims=1)  # (B, N, 4)
    positive = labels == 1  # (B, N)
    safe_gt = tf.where(positive[..., None], matched, anchors[None])  # (B, N, 4), no log(0)
    targets = box_ops.encode_boxes(safe_gt, anchors[None], box_weights)  # (B, N, 4)
    targets = tf.where(positive[..., None], targets, 0.0)
    return tf.cast(labels, tf.int32), targets


def scatter_sampled_labels(indices, sampled_labels, num_anchors):
    """(B, R) sampled indices/labels -> (B, N) int32 labels, -1 where not sampled.

    Args:
        indices: (B, R) int32 indices into N, -1 padding (``matching.sample_balanced``).
        sampled_labels: (B, R) int32 1 / 0 / -1 (padding).
        num_anchors: N, Python int or scalar int tensor.
    """
    batch = tf.shape(indices)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(indices))  # (B, R)
    columns = tf.where(indices >= 0, indices, num_anchors)  # padding -> dummy column N
    where = tf.stack([rows, columns], axis=-1)  # (B, R, 2) scatter coordinates
    labels = tf.fill([batch, num_anchors + 1], -1)  # (B, N + 1)
    labels = tf.tensor_scatter_nd_update(labels, where, tf.cast(sampled_labels, tf.int32))
    return labels[:, :num_anchors]  # drop the dummy column: (B, N)


def rpn_targets(anchors, gt_boxes, gt_valid, fg_iou_threshold=0.7, bg_iou_threshold=0.3,
                allow_low_quality_matches=True, batch_size_per_image=256,
                positive_fraction=0.5, box_weights=box_ops.RPN_BOX_WEIGHTS, seed=(0, 0)):
    """Sampled RPN training targets: ``assign_anchor_targets`` then the balanced sampler.

    Args:
        anchors, gt_boxes, gt_valid, fg_iou_threshold, bg_iou_threshold,
            allow_low_quality_matches, box_weights: see ``assign_anchor_targets``.
        batch_size_per_image: R, anchors sampled per image.
        positive_fraction: at most int(R * positive_fraction) positives per image.
        seed: (2,) int stateless seed (vary it per step).

    Returns:
        labels: (B, N) int32, 1 sampled positive, 0 sampled negative, -1 not sampled / ignored.
            Per image: min(int(R * fraction), #pos) positives and
            min(R - that, #neg) negatives, as torchvision's sampler.
        box_targets: (B, N, 4) float32 encoded matched-GT deltas (0 where not positive).
    """
    labels, targets = assign_anchor_targets(anchors, gt_boxes, gt_valid, fg_iou_threshold,
                                            bg_iou_threshold, allow_low_quality_matches,
                                            box_weights)
    indices, sampled = matching.sample_balanced(labels, batch_size_per_image,
                                                positive_fraction, seed)  # (B, R) each
    num_anchors = labels.shape[1] if labels.shape[1] is not None else tf.shape(labels)[1]
    return scatter_sampled_labels(indices, sampled, num_anchors), targets


def used_gt_rows(gt_boxes, gt_classes):
    """The first M' GT rows, M' = max(1, 1 + the last valid row of any image of the batch).

    The input pads GT to ``max_instances`` (100) rows; matching every anchor (~100k) against
    all of them is the RPN targets' (B, M, N) IoU, most of it padding. Rows past M' are
    padding in every image, so the targets are the same. At least one row is kept (a padded
    one when no image has GT).

    Returns:
        gt_boxes (B, M', 4), gt_classes (B, M') int32.
    """
    rows = tf.range(1, tf.shape(gt_classes)[1] + 1)[None, :]  # (1, M): 1-based row numbers
    count = tf.reduce_max(tf.where(gt_classes > 0, rows, 1))  # M'
    return gt_boxes[:, :count], gt_classes[:, :count]  # (B, M', 4), (B, M')


# ------------------------------------------------------------------------------------- RoIs
def label_candidates(proposals, proposal_valid, gt_boxes, gt_classes, fg_iou_threshold=0.5,
                     bg_iou_threshold=0.5, allow_low_quality_matches=False,
                     add_gt_as_proposals=True):
    """Candidates and their labels: torchvision's ``add_gt_proposals`` + ``assign_targets``.

    Args:
        proposals: (B, P, 4) float32 xyxy. proposal_valid: (B, P) bool.
        gt_boxes: (B, M, 4) float32 xyxy, padded rows arbitrary (-1).
        gt_classes: (B, M) int, >= 1 for real GT, -1 / 0 for padding.
        fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches: the Matcher's.
        add_gt_as_proposals: append the GT boxes to the candidates.

    Returns:
        candidates: (B, N, 4) float32, N = P + M (or P without GT appended).
        candidate_valid: (B, N) bool.
        labels: (B, N) int32: GT class (>= 1) for foreground, 0 background, -1 ignored
            (between the thresholds, or not a valid candidate).
        matched_gt: (B, N) int32 index into M of the best GT, clamped >= 0 (0 where the image
            has no valid GT or the candidate is background/ignored, as torchvision's clamp).
    """
    gt_classes = tf.cast(gt_classes, tf.int32)
    gt_valid = gt_classes > 0  # (B, M)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    candidates = tf.cast(proposals, tf.float32)
    candidate_valid = tf.cast(proposal_valid, tf.bool)
    if add_gt_as_proposals:
        candidates = tf.concat([candidates, gt_boxes], axis=1)  # (B, P + M, 4)
        candidate_valid = tf.concat([candidate_valid, gt_valid], axis=1)  # (B, P + M)
    iou = box_ops.pairwise_iou(gt_boxes, candidates)  # (B, M, N)
    # invalid candidates get IoU -1: below every real IoU, so never the best of a GT
    iou = tf.where(candidate_valid[:, None, :], iou, -1.0)  # (B, M, N)
    matches = matching.match_boxes(iou, gt_valid, fg_iou_threshold, bg_iou_threshold,
                                   allow_low_quality_matches)  # (B, N)
    matched_gt = tf.maximum(matches, 0)  # (B, N)
    matched_class = gather_or_pad(gt_classes, matched_gt, -1)  # (B, N); M = 0 -> pad
    labels = tf.where(matches >= 0, matched_class,
                      tf.where(tf.equal(matches, matching.BELOW_LOW_THRESHOLD), 0, -1))
    labels = tf.where(candidate_valid, labels, -1)  # (B, N); invalid = ignored
    return candidates, candidate_valid, tf.cast(labels, tf.int32), matched_gt


def sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, seed, batch_size_per_image=512,
                positive_fraction=0.25, box_weights=box_ops.ROI_BOX_WEIGHTS, **label_kwargs):
    """Sample S RoIs per image with their class and box targets (pure function of the seed).

    Args:
        proposals, proposal_valid, gt_boxes, gt_classes: as ``label_candidates``.
        seed: (2,) int stateless seed.
        batch_size_per_image: python int S. positive_fraction: python float.
        box_weights: (wx, wy, ww, wh) used to encode the regression targets.
        **label_kwargs: the thresholds / flags of ``label_candidates``.

    Returns:
        dict with rois (B, S, 4) float32 (zeros on padding), roi_classes (B, S) int32 (GT class
        for positives, 0 background, -1 padding), box_targets (B, S, 4) float32 (zeros unless
        positive), matched_gt (B, S) int32 (index into M for positives, 0 otherwise),
        roi_valid (B, S) bool (False on padding slots).
    """
    proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
    gt_boxes = tf.stop_gradient(tf.cast(gt_boxes, tf.float32))
    candidates, _, labels, matched_gt = label_candidates(
        proposals, proposal_valid, gt_boxes, gt_classes, **label_kwargs)
    indices, _ = matching.sample_balanced(labels, batch_size_per_image, positive_fraction,
                                          seed)  # (B, S) indices into N, -1 padding
    rois = gather_or_pad(candidates, indices, 0.0)  # (B, S, 4)
    roi_classes = gather_or_pad(labels, indices, -1)  # (B, S)
    roi_matched = gather_or_pad(matched_gt, indices, 0)  # (B, S)
    positive = roi_classes > 0  # (B, S)
    matched_boxes = gather_or_pad(gt_boxes, roi_matched, 0.0)  # (B, S, 4); M = 0 -> zeros
    unit = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32)
    # non-positives encode a unit box against itself: finite, then zeroed
    safe_rois = tf.where(positive[..., None], rois, unit)  # (B, S, 4)
    safe_gt = tf.where(positive[..., None], matched_boxes, unit)  # (B, S, 4)
    targets = box_ops.encode_boxes(safe_gt, safe_rois, tuple(box_weights))  # (B, S, 4)
    return {
        "rois": rois,
        "roi_classes": roi_classes,
        "box_targets": tf.where(positive[..., None], targets, 0.0),
        "matched_gt": roi_matched,
        "roi_valid": indices >= 0,
    }


def foreground_slots(sample, fixed_slots):
    """The sample's first F' slots, F' = the largest positive count of an image in the batch.

    Positives come first in each image's sample (``sample_rois``), so these slots hold every
    foreground RoI; the mask and keypoint heads run on them only (torchvision runs them on the
    positives alone). F' is dynamic (0 <= F' <= F): a few RoIs per image instead of the F =
    ``batch_size_per_image * positive_fraction`` (128) fixed slots, about 10x less head work
    on COCO. Slots past an image's own positives are negatives or padding (class <= 0): the
    losses ignore them.

    Args:
        sample: ``sample_rois`` output. fixed_slots: F, used instead of F' under a
            tf.distribute strategy with several replicas.

    Returns:
        rois (B, F', 4), classes (B, F') int32 (> 0 on positives), matched_gt (B, F') int32.
    """
    classes = sample["roi_classes"]  # (B, S)
    count = tf.reduce_max(tf.reduce_sum(tf.cast(classes > 0, tf.int32), axis=1))  # F'
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Several replicas keep all F fixed slots: with F' the two-replica step was not
        # reproducible run to run (update differences up to ~2e-4 against < 1e-6 with F
        # slots, tests/integration/test_distribute.py); root cause not found yet.
        count = fixed_slots
    return (sample["rois"][:, :count], classes[:, :count],  # (B, F', 4), (B, F')
            sample["matched_gt"][:, :count])  # (B, F')


def replica_seed(seed):
    """Fold the tf.distribute replica id into the second seed word: (2,) -> (2,) int64."""
    seed = tf.cast(seed, tf.int64)
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: one stream
        return seed
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
    return seed + tf.stack([tf.constant(0, tf.int64), replica * _REPLICA_SEED_STRIDE])
