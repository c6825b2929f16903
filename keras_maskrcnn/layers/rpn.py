"""Region Proposal Network: head, proposal generator and anchor targets (torchvision's RPN).

Shape shorthand:
    B  batch size
    N  anchors per image, all levels concatenated (N = sum_l H_l * W_l * A)
    A  anchors per location
    L  pyramid levels ("P2".."P6" -> L = 5)
    C  candidates per image after the per-level top-n (sum_l min(pre_nms_top_n, N_l))
    P  proposals per image (post_nms_top_n, static)
    M  GT boxes per image (padded; padding rows flagged by ``gt_valid``)
    R  sampled anchors per image (``batch_size_per_image``)
    K, S  (classes, mask size) are not used here

Conventions pinned here (tests/test_rpn.py checks each against
``torchvision.models.detection.rpn``):
    * Levels are taken in ``feature_keys`` order: the keys of the feature dict sorted
      naturally ("P2" < "P3" < ... < "P10"), the order of ``anchors.multilevel_anchors`` for
      P2..P6. Within a level the order is torchvision's: location row-major (y, then x), anchor
      minor, i.e. index (i * W + j) * A + a; box delta channel a * 4 + c (torchvision's
      ``view(B, A, 4, H, W)``).
    * Proposals (``generate_proposals``): top ``pre_nms_top_n`` logits per level and image
      (``min(pre_nms_top_n, N_l)``), decode (``decode_boxes`` with ``box_weights`` and
      ``scale_clip``), clip to each image's unpadded (height, width), drop boxes with a side
      < ``min_size``, drop sigmoid probabilities < ``score_threshold`` (``>=`` keeps, as
      torchvision), class-aware NMS with the level as the class, keep the first
      ``post_nms_top_n``. Logits and deltas are detached (no gradient through proposals).
    * Targets (``assign_anchor_targets`` / ``rpn_targets``): torchvision's
      ``assign_targets_to_anchors`` (Matcher with low-quality matches) and
      ``BalancedPositiveNegativeSampler`` counts. Images without GT: every anchor is a
      negative candidate.
"""
import numbers

import keras
import tensorflow as tf

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import matching
from keras_maskrcnn.ops import nms as nms_ops


def _natural_key(key):
    """"P10" sorts after "P9": (prefix, number) when the key ends in digits."""
    digits = len(key) - len(key.rstrip("0123456789"))
    if digits:
        return (key[:-digits], int(key[-digits:]))
    return (key, -1)


def feature_keys(features):
    """The level keys of a feature dict in the order the RPN concatenates them (natural sort)."""
    return sorted(features, key=_natural_key)


def level_sizes(features, num_anchors):
    """Anchors per level, N_l = H_l * W_l * A, in ``feature_keys`` order.

    Args:
        features: dict level -> (B, H_l, W_l, C) tensor (or a shape tuple).
        num_anchors: Python int A.

    Returns:
        list of L counts: Python ints where H_l and W_l are static, else scalar int32 tensors.
    """
    counts = []
    for key in feature_keys(features):
        value = features[key]
        shape = tuple(value) if isinstance(value, (tuple, list)) else tuple(value.shape)
        if shape[1] is not None and shape[2] is not None:  # static H_l, W_l
            counts.append(int(shape[1]) * int(shape[2]) * int(num_anchors))
        else:
            dynamic = tf.shape(value)  # (4,) int32
            counts.append(dynamic[1] * dynamic[2] * int(num_anchors))
    return counts


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RPNHead(keras.layers.Layer):
    """torchvision's ``RPNHead``, shared over levels: num_convs x (3x3 conv + ReLU), 1x1 heads.

    Args:
        num_anchors: A, anchors per location (3 for one size and ratios 0.5, 1, 2).
        num_convs: number of 3x3 conv + ReLU layers (torchvision's ``conv_depth``), each with
            as many output channels as the features have.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        features: dict level -> (B, H_l, W_l, C); every level has the same C.
    Returns:
        objectness_logits: (B, N) float32; box_deltas: (B, N, 4) float32 (dx, dy, dw, dh),
        levels concatenated in ``feature_keys`` order (see the module docstring).

    Sub-layers: ``convs[i]`` (torchvision ``conv.{i}.0``), ``objectness_conv``
    (``cls_logits``), ``delta_conv`` (``bbox_pred``). Initialisation as torchvision: normal
    with std 0.01, zero biases.
    """

    def __init__(self, num_anchors, num_convs=1, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.num_convs = int(num_convs)
        init = keras.initializers.RandomNormal(stddev=0.01)

        def conv(filters, size, name, activation=None):
            return keras.layers.Conv2D(filters, size, padding="same", activation=activation,
                                       kernel_initializer=init, bias_initializer="zeros",
                                       name=name, dtype=self.dtype_policy)

        self.convs = [conv(None, 3, f"conv_{i}", "relu") for i in range(self.num_convs)]
        self.objectness_conv = conv(self.num_anchors, 1, "objectness")
        self.delta_conv = conv(4 * self.num_anchors, 1, "box_deltas")

    def build(self, input_shape):
        shapes = input_shape.values() if isinstance(input_shape, dict) else [input_shape]
        channels = {tuple(s)[-1] for s in shapes}
        if len(channels) != 1 or None in channels:
            raise ValueError(f"{self.name}: all levels need the same known channel count, "
                             f"got {input_shape}")
        channels = channels.pop()
        for conv in self.convs:
            conv.filters = channels  # torchvision: the convs keep the input channel count
            conv.build((None, None, None, channels))
        self.objectness_conv.build((None, None, None, channels))
        self.delta_conv.build((None, None, None, channels))
        self.built = True

    def call(self, features):
        logits, deltas = [], []
        counts = level_sizes(features, self.num_anchors)  # static where H_l, W_l are
        for key, count in zip(feature_keys(features), counts):
            x = features[key]
            for conv in self.convs:
                x = conv(x)
            level_logits = tf.cast(self.objectness_conv(x), tf.float32)  # (B, H, W, A)
            level_deltas = tf.cast(self.delta_conv(x), tf.float32)  # (B, H, W, 4A)
            batch = tf.shape(level_logits)[0]
            logits.append(tf.reshape(level_logits, [batch, count]))  # (B, H*W*A), anchor minor
            # channel a * 4 + c -> (B, H*W*A, 4): torchvision's view(B, A, 4, H, W) order
            deltas.append(tf.reshape(level_deltas, [batch, count, 4]))
        return tf.concat(logits, axis=1), tf.concat(deltas, axis=1)

    def compute_output_shape(self, input_shape):
        shapes = [tuple(input_shape[k]) for k in feature_keys(input_shape)]
        known = all(s[1] is not None and s[2] is not None for s in shapes)
        total = sum(s[1] * s[2] * self.num_anchors for s in shapes) if known else None
        return (shapes[0][0], total), (shapes[0][0], total, 4)

    def get_config(self):
        config = super().get_config()
        config.update({"num_anchors": self.num_anchors, "num_convs": self.num_convs})
        return config


def _top_k_per_level(logits, level_counts, pre_nms_top_n):
    """Top ``pre_nms_top_n`` logits of every level, torchvision's ``_get_top_n_idx``.

    Args:
        logits: (B, N) float32. level_counts: L Python ints or scalar int tensors.
        pre_nms_top_n: Python int.

    Returns:
        indices (B, C) int32 into N (0 where not valid), valid (B, C) bool, levels (C,) int32.
        A level with a static count takes k = min(pre_nms_top_n, N_l); a dynamic one takes
        k = pre_nms_top_n from -inf padded logits and flags the padding as not valid.
    """
    indices, valid, levels = [], [], []
    offset = 0
    for level, count in enumerate(level_counts):
        level_logits = logits[:, offset:offset + count]  # (B, N_l)
        if isinstance(count, numbers.Integral):  # Python / numpy int: static k
            count = int(count)
            k = min(pre_nms_top_n, count)
        else:
            k = pre_nms_top_n  # pad so that top_k always finds k entries
            level_logits = tf.pad(level_logits, [[0, 0], [0, k]], constant_values=float("-inf"))
        _, top = tf.math.top_k(level_logits, k=k, sorted=True)  # (B, k), ties: lower index
        is_real = top < count  # (B, k); always true for a static count
        indices.append(tf.where(is_real, top + offset, 0))
        valid.append(is_real)
        levels.append(tf.fill([k], level))  # (k,)
        offset = offset + count
    return tf.concat(indices, 1), tf.concat(valid, 1), tf.concat(levels, 0)


def generate_proposals(objectness_logits, box_deltas, anchors, level_counts, image_sizes,
                       pre_nms_top_n, post_nms_top_n, nms_threshold, min_size=1e-3,
                       score_threshold=0.0, box_weights=(1.0, 1.0, 1.0, 1.0),
                       scale_clip=box_ops.DEFAULT_DELTA_CLIP, nms_method="offset"):
    """torchvision's ``RegionProposalNetwork.filter_proposals`` with static output sizes.

    Args:
        objectness_logits: (B, N) float logits. box_deltas: (B, N, 4) float deltas.
        anchors: (N, 4) float32 xyxy anchors (the same for every image).
        level_counts: L per-level anchor counts N_l (Python ints or int scalar tensors, or
            one (L,) int tensor), in the order of N; sum = N. Static counts give a static C.
        image_sizes: (B, 2) int (height, width) of each unpadded image; proposals are
            clipped to it.
        pre_nms_top_n, post_nms_top_n: Python ints (per level and image / per image = P).
        nms_threshold: IoU above which a proposal suppresses a lower scored one of its level.
        min_size: proposals with width or height < min_size are removed.
        score_threshold: proposals with sigmoid(logit) < score_threshold are removed.
        box_weights, scale_clip: ``decode_boxes`` weights and dw/dh clip.
        nms_method: ``ops.nms.batched_nms`` method; "offset" is torchvision's GPU path (and its
            CPU path up to 1000 candidates), "torchvision_cpu" is bit-exact with torchvision CPU.

    Returns:
        dict with proposals (B, P, 4) float32 xyxy (zeros after the kept ones), scores (B, P)
        float32 sigmoid probabilities (0 where padded), valid (B, P) bool. Kept proposals come
        first, in decreasing score order. No gradient flows to the inputs.
    """
    logits = tf.stop_gradient(tf.cast(objectness_logits, tf.float32))
    deltas = tf.stop_gradient(tf.cast(box_deltas, tf.float32))
    anchors = tf.cast(anchors, tf.float32)
    if tf.is_tensor(level_counts):  # an (L,) int tensor: L dynamic counts
        level_counts = tf.unstack(level_counts)
    top, candidate_valid, levels = _top_k_per_level(logits, list(level_counts), pre_nms_top_n)
    top_logits = tf.gather(logits, top, batch_dims=1)  # (B, C)
    top_deltas = tf.gather(deltas, top, batch_dims=1)  # (B, C, 4)
    top_anchors = tf.gather(anchors, top)  # (B, C, 4)
    boxes = box_ops.decode_boxes(top_deltas, top_anchors, box_weights, scale_clip)  # (B, C, 4)
    image_sizes = tf.cast(image_sizes, tf.float32)
    boxes = box_ops.clip_boxes(boxes, image_sizes[:, 0:1], image_sizes[:, 1:2])  # sizes (B, 1)
    scores = tf.sigmoid(top_logits)  # (B, C)
    valid = candidate_valid & box_ops.small_box_mask(boxes, min_size)
    valid &= scores >= tf.cast(score_threshold, tf.float32)
    classes = tf.broadcast_to(levels[None, :], tf.shape(top))  # (C,) -> (B, C)
    keep, _ = nms_ops.batched_nms(boxes, scores, classes, nms_threshold, post_nms_top_n,
                                  valid=valid, method=nms_method)  # (B, P), -1 padded
    kept = keep >= 0  # (B, P)
    safe = tf.maximum(keep, 0)  # (B, P) gatherable
    proposals = tf.where(kept[..., None], tf.gather(boxes, safe, batch_dims=1), 0.0)  # (B, P, 4)
    kept_scores = tf.where(kept, tf.gather(scores, safe, batch_dims=1), 0.0)  # (B, P)
    return {"proposals": proposals, "scores": kept_scores, "valid": kept}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ProposalGenerator(keras.layers.Layer):
    """Decode, clip, filter and NMS the RPN outputs into a static number of proposals.

    Thin wrapper over ``generate_proposals`` that picks the train/test top-n by ``training``.
    Runs in float32 whatever the global dtype policy (geometry stays float32).

    Args:
        pre_nms_top_n_train, pre_nms_top_n_test: top logits kept per level and image.
        post_nms_top_n_train, post_nms_top_n_test: P, proposals per image after NMS.
        nms_threshold, min_size, score_threshold, box_weights, scale_clip, nms_method: see
            ``generate_proposals``.

    Call:
        objectness_logits (B, N), box_deltas (B, N, 4), anchors (N, 4), level_counts (list of
        L Python ints or int tensors), image_sizes (B, 2) int (height, width), training
        (Python bool). All may be passed positionally (the layer lets Keras accept the
        Python-int counts).
    Returns:
        dict proposals (B, P, 4), scores (B, P), valid (B, P) bool; P = post_nms_top_n of the
        mode.
    """

    def __init__(self, pre_nms_top_n_train=2000, pre_nms_top_n_test=1000,
                 post_nms_top_n_train=2000, post_nms_top_n_test=1000, nms_threshold=0.7,
                 min_size=1e-3, score_threshold=0.0, box_weights=(1.0, 1.0, 1.0, 1.0),
                 scale_clip=box_ops.DEFAULT_DELTA_CLIP, nms_method="offset", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self._allow_non_tensor_positional_args = True  # level_counts: a list of Python ints
        if nms_method not in nms_ops.METHODS:
            raise ValueError(f"nms_method must be one of {nms_ops.METHODS}, got {nms_method!r}")
        self.pre_nms_top_n_train = int(pre_nms_top_n_train)
        self.pre_nms_top_n_test = int(pre_nms_top_n_test)
        self.post_nms_top_n_train = int(post_nms_top_n_train)
        self.post_nms_top_n_test = int(post_nms_top_n_test)
        self.nms_threshold = float(nms_threshold)
        self.min_size = float(min_size)
        self.score_threshold = float(score_threshold)
        self.box_weights = tuple(float(w) for w in box_weights)
        self.scale_clip = float(scale_clip)
        self.nms_method = nms_method

    def call(self, objectness_logits, box_deltas, anchors, level_counts, image_sizes,
             training=False):
        training = bool(training)  # Python bool: the output size P depends on it
        return generate_proposals(
            objectness_logits, box_deltas, anchors, level_counts, image_sizes,
            pre_nms_top_n=self.pre_nms_top_n_train if training else self.pre_nms_top_n_test,
            post_nms_top_n=self.post_nms_top_n_train if training else self.post_nms_top_n_test,
            nms_threshold=self.nms_threshold, min_size=self.min_size,
            score_threshold=self.score_threshold, box_weights=self.box_weights,
            scale_clip=self.scale_clip, nms_method=self.nms_method)

    def get_config(self):
        config = super().get_config()
        config.update({
            "pre_nms_top_n_train": self.pre_nms_top_n_train,
            "pre_nms_top_n_test": self.pre_nms_top_n_test,
            "post_nms_top_n_train": self.post_nms_top_n_train,
            "post_nms_top_n_test": self.post_nms_top_n_test,
            "nms_threshold": self.nms_threshold, "min_size": self.min_size,
            "score_threshold": self.score_threshold, "box_weights": list(self.box_weights),
            "scale_clip": self.scale_clip, "nms_method": self.nms_method,
        })
        return config


def assign_anchor_targets(anchors, gt_boxes, gt_valid, fg_iou_threshold=0.7,
                          bg_iou_threshold=0.3, allow_low_quality_matches=True,
                          box_weights=(1.0, 1.0, 1.0, 1.0)):
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
                positive_fraction=0.5, box_weights=(1.0, 1.0, 1.0, 1.0), seed=(0, 0)):
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
