"""RoISampler: training targets of the box head (torchvision ``RoIHeads.select_training_samples``).

Shape shorthand:
    B  batch size
    P  proposals per image (padded; ``proposal_valid`` flags the real ones)
    M  GT boxes per image (padded with -1; a GT row is valid where ``gt_classes > 0``)
    N  candidates per image = P + M (proposals, then the GT boxes when ``add_gt_as_proposals``)
    S  sampled RoIs per image (``batch_size_per_image``, static)
    K  classes (0 = background)

Conventions pinned here (tests/test_roi_sampler.py checks each one against torchvision):
    * Candidates are the valid proposals followed by the valid GT boxes (torchvision's
      ``add_gt_proposals``); padded GT rows and invalid proposals are never candidates.
    * Each candidate is matched to the valid GT of highest IoU (``ops.matching.match_boxes``,
      torchvision's Matcher): IoU >= fg threshold -> the GT's class; IoU < bg threshold ->
      background (0); in between -> ignored (never sampled). Images without valid GT: every
      candidate is background.
    * Balanced sampling (``ops.matching.sample_balanced``): min(int(S * positive_fraction), #fg)
      positives and min(S - #pos, #bg) negatives, uniformly at random; sampled positives come
      first, then negatives, then padding (torchvision returns the sample in candidate-index
      order; only the set and the counts are comparable).
    * Regression targets: ``encode_boxes(matched GT, roi, box_weights)`` for positives, zeros
      for background and padding (torchvision encodes negatives against GT 0 too; the box loss
      never reads them).
    * Randomness is stateless: the seed comes from a ``keras.random.SeedGenerator`` (a
      non-trainable state variable advanced once per call, so every training step differs)
      with the replica id folded in under ``tf.distribute``; or from the ``seed`` call argument.
    * No gradient flows into the RoIs or the targets (``stop_gradient``).
"""
import keras
import tensorflow as tf

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import matching

#: int64 stride between replicas in the second seed word (the per-call counter stays below).
_REPLICA_SEED_STRIDE = 2**32


def gather_or_pad(params, indices, pad_value=0):
    """``params[b, indices[b, i]]`` per image; index -1 (or N) reads ``pad_value``.

    Safe for N = 0 (one pad row is appended before gathering).

    Args:
        params: (B, N, ...) tensor.
        indices: (B, S) int32 in [-1, N].
        pad_value: scalar written where the index is -1.

    Returns:
        (B, S, ...) gathered values.
    """
    num = tf.shape(params)[1]
    pad_row = tf.fill(tf.concat([tf.shape(params)[:1], [1], tf.shape(params)[2:]], 0),
                      tf.cast(pad_value, params.dtype))  # (B, 1, ...)
    padded = tf.concat([params, pad_row], axis=1)  # (B, N + 1, ...); row N = pad
    safe = tf.where(indices >= 0, indices, num)  # (B, S); -1 -> the pad row
    return tf.gather(padded, safe, batch_dims=1)  # (B, S, ...)


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
                positive_fraction=0.25, box_weights=(10.0, 10.0, 5.0, 5.0), **label_kwargs):
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


def replica_seed(seed):
    """Fold the tf.distribute replica id into the second seed word: (2,) -> (2,) int64."""
    seed = tf.cast(seed, tf.int64)
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: one stream
        return seed
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
    return seed + tf.stack([tf.constant(0, tf.int64), replica * _REPLICA_SEED_STRIDE])


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RoISampler(keras.layers.Layer):
    """Match proposals (+ GT) to GT and sample ``batch_size_per_image`` RoIs per image.

    Args:
        fg_iou_threshold, bg_iou_threshold: Matcher thresholds (0.5 / 0.5 in torchvision).
        allow_low_quality_matches: Matcher flag (False for the RoI heads).
        batch_size_per_image: S, sampled RoIs per image (512).
        positive_fraction: at most ``int(S * positive_fraction)`` positives (0.25).
        add_gt_as_proposals: append the valid GT boxes to the candidates (True).
        box_weights: (wx, wy, ww, wh) of the box coder (10, 10, 5, 5).
        seed: int or None, initial state of the layer's ``keras.random.SeedGenerator``; two
            layers with the same seed produce the same sequence of samples. As for every Keras
            SeedGenerator (e.g. Dropout's), the advancing state is a variable of the layer
            but is not written to ``.keras`` / ``.weights.h5`` files: a loaded model starts
            the sequence again from ``seed``.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call args:
        proposals: (B, P, 4) xyxy. proposal_valid: (B, P) bool.
        gt_boxes: (B, M, 4) xyxy. gt_classes: (B, M) int (>= 1 real, -1 / 0 padding).
        seed: optional (2,) int tensor; overrides (and does not advance) the generator.

    Returns:
        dict: rois (B, S, 4), roi_classes (B, S) int32, box_targets (B, S, 4),
        matched_gt (B, S) int32, roi_valid (B, S) bool (see ``sample_rois``).
    """

    def __init__(self, fg_iou_threshold=0.5, bg_iou_threshold=0.5,
                 allow_low_quality_matches=False, batch_size_per_image=512,
                 positive_fraction=0.25, add_gt_as_proposals=True,
                 box_weights=(10.0, 10.0, 5.0, 5.0), seed=None, **kwargs):
        kwargs.pop("autocast", None)
        # autocast=False: geometry stays float32 under a mixed policy (inputs are cast here).
        super().__init__(autocast=False, **kwargs)
        if bg_iou_threshold > fg_iou_threshold:
            raise ValueError(f"bg_iou_threshold {bg_iou_threshold} > fg_iou_threshold "
                             f"{fg_iou_threshold}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_threshold = float(bg_iou_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.add_gt_as_proposals = bool(add_gt_as_proposals)
        self.box_weights = tuple(float(w) for w in box_weights)
        if len(self.box_weights) != 4:
            raise ValueError(f"box_weights must have 4 entries, got {box_weights}")
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="roi_sampler_seed")
        self.built = True  # its only state, the generator's, exists now

    def call(self, proposals, proposal_valid, gt_boxes, gt_classes, seed=None):
        seed = replica_seed(self.seed_generator.next() if seed is None else seed)
        return sample_rois(
            proposals, proposal_valid, gt_boxes, gt_classes, seed,
            batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction,
            box_weights=self.box_weights,
            fg_iou_threshold=self.fg_iou_threshold,
            bg_iou_threshold=self.bg_iou_threshold,
            allow_low_quality_matches=self.allow_low_quality_matches,
            add_gt_as_proposals=self.add_gt_as_proposals,
        )

    def get_config(self):
        config = super().get_config()
        config.update({
            "fg_iou_threshold": self.fg_iou_threshold,
            "bg_iou_threshold": self.bg_iou_threshold,
            "allow_low_quality_matches": self.allow_low_quality_matches,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction,
            "add_gt_as_proposals": self.add_gt_as_proposals,
            "box_weights": list(self.box_weights),
            "seed": self.seed,
        })
        return config
