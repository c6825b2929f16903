"""RPN: head, proposal generator and the torchvision RPN-head converter (anchor targets:
tests/ops/test_anchor_targets.py).

Oracle: ``torchvision.models.detection.rpn`` (RPNHead, AnchorGenerator, RegionProposalNetwork)
with randomised weights (fixed seed) on random FPN-like feature maps for a padded batch of two
images 256x320 whose unpadded sizes differ ((256, 320) and (230, 300)).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.convert.torchvision import load_rpn_head_weights
from keras_maskrcnn.layers.rpn import ProposalGenerator, RPNHead
from keras_maskrcnn.ops import anchors as anchor_ops
from keras_maskrcnn.ops.anchors import feature_keys, level_sizes
from keras_maskrcnn.ops.proposals import generate_proposals
from support.rpn import CHANNELS, IMAGE_SIZES, LEVELS, NUM_ANCHORS, PADDED, box_iou, rpn_setup


def _torch_filter(torch, s, pre, post, training=False, score=0.0):
    """torchvision's filter_proposals on the cached head outputs -> lists of numpy arrays."""
    rpn = s["make_rpn"](dict(training=pre, testing=pre), dict(training=post, testing=post), score)
    rpn.train(training)
    with torch.no_grad():
        proposals = rpn.box_coder.decode(s["torch_deltas"], s["torch_anchors"]).view(2, -1, 4)
        boxes, scores = rpn.filter_proposals(proposals, s["torch_logits"],
                                             s["images"].image_sizes, s["counts"])
    return [b.numpy() for b in boxes], [c.numpy() for c in scores]


def _matched_fraction(ours, theirs, ours_scores=None, theirs_scores=None):
    """Fraction of torchvision proposals with one of ours at IoU >= 0.99 (and equal score)."""
    if len(theirs) == 0:
        return 1.0 if len(ours) == 0 else 0.0
    if len(ours) == 0:
        return 0.0
    iou = box_iou(theirs, ours)
    ok = iou >= 0.99
    if ours_scores is not None:
        ok &= np.abs(theirs_scores[:, None] - ours_scores[None, :]) < 1e-5
    return float(np.mean(ok.any(axis=1)))


def _ours_proposals(s, pre, post, training=False, method="torchvision_cpu", sizes=IMAGE_SIZES,
                    logits=None, deltas=None, score=0.0):
    layer = ProposalGenerator(pre, pre, post, post, 0.7, 1e-3, score, nms_method=method)
    out = layer(s["logits"] if logits is None else logits,
                s["deltas"] if deltas is None else deltas, s["anchors"],
                level_counts=s["counts"], image_sizes=sizes, training=training)
    return {k: v.numpy() for k, v in out.items()}


def _per_image(out, b):
    n = int(out["valid"][b].sum())
    assert out["valid"][b, :n].all() and not out["valid"][b, n:].any()  # kept ones first
    assert not out["proposals"][b, n:].any() and not out["scores"][b, n:].any()  # zero padding
    return out["proposals"][b, :n], out["scores"][b, :n]


# --------------------------------------------------------------------------- head + converter


@pytest.mark.parametrize("conv_depth", [1, 2])
def test_head_matches_torchvision(torch, torchvision, conv_depth):
    s = rpn_setup(torch, torchvision, conv_depth)
    head = RPNHead(NUM_ANCHORS, num_convs=conv_depth)
    consumed = load_rpn_head_weights(head, s["head"].state_dict(), prefix="")  # builds it
    assert consumed == set(s["head"].state_dict())
    logits, deltas = head(s["tf_feats"])
    assert logits.dtype == tf.float32 and deltas.dtype == tf.float32
    assert logits.shape == (2, sum(s["counts"])) and deltas.shape == (2, sum(s["counts"]), 4)
    np.testing.assert_allclose(logits.numpy(), s["logits"], atol=1e-5)
    np.testing.assert_allclose(deltas.numpy(), s["deltas"], atol=1e-5)
    assert level_sizes(s["tf_feats"], NUM_ANCHORS) == s["counts"]
    # mutation: the other delta channel layout (c * A + a) would not match torchvision
    p2 = s["counts"][0]
    wrong = deltas.numpy()[:, :p2].reshape(2, -1, 4, NUM_ANCHORS).transpose(0, 1, 3, 2)
    assert not np.allclose(wrong.reshape(2, -1, 4), s["deltas"][:, :p2], atol=1e-3)


def test_feature_key_order_and_shuffled_dict(torch, torchvision):
    assert feature_keys({"P10": 0, "P3": 0, "P2": 0, "P9": 0}) == ["P2", "P3", "P9", "P10"]
    s = rpn_setup(torch, torchvision)
    head = RPNHead(NUM_ANCHORS)
    load_rpn_head_weights(head, s["head"].state_dict(), prefix="")
    shuffled = {k: s["tf_feats"][k] for k in reversed(LEVELS)}  # insertion order ignored
    np.testing.assert_allclose(head(shuffled)[0].numpy(), s["logits"], atol=1e-5)


def test_converter_old_layout_prefix_and_errors(torch, torchvision):
    s = rpn_setup(torch, torchvision)
    new = {"rpn.head." + k: v for k, v in s["head"].state_dict().items()}
    old = {k.replace("conv.0.0.", "conv."): v for k, v in new.items()}  # torchvision < 0.13
    head = RPNHead(NUM_ANCHORS)
    head.build({"P2": (None, None, None, CHANNELS)})
    assert load_rpn_head_weights(head, old) == set(old)
    np.testing.assert_allclose(head(s["tf_feats"])[0].numpy(), s["logits"], atol=1e-5)

    fresh = RPNHead(NUM_ANCHORS)
    fresh.build({"P2": (None, None, None, CHANNELS)})
    before = [w.numpy().copy() for w in fresh.weights]
    with pytest.raises(KeyError, match="bbox_pred.bias"):
        load_rpn_head_weights(fresh, {k: v for k, v in new.items() if "bbox_pred.bias" not in k})
    with pytest.raises(ValueError, match="unexpected"):
        load_rpn_head_weights(fresh, dict(new, **{"rpn.head.extra.weight": np.zeros(1)}))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_rpn_head_weights(RPNHead(4), new)  # 4 anchors vs 3 in the checkpoint
    with pytest.raises(ValueError, match="single-conv"):
        load_rpn_head_weights(RPNHead(NUM_ANCHORS, num_convs=2), old)
    for b, w in zip(before, fresh.weights):  # all or nothing: untouched after the failures
        np.testing.assert_array_equal(b, w.numpy())


# --------------------------------------------------------------------------- proposals


@pytest.mark.parametrize("pre,post", [(1000, 1000), (200, 100)])
@pytest.mark.parametrize("method", ["torchvision_cpu", "offset"])
def test_proposals_match_torchvision_eval(torch, torchvision, pre, post, method):
    s = rpn_setup(torch, torchvision)
    theirs, their_scores = _torch_filter(torch, s, pre, post)
    out = _ours_proposals(s, pre, post, method=method)
    assert out["proposals"].shape == (2, post, 4) and out["scores"].shape == (2, post)
    for b in range(2):
        boxes, scores = _per_image(out, b)
        assert _matched_fraction(boxes, theirs[b], scores, their_scores[b]) >= 0.99
        if method == "torchvision_cpu":  # bit-exact path: same boxes in the same order
            assert len(boxes) == len(theirs[b])
            np.testing.assert_allclose(boxes, theirs[b], rtol=0, atol=1e-4)
            np.testing.assert_allclose(scores, their_scores[b], rtol=0, atol=1e-6)
        assert boxes[:, 2].max() <= IMAGE_SIZES[b, 1] and boxes[:, 3].max() <= IMAGE_SIZES[b, 0]


def test_proposals_training_mode_top_n(torch, torchvision):
    s = rpn_setup(torch, torchvision)
    theirs, their_scores = _torch_filter(torch, s, 300, 200, training=True)
    layer = ProposalGenerator(300, 1000, 200, 1000, 0.7, 1e-3, 0.0, nms_method="torchvision_cpu")
    kwargs = dict(level_counts=s["counts"], image_sizes=IMAGE_SIZES)
    out = layer(s["logits"], s["deltas"], s["anchors"], s["counts"], IMAGE_SIZES,
                training=True)  # positional Python-int counts are accepted
    assert out["proposals"].shape == (2, 200, 4)
    for b in range(2):
        boxes, scores = _per_image({k: v.numpy() for k, v in out.items()}, b)
        np.testing.assert_allclose(boxes, theirs[b], rtol=0, atol=1e-4)
        np.testing.assert_allclose(scores, their_scores[b], rtol=0, atol=1e-6)
    assert layer(s["logits"], s["deltas"], s["anchors"], **kwargs)["scores"].shape == (2, 1000)


def test_proposals_score_threshold_matches_torchvision(torch, torchvision):
    s = rpn_setup(torch, torchvision)
    _, unfiltered = _torch_filter(torch, s, 1000, 1000)
    threshold = float(np.median(unfiltered[0]))  # about half the proposals go
    theirs, _ = _torch_filter(torch, s, 1000, 1000, score=threshold)
    out = _ours_proposals(s, 1000, 1000, score=threshold)
    for b in range(2):
        boxes, scores = _per_image(out, b)
        assert len(boxes) == len(theirs[b]) < 1000 and scores.min() >= threshold
        np.testing.assert_allclose(boxes, theirs[b], rtol=0, atol=1e-4)


def test_proposals_mutations_fail(torch, torchvision):
    """The comparison notices clipping to the padded size, or one global top-n over levels."""
    s = rpn_setup(torch, torchvision)
    theirs, _ = _torch_filter(torch, s, 200, 100)
    padded = np.array([PADDED, PADDED], np.int32)
    wrong_clip = _ours_proposals(s, 200, 100, sizes=padded)
    wrong_boxes = _per_image(wrong_clip, 1)[0]
    assert _matched_fraction(wrong_boxes, theirs[1]) < 0.99  # the acceptance criterion fails
    assert wrong_boxes.shape != theirs[1].shape or not np.allclose(wrong_boxes, theirs[1])
    theirs, _ = _torch_filter(torch, s, 50, 100)
    per_level = _ours_proposals(s, 50, 100)  # reference: per-level top-n matches
    assert _matched_fraction(_per_image(per_level, 0)[0], theirs[0]) >= 0.99
    layer = ProposalGenerator(50 * 5, 50 * 5, 100, 100, 0.7, nms_method="torchvision_cpu")
    global_top = layer(s["logits"], s["deltas"], s["anchors"],
                       level_counts=[sum(s["counts"])], image_sizes=IMAGE_SIZES)
    global_top = {k: v.numpy() for k, v in global_top.items()}
    assert _matched_fraction(_per_image(global_top, 0)[0], theirs[0]) < 0.9


def test_end_to_end_with_our_head(torch, torchvision):
    s = rpn_setup(torch, torchvision)
    rpn = s["make_rpn"](dict(training=1000, testing=1000), dict(training=1000, testing=1000))
    with torch.no_grad():
        theirs, _ = rpn.eval()(s["images"], s["feats"])
    head = RPNHead(NUM_ANCHORS)
    load_rpn_head_weights(head, s["head"].state_dict(), prefix="")
    logits, deltas = head(s["tf_feats"])
    out = ProposalGenerator(nms_method="offset")(
        logits, deltas, s["anchors"], level_counts=level_sizes(s["tf_feats"], NUM_ANCHORS),
        image_sizes=IMAGE_SIZES)
    out = {k: v.numpy() for k, v in out.items()}
    for b in range(2):
        assert _matched_fraction(_per_image(out, b)[0], theirs[b].numpy()) >= 0.99


def test_hand_computed_small_case():
    """One level, 4 anchors of 10x10, zero deltas: clip, min size, score threshold, NMS, pad."""
    anchors = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40],
                        [50, 0, 60, 10]], np.float32)
    logits = np.array([[3.0, 2.0, 1.0, 0.0]], np.float32)  # sigmoid: .953 .881 .731 .5
    deltas = np.zeros((1, 4, 4), np.float32)
    out = generate_proposals(logits, deltas, anchors, [4], [[35, 50]], pre_nms_top_n=3,
                             post_nms_top_n=3, nms_threshold=0.7, min_size=1.0,
                             score_threshold=0.6)
    # anchor 1 is suppressed by 0 (IoU 9/11 > 0.7); anchor 2 is clipped to (30, 30, 40, 35);
    # anchor 3 is not in the top 3 (and would be 0-wide after clipping to width 50)
    np.testing.assert_allclose(out["proposals"].numpy()[0],
                               [[0, 0, 10, 10], [30, 30, 40, 35], [0, 0, 0, 0]])
    np.testing.assert_allclose(out["scores"].numpy()[0], [1 / (1 + np.exp(-3)),
                                                          1 / (1 + np.exp(-1)), 0], rtol=1e-6)
    np.testing.assert_array_equal(out["valid"].numpy()[0], [True, True, False])
    # score threshold keeps ">=": a threshold exactly at sigmoid(1) keeps anchor 2
    thr = float(tf.sigmoid(tf.constant(1.0)).numpy())
    kept = generate_proposals(logits, deltas, anchors, [4], [[35, 50]], 3, 3, 0.7, 1.0, thr)
    assert kept["valid"].numpy()[0].sum() == 2
    # min size: clipping to height 31 leaves anchor 2 one pixel high; min_size 1.5 drops it
    small = generate_proposals(logits, deltas, anchors, [4], [[31, 50]], 3, 3, 0.7, 1.5, 0.0)
    assert small["valid"].numpy()[0].sum() == 1
    # nothing survives: everything padded, no NaN
    empty = generate_proposals(logits, deltas, anchors, [4], [[35, 50]], 3, 3, 0.7, 1.0, 0.99)
    assert not empty["valid"].numpy().any() and not empty["proposals"].numpy().any()


def test_proposals_no_gradient():
    anchors = tf.constant([[0, 0, 10, 10], [20, 20, 30, 30]], tf.float32)
    logits = tf.Variable([[1.0, 2.0]])
    deltas = tf.Variable(tf.zeros((1, 2, 4)))
    with tf.GradientTape(persistent=True) as tape:
        out = generate_proposals(logits, deltas, anchors, [2], [[40, 40]], 2, 2, 0.7)
        total = tf.reduce_sum(out["proposals"]) + tf.reduce_sum(out["scores"])
    assert tape.gradient(total, logits) is None and tape.gradient(total, deltas) is None


def test_tf_function_unknown_image_size(torch, torchvision):
    """Dynamic H, W: dynamic level counts (padded top-k) give the static path's proposals."""
    s = rpn_setup(torch, torchvision)
    head = RPNHead(NUM_ANCHORS)
    load_rpn_head_weights(head, s["head"].state_dict(), prefix="")
    layer = ProposalGenerator(200, 200, 100, 100, nms_method="offset")
    spec = {k: tf.TensorSpec([None, None, None, CHANNELS]) for k in LEVELS}

    @tf.function(input_signature=[spec, tf.TensorSpec([None, 2], tf.int32),
                                  tf.TensorSpec([2], tf.int32)])
    def run(features, image_sizes, padded):
        logits, deltas = head(features)
        counts = level_sizes(features, NUM_ANCHORS)
        assert not any(isinstance(c, int) for c in counts)  # really dynamic
        sizes = [tuple(tf.unstack(tf.shape(features[k])[1:3])) for k in LEVELS]
        anchors = tf.concat(anchor_ops.multilevel_anchors(padded[0], padded[1], sizes), 0)
        out = layer(logits, deltas, anchors, level_counts=counts, image_sizes=image_sizes)
        assert out["proposals"].shape[1:] == (100, 4)  # static P
        return out

    dynamic = run(s["tf_feats"], IMAGE_SIZES, tf.constant(PADDED))
    logits, deltas = head(s["tf_feats"])
    static = layer(logits, deltas, s["anchors"], level_counts=s["counts"],
                   image_sizes=IMAGE_SIZES)
    for key in ("proposals", "scores", "valid"):
        np.testing.assert_array_equal(dynamic[key].numpy(), static[key].numpy())
    # a level smaller than pre_nms_top_n (P6: 60 anchors < 200) is padded, not duplicated
    assert s["counts"][-1] < 200


# --------------------------------------------------------------------------- serialization


def test_get_config_round_trip(torch, torchvision):
    s = rpn_setup(torch, torchvision)
    head = RPNHead(NUM_ANCHORS, num_convs=2, name="rpn_head")
    head(s["tf_feats"])
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(clone, RPNHead) and clone.get_config() == head.get_config()
    clone(s["tf_feats"])
    clone.set_weights(head.get_weights())
    np.testing.assert_array_equal(clone(s["tf_feats"])[1].numpy(), head(s["tf_feats"])[1].numpy())

    layer = ProposalGenerator(10, 20, 30, 40, 0.5, 0.1, 0.2, (2, 2, 1, 1), 3.0, "per_class")
    clone = ProposalGenerator.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.box_weights == (2, 2, 1, 1)
    with pytest.raises(ValueError, match="nms_method"):
        ProposalGenerator(nms_method="fast")


def test_head_mixed_precision_outputs_float32(torch, torchvision):
    s = rpn_setup(torch, torchvision)
    head = RPNHead(NUM_ANCHORS, dtype="mixed_bfloat16")
    logits, deltas = head(s["tf_feats"])
    assert logits.dtype == tf.float32 and deltas.dtype == tf.float32
    assert head.convs[0].compute_dtype == "bfloat16"
    out = ProposalGenerator(50, 50, 20, 20)(tf.cast(logits, tf.bfloat16), deltas, s["anchors"],
                                            level_counts=s["counts"], image_sizes=IMAGE_SIZES)
    assert out["proposals"].dtype == tf.float32


def test_symbolic_shapes_and_tensor_level_counts():
    """Symbolic (KerasTensor) shapes at sizes not divisible by 32; an (L,) count tensor works."""
    static = {k: keras.Input((h, h + 3, 8), name=k) for k, h in (("P2", 13), ("P3", 7))}
    logits, deltas = RPNHead(3)(static)
    assert logits.shape == (None, 13 * 16 * 3 + 7 * 10 * 3) and deltas.shape[1:] == (834, 4)
    dynamic = {k: keras.Input((None, None, 8), name=k) for k in ("P2", "P3")}
    logits, deltas = RPNHead(3)(dynamic)
    assert logits.shape == (None, None) and deltas.shape == (None, None, 4)
    anchors = tf.constant([[0, 0, 10, 10]] * 6, tf.float32) + 20.0 * tf.range(6.0)[:, None]
    scores = tf.constant([[0.0, 1.0, 2.0, 3.0, 5.0, 4.0]])
    out = generate_proposals(scores, tf.zeros((1, 6, 4)), anchors, tf.constant([4, 2]),
                             [[200, 200]], pre_nms_top_n=1, post_nms_top_n=3, nms_threshold=0.7)
    np.testing.assert_allclose(out["proposals"].numpy()[0, :2], [[80, 80, 90, 90],
                                                                 [60, 60, 70, 70]])
    assert out["valid"].numpy().tolist() == [[True, True, False]]  # top 1 of each level


def _d2_find_top_rpn_proposals(torch, torchvision, logits, boxes, counts, image_size, pre,
                               post, nms, min_size=0.0):
    """detectron2's find_top_rpn_proposals for one image, restated: top ``pre`` logits per
    level, clip, keep sides > min_size (Boxes.nonempty), NMS per level ranked by logits."""
    logits, boxes = torch.from_numpy(logits), torch.from_numpy(boxes)
    scores, picked, levels, start = [], [], [], 0
    for level, count in enumerate(counts):
        top_scores, top = logits[start:start + count].topk(min(pre, count))
        scores.append(top_scores)
        picked.append(boxes[start:start + count][top])
        levels.append(torch.full((len(top),), level))
        start += count
    scores, picked, levels = torch.cat(scores), torch.cat(picked), torch.cat(levels)
    h, w = image_size
    picked = torch.stack([picked[:, 0].clamp(0, w), picked[:, 1].clamp(0, h),
                          picked[:, 2].clamp(0, w), picked[:, 3].clamp(0, h)], 1)
    keep = ((picked[:, 2] - picked[:, 0]) > min_size) & ((picked[:, 3] - picked[:, 1]) > min_size)
    picked, scores, levels = picked[keep], scores[keep], levels[keep]
    kept = torchvision.ops.batched_nms(picked, scores, levels, nms)[:post]
    return picked[kept].numpy(), scores[kept].numpy()


def test_detectron2_proposal_filter_matches_find_top_rpn_proposals(torch, torchvision):
    """Saturated logits (sigmoid 1.0 in float32, ranked apart only by the logits) on
    overlapping boxes and on two levels, and boxes that clip to zero width outside the image
    (kept by torchvision's >= 0, dropped by detectron2's > 0)."""
    rng = np.random.default_rng(7)
    counts = [60, 30]
    anchors = np.concatenate([rng.uniform(0, 60, (90, 2)), rng.uniform(0, 60, (90, 2))], 1)
    anchors = np.concatenate([anchors[:, :2], anchors[:, :2] + 4 + anchors[:, 2:] / 3], 1)
    anchors[:10] = [[20.0, 20.0, 40.0, 40.0]] * 10  # a cluster, with jittered deltas below
    anchors[10:15] = [[85.0, 10.0, 95.0, 20.0]] * 5  # right of the 80-wide image
    anchors = anchors.astype(np.float32)
    logits = rng.normal(0, 3, (1, 90)).astype(np.float32)
    logits[0, :10] = 20.0 + np.arange(10, dtype=np.float32)[::-1] * 0.5  # all sigmoid 1.0
    logits[0, 10:15] = 25.0  # outside boxes score highest
    logits[0, 60:63] = 30.0 + np.arange(3)  # level 2: above level 1's saturated scores
    deltas = rng.normal(0, 0.05, (1, 90, 4)).astype(np.float32)
    deltas[0, :10, :2] = rng.normal(0, 0.12, (10, 2))
    image_size = (70, 80)
    out = generate_proposals(logits, deltas, anchors, counts, [image_size], pre_nms_top_n=40,
                             post_nms_top_n=20, nms_threshold=0.5, min_size=0.0,
                             nms_method="torchvision_cpu", proposal_filter="detectron2")
    decoded = anchor_ops_decode(deltas[0], anchors)
    want, want_logits = _d2_find_top_rpn_proposals(torch, torchvision, logits[0], decoded,
                                                    counts, image_size, 40, 20, 0.5)
    n = int(out["valid"].numpy().sum())
    assert n == len(want)
    np.testing.assert_allclose(out["proposals"].numpy()[0, :n], want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["scores"].numpy()[0, :n], 1 / (1 + np.exp(-want_logits)),
                               rtol=1e-6)
    torchvision_rule = generate_proposals(logits, deltas, anchors, counts, [image_size], 40, 20,
                                          0.5, 0.0, nms_method="torchvision_cpu")
    kept = torchvision_rule["proposals"].numpy()[0][torchvision_rule["valid"].numpy()[0]]
    assert ((kept[:, 2] - kept[:, 0]) == 0).any()  # zero-width boxes survive >= 0
    sigmoid_ranked = generate_proposals(logits, deltas, anchors, counts, [image_size], 40, 20,
                                        0.5, 1e-30, nms_method="torchvision_cpu")
    assert not np.array_equal(sigmoid_ranked["proposals"].numpy()[0, :n], want)  # ties
    with pytest.raises(ValueError, match="proposal_filter"):
        generate_proposals(logits, deltas, anchors, counts, [image_size], 40, 20, 0.5,
                           proposal_filter="d2")
    layer = ProposalGenerator(proposal_filter="detectron2", min_size=0.0)
    assert ProposalGenerator.from_config(layer.get_config()).proposal_filter == "detectron2"


def anchor_ops_decode(deltas, anchors):
    """detectron2's Box2BoxTransform.apply_deltas with weights (1, 1, 1, 1), in NumPy float32."""
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ctr_x, ctr_y = anchors[:, 0] + 0.5 * widths, anchors[:, 1] + 0.5 * heights
    clip = np.float32(np.log(1000.0 / 16))
    dw, dh = np.minimum(deltas[:, 2], clip), np.minimum(deltas[:, 3], clip)
    x, y = deltas[:, 0] * widths + ctr_x, deltas[:, 1] * heights + ctr_y
    w, h = np.exp(dw) * widths, np.exp(dh) * heights
    return np.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], 1).astype(np.float32)
