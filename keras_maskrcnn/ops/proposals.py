"""Region proposals from the RPN outputs: top-k per level, decode, clip, filter, NMS.

Method: the proposal step of Ren et al. 2015 (Faster R-CNN, §3.1 and §3.3: anchors regressed
by the RPN's deltas, clipped to the image, NMS at IoU 0.7, the top-N kept), over the pyramid
levels as in Lin et al. 2017 (FPN, §4.1) and He et al. 2017 (Mask R-CNN, §3.1: 1000 proposals
at inference); the per-level top-k before NMS and the 2000 training proposals are
torchvision's (and Detectron's).

Conventions pinned here (tests/layers/test_rpn.py checks each against
``torchvision.models.detection.rpn``):
    * Levels are taken in ``ops.anchors.feature_keys`` order (``level_counts`` N_l, the
      order of ``anchors.multilevel_anchors`` for P2..P6); within a level the order is
      torchvision's: location row-major (y, then x), anchor minor.
    * ``generate_proposals``: top ``pre_nms_top_n`` logits per level and image
      (``min(pre_nms_top_n, N_l)``), decode (``decode_boxes`` with ``box_weights`` and
      ``scale_clip``), clip to each image's unpadded (height, width), drop boxes with a side
      < ``min_size``, drop sigmoid probabilities < ``score_threshold`` (``>=`` keeps, as
      torchvision), class-aware NMS with the level as the class, keep the first
      ``post_nms_top_n``. Logits and deltas are detached (no gradient through proposals).
    * ``proposal_filter="detectron2"`` (``find_top_rpn_proposals``): sides must be > min_size
      (``Boxes.nonempty``; detectron2's min size is 0) and NMS ranks by the logits, which keep
      the order sigmoid loses where it saturates to 1.0 in float32 (logits above ~17); the
      score threshold is not applied (detectron2 has none; 0 never removes anything).

Shape shorthand:
    B  batch size
    N  anchors per image, all levels concatenated (N = sum_l H_l * W_l * A)
    L  pyramid levels ("P2".."P6" -> L = 5)
    C  candidates per image after the per-level top-n (sum_l min(pre_nms_top_n, N_l))
    P  proposals per image (post_nms_top_n, static)
"""
import numbers

import tensorflow as tf

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops

PROPOSAL_FILTERS = ("torchvision", "detectron2")  # generate_proposals' proposal_filter


def top_k_per_level(logits, level_counts, pre_nms_top_n):
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
                       score_threshold=0.0, box_weights=box_ops.RPN_BOX_WEIGHTS,
                       scale_clip=box_ops.DEFAULT_DELTA_CLIP, nms_method="offset",
                       proposal_filter="torchvision"):
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
        proposal_filter: "torchvision" or "detectron2" (module docstring).

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
    top, candidate_valid, levels = top_k_per_level(logits, list(level_counts), pre_nms_top_n)
    top_logits = tf.gather(logits, top, batch_dims=1)  # (B, C)
    top_deltas = tf.gather(deltas, top, batch_dims=1)  # (B, C, 4)
    top_anchors = tf.gather(anchors, top)  # (B, C, 4)
    boxes = box_ops.decode_boxes(top_deltas, top_anchors, box_weights, scale_clip)  # (B, C, 4)
    image_sizes = tf.cast(image_sizes, tf.float32)
    boxes = box_ops.clip_boxes(boxes, image_sizes[:, 0:1], image_sizes[:, 1:2])  # sizes (B, 1)
    scores = tf.sigmoid(top_logits)  # (B, C)
    if proposal_filter not in PROPOSAL_FILTERS:
        raise ValueError(f"proposal_filter must be one of {PROPOSAL_FILTERS}, got "
                         f"{proposal_filter!r}")
    detectron2 = proposal_filter == "detectron2"
    valid = candidate_valid & box_ops.small_box_mask(boxes, min_size, strict=detectron2)
    if not detectron2:
        valid &= scores >= tf.cast(score_threshold, tf.float32)
    classes = tf.broadcast_to(levels[None, :], tf.shape(top))  # (C,) -> (B, C)
    keep, _ = nms_ops.batched_nms(boxes, top_logits if detectron2 else scores, classes,
                                  nms_threshold, post_nms_top_n, valid=valid,
                                  method=nms_method)  # (B, P), -1 padded
    kept = keep >= 0  # (B, P)
    safe = tf.maximum(keep, 0)  # (B, P) gatherable
    proposals = tf.where(kept[..., None], tf.gather(boxes, safe, batch_dims=1), 0.0)  # (B, P, 4)
    kept_scores = tf.where(kept, tf.gather(scores, safe, batch_dims=1), 0.0)  # (B, P)
    return {"proposals": proposals, "scores": kept_scores, "valid": kept}
