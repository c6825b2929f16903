"""IoU matcher (thresholds, low-quality matches), balanced positive/negative sampler.

Method: labelling by IoU and mini-batch sampling of Ren et al. 2015 (Faster R-CNN, §3.1.2:
positive at IoU > 0.7 or the best IoU of a GT box, negative below 0.3; §3.1.3: 256 anchors per
image, up to 1:1) and of Girshick 2015 (Fast R-CNN, §2.3 "Mini-batch sampling": 25% foreground
RoIs at IoU >= 0.5), as He et al. 2017 use them for the RoIs (Mask R-CNN, §3.1).

``match_boxes`` and ``sample_balanced`` are batched, graph-mode friendly (no Python loops over
images or boxes) and reproduce torchvision's ``models.detection._utils.Matcher`` and
``BalancedPositiveNegativeSampler`` semantics; the docstrings pin each convention. Sampled
indices are padded with -1; ``gather_or_pad`` reads rows at such indices (also the -1 padded
indices of ``ops.nms.batched_nms``).

Shape shorthand:
    B  batch size
    N  predictions per image (anchors or proposals)
    M  ground-truth boxes per image (padded; padding rows flagged by ``gt_valid``)
    R  number of sampled elements per image (``num_samples``)
"""
import tensorflow as tf

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match_boxes(iou, gt_valid, high_threshold, low_threshold, allow_low_quality_matches=False):
    """Assign each prediction the index of a ground-truth box, or a negative code.

    Exactly torchvision's ``Matcher(high, low, allow_low_quality_matches)`` applied per image:

    1. ``matched_vals, argmax = max over valid GT`` (ties -> the FIRST GT index, like torch on
       CPU; padding rows never win).
    2. ``matched_vals < low_threshold`` -> ``BELOW_LOW_THRESHOLD`` (-1, background);
       ``low_threshold <= matched_vals < high_threshold`` -> ``BETWEEN_THRESHOLDS`` (-2,
       ignored); otherwise the GT index ``argmax``. Thresholds are compared in ``iou.dtype``
       (a python 0.7 becomes float32(0.7), as in torch).
    3. If ``allow_low_quality_matches``: for every valid GT, EVERY prediction whose IoU equals
       that GT's highest IoU (including ties, and including a highest IoU of 0) is reset to its
       step-1 ``argmax`` -- the overall best GT of that prediction, which need not be the GT
       that selected it. Note this torchvision quirk: a valid GT overlapping nothing (highest
       IoU 0) turns every prediction with IoU 0 to it into a match.

    Images with no valid GT (or M = 0) get all -1 (torchvision raises there; its RoI heads
    treat such images as all background, which is what this returns). N = 0 gives (B, 0).
    IoU values must not be NaN (torch would propagate a NaN maximum; here it is unspecified).

    Args:
        iou: (B, M, N) float. IoU between the M padded GT boxes and the N predictions.
        gt_valid: (B, M) bool. False for padding rows; those are never matched.
        high_threshold: python float (or scalar tensor), the foreground threshold.
        low_threshold: python float (or scalar tensor), <= high_threshold.
        allow_low_quality_matches: python bool.
    Returns:
        matches: (B, N) int32 with values in [0, M) for matches, -1 or -2 otherwise.
    """
    if isinstance(high_threshold, (int, float)) and isinstance(low_threshold, (int, float)):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
    iou = tf.convert_to_tensor(iou)
    if not iou.dtype.is_floating:
        raise TypeError(f"iou must be floating point, got {iou.dtype}")
    gt_valid = tf.cast(gt_valid, tf.bool)

    def match():
        return _match_nonempty(iou, gt_valid, high_threshold, low_threshold,
                               allow_low_quality_matches)

    def no_gt():
        return tf.fill(tf.shape(iou)[::2], tf.constant(BELOW_LOW_THRESHOLD, tf.int32))  # (B, N)

    num_gt = iou.shape[1]
    if num_gt is None:  # dynamic M: tf.argmax rejects an empty axis, so branch at run time
        return tf.cond(tf.shape(iou)[1] > 0, match, no_gt)
    return match() if num_gt > 0 else no_gt()


def _match_nonempty(iou, gt_valid, high_threshold, low_threshold, allow_low_quality_matches):
    """``match_boxes`` for M >= 1: (B, M, N) float, (B, M) bool -> (B, N) int32."""
    valid = gt_valid[:, :, None]  # (B, M, 1)
    neg_inf = tf.constant(float("-inf"), iou.dtype)
    masked = tf.where(valid, iou, neg_inf)  # (B, M, N); padding rows can never be a maximum
    # tf.argmax returns the lowest index among equal maxima (Eigen's ArgMax reducer), like
    # torch's CPU max(dim=0); pinned by the tie tests. 0 for images without valid GT.
    argmax = tf.argmax(masked, axis=1, output_type=tf.int32)  # (B, N)
    matched_vals = tf.reduce_max(masked, axis=1)  # (B, N); -inf when the image has no valid GT

    high = tf.cast(high_threshold, iou.dtype)
    low = tf.cast(low_threshold, iou.dtype)
    below = matched_vals < low  # (B, N); also true when the image has no valid GT (-inf)
    between = tf.logical_and(matched_vals >= low, matched_vals < high)  # (B, N)
    matches = tf.where(below, BELOW_LOW_THRESHOLD, tf.where(between, BETWEEN_THRESHOLDS, argmax))

    if allow_low_quality_matches:
        highest_per_gt = tf.reduce_max(masked, axis=2)  # (B, M); -inf for padding / N = 0
        # +inf for padding rows: no masked value equals it, so padding selects nothing
        highest_per_gt = tf.where(gt_valid, highest_per_gt, -neg_inf)  # (B, M)
        is_best = tf.equal(masked, highest_per_gt[:, :, None])  # (B, M, N), ties included
        update = tf.reduce_any(is_best, axis=1)  # (B, N): best prediction of some valid GT
        matches = tf.where(update, argmax, matches)
    return tf.cast(matches, tf.int32)


def _group_order(member, keys, num_samples):
    """Indices of the members of one group in random order, first ``num_samples`` only.

    Args:
        member: (B, N) bool, membership of the group.
        keys: (B, N) int64 random keys >= 0.
        num_samples: python int R.
    Returns:
        (B, R) int32 indices into N; only the first ``count(member)`` entries are meaningful.
    """
    batch = tf.shape(member)[0]
    group_keys = tf.where(member, keys, tf.constant(-1, tf.int64))  # (B, N); non-members last
    pad = tf.fill([batch, num_samples], tf.constant(-1, tf.int64))  # (B, R) so that N >= R
    group_keys = tf.concat([group_keys, pad], axis=1)  # (B, N + R)
    _, order = tf.math.top_k(group_keys, k=num_samples, sorted=True)  # (B, R) largest keys
    return tf.cast(order, tf.int32)


def sample_balanced(labels, num_samples, positive_fraction, seed):
    """Sample a fixed-size, class-balanced subset per image (torchvision's sampler counts).

    Per image, with P = #(labels >= 1) positives and Q = #(labels == 0) negatives
    (labels == -1, or any other negative value, are ignored and never sampled):
        num_pos = min(int(num_samples * positive_fraction), P)
        num_neg = min(num_samples - num_pos, Q)
    The positives are a uniformly random subset of size num_pos, the negatives likewise;
    the output lists the sampled positives first (random order), then the sampled negatives
    (random order), then -1 padding up to ``num_samples``. The draw is a deterministic
    function of ``seed`` (stateless random ops); each image gets an independent draw.
    torchvision returns unordered binary masks drawn with torch's global RNG, so only the
    counts and the distribution can match it, not the exact elements.

    Args:
        labels: (B, N) int. 1 (or any value >= 1) positive, 0 negative, -1 ignore.
        num_samples: python int R, the number of samples per image (static output size).
        positive_fraction: python float in [0, 1].
        seed: shape-(2,) int tensor or a python pair, the stateless random seed.
    Returns:
        indices: (B, R) int32 indices into N, -1 for padding.
        sampled_labels: (B, R) int32, 1 for sampled positives, 0 for sampled negatives,
            -1 for padding.
    """
    num_samples = int(num_samples)
    max_pos = int(num_samples * positive_fraction)  # python float math, like torchvision
    labels = tf.convert_to_tensor(labels)
    positive = labels >= 1  # (B, N)
    negative = tf.equal(labels, 0)  # (B, N)
    num_pos = tf.minimum(max_pos, tf.reduce_sum(tf.cast(positive, tf.int32), axis=1))  # (B,)
    num_neg = tf.minimum(
        num_samples - num_pos, tf.reduce_sum(tf.cast(negative, tf.int32), axis=1)
    )  # (B,)

    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    # int64 keys in [0, 2**62): ties are practically impossible, so top_k gives a uniform order
    keys = tf.random.stateless_uniform(
        tf.shape(labels), seed=seed, minval=0, maxval=2**62, dtype=tf.int64
    )  # (B, N)
    pos_order = _group_order(positive, keys, num_samples)  # (B, R)
    neg_order = _group_order(negative, keys, num_samples)  # (B, R)

    slot = tf.range(num_samples, dtype=tf.int32)[None, :]  # (1, R) output positions
    is_pos = slot < num_pos[:, None]  # (B, R)
    is_neg = tf.logical_and(~is_pos, slot < (num_pos + num_neg)[:, None])  # (B, R)
    neg_slot = tf.maximum(slot - num_pos[:, None], 0)  # (B, R) position within negatives
    neg_pick = tf.gather(neg_order, neg_slot, batch_dims=1)  # (B, R) shifted negatives
    indices = tf.where(is_pos, pos_order, tf.where(is_neg, neg_pick, -1))  # (B, R)
    sampled_labels = tf.where(is_pos, 1, tf.where(is_neg, 0, -1))  # (B, R)
    return indices, tf.cast(sampled_labels, tf.int32)


def gather_or_pad(params, indices, pad_value=0):
    """``params[b, indices[b, i]]`` per image; index -1 (or N) reads ``pad_value``.

    Safe for N = 0 (one pad row is appended before gathering).

    Args:
        params: (B, N, ...) tensor.
        indices: (B, S) int32 in [-1, N] (e.g. ``sample_balanced`` or ``batched_nms`` output).
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
