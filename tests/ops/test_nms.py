"""keras_maskrcnn.ops.nms against torchvision.ops.nms / batched_nms and a numpy loop oracle."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import nms as NMS

ALL_METHODS = NMS.METHODS


def clustered_boxes(rng, n, num_clusters=40, scale=800.0, quantize=True):
    """(n, 4) float32 xyxy boxes in heavily overlapping clusters, clipped to [0, scale].

    quantize=True rounds to 1/8 pixel: then torchvision's class offsets add no rounding, so
    both torchvision code paths (and all our methods) must agree bit for bit.
    """
    centres = rng.uniform(0, scale, (num_clusters, 2))
    sizes = rng.uniform(10, 200, (num_clusters, 2))
    k = rng.integers(0, num_clusters, n)
    ctr = centres[k] + rng.normal(0, 0.15, (n, 2)) * sizes[k]
    wh = sizes[k] * rng.uniform(0.7, 1.3, (n, 2))
    boxes = np.clip(np.concatenate([ctr - wh / 2, ctr + wh / 2], 1), 0, scale)
    if quantize:
        boxes = np.round(boxes * 8) / 8
    return boxes.astype(np.float32)


def oracle_nms(boxes, scores, classes=None, thr=0.5, ge=False, ignore_classes=False):
    """Slow greedy NMS with torchvision's float32 arithmetic; returns all kept, in order.

    Stable descending sort (ties -> lower index), IoU in float32, compared in float64.
    ``ge`` (IoU >= thr) and ``ignore_classes`` are deliberate mutations.
    """
    boxes = np.asarray(boxes, np.float32)
    classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes)
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            ovr = (inter / (areas[i] + areas - inter)).astype(np.float64)
        hit = ovr >= thr if ge else ovr > thr
        if not ignore_classes:
            hit &= classes == classes[i]
        suppressed |= hit
    return np.array(keep, np.int64)


def tv_batched(torch, torchvision, boxes, scores, classes, thr, valid=None):
    """torchvision.ops.batched_nms on the valid subset, mapped back to indices into N."""
    idx = np.arange(len(boxes)) if valid is None else np.flatnonzero(valid)
    keep = torchvision.ops.batched_nms(
        torch.from_numpy(boxes[idx]),
        torch.from_numpy(scores[idx]),
        torch.from_numpy(np.asarray(classes)[idx].astype(np.int64)),
        thr,
    ).numpy()
    return idx[keep]


def ours(boxes, scores, classes, thr, max_output, method="offset", **kw):
    """Single image through batched_nms -> the valid indices only (checks the -1 padding)."""
    if kw.get("valid") is not None:
        kw["valid"] = np.asarray(kw["valid"])[None]  # (N,) -> (1, N)
    indices, num_valid = NMS.batched_nms(
        boxes[None], scores[None], np.asarray(classes)[None], thr, max_output, method=method, **kw
    )
    indices, n = indices.numpy()[0], int(num_valid.numpy()[0])
    assert indices.shape == (max_output,)
    assert (indices[n:] == -1).all() and (indices[:n] >= 0).all()
    return indices[:n]


# ---------------------------------------------------------------- hand-computed cases


def test_hand_computed_threshold_ties_and_order():
    boxes = np.array(
        [
            [0, 0, 2, 2],  # 0
            [0, 0, 2, 1],  # 1: IoU with 0 exactly 0.5
            [0, 0, 2, 2],  # 2: duplicate of 0, same score -> 0 wins (lower index)
            [10, 10, 12, 12],  # 3: far away
            [0, 0, 2, 1.5],  # 4: IoU with 0 = 0.75
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.9, 0.7, 0.85], np.float32)
    for method in ALL_METHODS:
        # IoU exactly 0.5 is NOT suppressed at 0.5 (strict >); 0.75 is
        np.testing.assert_array_equal(ours(boxes, scores, [0] * 5, 0.5, 5, method), [0, 1, 3])
        np.testing.assert_array_equal(ours(boxes, scores, [0] * 5, 0.49, 5, method), [0, 3])
        # box 2 alone in another class survives, and ties stay in index order
        np.testing.assert_array_equal(
            ours(boxes, scores, [0, 0, 1, 0, 0], 0.5, 5, method), [0, 2, 1, 3]
        )
    # the single-image helper
    kept, n = NMS.nms(boxes, scores, 0.5, 4)
    np.testing.assert_array_equal(kept.numpy(), [0, 1, 3, -1])
    assert int(n) == 3


def test_threshold_compared_in_float64_like_torch(torch, torchvision):
    # IoU = 30 / 100 is float32(0.3) = 0.30000001 > 0.3 (double): torch suppresses.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.3).numpy()
    np.testing.assert_array_equal(ref, [0])
    for method in ALL_METHODS:
        np.testing.assert_array_equal(ours(boxes, scores, [0, 0], 0.3, 2, method), ref)
        # a float32 threshold is honoured in float32: IoU == threshold is kept
        f32 = tf.constant(0.3, tf.float32)
        np.testing.assert_array_equal(ours(boxes, scores, [0, 0], f32, 2, method), [0, 1])
    np.testing.assert_array_equal(oracle_nms(boxes, scores, thr=0.3), ref)


def test_degenerate_boxes_never_interact(torch, torchvision):
    boxes = np.array(
        [
            [9, 9, 1, 1],  # 0: inverted; TF alone would flip it onto box 1
            [1, 1, 9, 9],  # 1
            [5, 5, 5, 9],  # 2: zero width inside box 1
            [3, 3, 3, 3],  # 3: a point ...
            [3, 3, 3, 3],  # 4: ... and its duplicate
            [2, 8, 8, 2],  # 5: inverted in y only
            [1, 1, 9, 9],  # 6: duplicate of box 1, lower score
        ],
        np.float32,
    )
    scores = np.array([0.99, 0.5, 0.9, 0.8, 0.8, 0.95, 0.4], np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(ref, [0, 5, 2, 3, 4, 1])
    np.testing.assert_array_equal(oracle_nms(boxes, scores), ref)
    classes = [0, 0, 0, 0, 0, 0, 0]
    for method in ALL_METHODS:
        np.testing.assert_array_equal(ours(boxes, scores, classes, 0.5, 7, method), ref)
    classes = [3, 0, 0, 2, 2, 1, 0]
    ref = tv_batched(torch, torchvision, boxes, scores, classes, 0.5)
    for method in ALL_METHODS:
        np.testing.assert_array_equal(ours(boxes, scores, classes, 0.5, 7, method), ref)


# ---------------------------------------------------------------- random, vs torchvision


@pytest.mark.parametrize("num_classes", [1, 80])
@pytest.mark.parametrize("n", [700, 1500])  # both sides of torchvision's 1000-box switch
def test_batched_matches_torchvision_clustered(torch, torchvision, num_classes, n):
    rng = np.random.default_rng(n + num_classes)
    boxes = clustered_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    classes = rng.integers(0, num_classes, n)
    for thr in (0.5, 0.7):
        ref = tv_batched(torch, torchvision, boxes, scores, classes, thr)
        np.testing.assert_array_equal(oracle_nms(boxes, scores, classes, thr), ref)
        assert 20 < len(ref) < n  # heavy overlap: many suppressed, many kept
        for method in ALL_METHODS:
            np.testing.assert_array_equal(ours(boxes, scores, classes, thr, len(ref), method), ref)
            # max_output smaller than the number kept: the first entries, same order
            np.testing.assert_array_equal(ours(boxes, scores, classes, thr, 17, method), ref[:17])


def test_single_image_nms_matches_torchvision(torch, torchvision):
    rng = np.random.default_rng(3)
    boxes = clustered_boxes(rng, 900, quantize=False)
    scores = rng.random(900).astype(np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.6).numpy()
    np.testing.assert_array_equal(oracle_nms(boxes, scores, thr=0.6), ref)
    kept, n = NMS.nms(boxes, scores, 0.6, 1000)
    assert int(n) == len(ref)
    np.testing.assert_array_equal(kept.numpy()[: len(ref)], ref)


def test_ties_duplicate_scores_and_boxes(torch, torchvision):
    rng = np.random.default_rng(4)
    base = clustered_boxes(rng, 300, num_clusters=10)
    boxes = np.concatenate([base, base[:100]])  # 100 exact duplicate boxes
    scores = rng.integers(0, 8, len(boxes)).astype(np.float32) / 8  # 8 distinct scores
    classes = rng.integers(0, 3, len(boxes))
    classes[300:] = classes[:100]  # duplicates share the class of their original
    ref = tv_batched(torch, torchvision, boxes, scores, classes, 0.5)  # <= 1000: stable order
    np.testing.assert_array_equal(oracle_nms(boxes, scores, classes, 0.5), ref)
    for method in ALL_METHODS:
        np.testing.assert_array_equal(ours(boxes, scores, classes, 0.5, 400, method), ref)
    ref1 = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    kept, n = NMS.nms(boxes, scores, 0.5, 400)
    np.testing.assert_array_equal(kept.numpy()[: int(n)], ref1)
    # above 1000 boxes torchvision's final sort is NOT stable: same set, same score sequence
    big = np.concatenate([boxes] * 4)
    big_scores, big_classes = np.tile(scores, 4), np.tile(classes, 4)
    ref = tv_batched(torch, torchvision, big, big_scores, big_classes, 0.5)
    got = ours(big, big_scores, big_classes, 0.5, 1600, "torchvision_cpu")
    assert sorted(got) == sorted(ref)
    np.testing.assert_array_equal(big_scores[got], big_scores[ref])
    np.testing.assert_array_equal(got, oracle_nms(big, big_scores, big_classes, 0.5))


def test_offset_rounding_reproduces_both_torchvision_paths(torch, torchvision):
    """torchvision's class offsets round coordinates (<= 1000 boxes); its per-class loop doesn't.

    Class 0 holds a box reaching x = 2**20 - 1, so class 1 is offset by 2**20 where float32
    steps by 1/8: y2 = 5.05 rounds to 5.0 and IoU 0.505 becomes exactly 0.5 (kept).
    """
    boxes = np.array([[0, 0, 2**20 - 1, 10], [0, 0, 10, 10], [0, 0, 10, 5.05]], np.float32)
    scores = np.array([0.1, 0.9, 0.8], np.float32)
    classes = np.array([0, 1, 1])
    ref_small = tv_batched(torch, torchvision, boxes, scores, classes, 0.5)
    np.testing.assert_array_equal(ref_small, [1, 2, 0])  # offset path keeps box 2
    np.testing.assert_array_equal(ours(boxes, scores, classes, 0.5, 5, "offset"), [1, 2, 0])
    np.testing.assert_array_equal(ours(boxes, scores, classes, 0.5, 5, "per_class"), [1, 0])
    got = ours(boxes, scores, classes, 0.5, 5, "torchvision_cpu")
    np.testing.assert_array_equal(got, [1, 2, 0])
    # 1001 candidates (+ 500 invalid ones, not counted): torchvision loops over classes
    rng = np.random.default_rng(5)
    extra = rng.uniform(0, 50, (1498, 2)).astype(np.float32)
    extra = np.concatenate([extra, extra + 3], 1)
    big = np.concatenate([boxes, extra])
    big_scores = np.concatenate([scores, rng.uniform(0.2, 0.7, 1498).astype(np.float32)])
    big_classes = np.concatenate([classes, np.full(1498, 2)])
    valid = np.arange(len(big)) < 1001
    ref_big = tv_batched(torch, torchvision, big, big_scores, big_classes, 0.5, valid)
    assert 2 not in ref_big and 1 in ref_big
    for method in ("per_class", "torchvision_cpu"):
        got = ours(big, big_scores, big_classes, 0.5, 1001, method, valid=valid)
        np.testing.assert_array_equal(got, ref_big)
    assert 2 in ours(big, big_scores, big_classes, 0.5, 1001, "offset", valid=valid)


def test_torchvision_cpu_bit_exact_on_float_coordinates(torch, torchvision):
    rng = np.random.default_rng(6)
    n, num_classes = 1400, 80
    boxes = np.stack([clustered_boxes(rng, n, scale=1333.0, quantize=False) for _ in range(2)])
    scores = rng.random((2, n)).astype(np.float32)
    classes = rng.integers(1, num_classes + 1, (2, n))
    valid = np.ones((2, n), bool)
    valid[0, 900:] = False  # image 0: 900 candidates (offset path), image 1: 1400
    indices, num_valid = NMS.batched_nms(
        boxes, scores, classes, 0.5, 300, valid=valid, method="torchvision_cpu"
    )
    for b in range(2):
        ref = tv_batched(torch, torchvision, boxes[b], scores[b], classes[b], 0.5, valid[b])
        got = indices.numpy()[b][: int(num_valid.numpy()[b])]
        np.testing.assert_array_equal(got, ref[:300])


# ---------------------------------------------------------------- batching, masks, edge cases


def test_batch_with_valid_mask_score_threshold_and_empty(torch, torchvision):
    rng = np.random.default_rng(7)
    n = 60
    boxes = np.stack([clustered_boxes(rng, n, num_clusters=5) for _ in range(3)])
    scores = rng.random((3, n)).astype(np.float32)
    scores[1, :10] = -np.inf  # valid -inf scores are ordinary, lowest scores
    classes = rng.integers(0, 4, (3, n))
    valid = np.zeros((3, n), bool)
    valid[1, :35] = True  # image 0: nothing valid; image 1: 35; image 2: all
    valid[2] = True
    valid[2, 5] = False
    for method in ALL_METHODS:
        indices, num_valid = NMS.batched_nms(
            boxes, scores, classes, 0.5, 40, valid=valid, method=method
        )
        assert indices.shape == (3, 40) and indices.dtype == tf.int32
        assert int(num_valid[0]) == 0 and (indices.numpy()[0] == -1).all()
        for b in (1, 2):
            ref = tv_batched(torch, torchvision, boxes[b], scores[b], classes[b], 0.5, valid[b])
            np.testing.assert_array_equal(indices.numpy()[b][: int(num_valid[b])], ref[:40])
            assert (indices.numpy()[b][int(num_valid[b]) :] == -1).all()
        assert 5 not in indices.numpy()[2]
        # score_threshold: only score > threshold are candidates (0.5 itself excluded)
        thr_scores = scores.copy()
        thr_scores[2, 7] = 0.5
        indices, num_valid = NMS.batched_nms(
            boxes, thr_scores, classes, 0.5, 40, score_threshold=0.5, method=method
        )
        for b in range(3):
            keep = thr_scores[b] > 0.5
            ref = tv_batched(torch, torchvision, boxes[b], thr_scores[b], classes[b], 0.5, keep)
            np.testing.assert_array_equal(indices.numpy()[b][: int(num_valid[b])], ref[:40])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_empty_input(method):
    indices, num_valid = NMS.batched_nms(
        np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.float32),
        np.zeros((2, 0), np.int32), 0.5, 5, method=method,
    )
    np.testing.assert_array_equal(indices.numpy(), -np.ones((2, 5)))
    np.testing.assert_array_equal(num_valid.numpy(), [0, 0])
    kept, n = NMS.nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5, 3)
    np.testing.assert_array_equal(kept.numpy(), [-1, -1, -1])
    assert int(n) == 0


def test_negative_coordinates_keep_classes_apart():
    # torchvision's offsets (max + 1) would let classes overlap below -1; ours never do
    boxes = np.array([[-100, -100, -50, -50], [-98, -98, -50, -50], [-60, -60, 0, 0]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 1, 0])
    ref = oracle_nms(boxes, scores, classes)
    np.testing.assert_array_equal(ref, [0, 1, 2])
    for method in ALL_METHODS:
        np.testing.assert_array_equal(ours(boxes, scores, classes, 0.5, 3, method), ref)


def test_works_in_tf_function_with_unknown_sizes():
    rng = np.random.default_rng(8)
    for method in ALL_METHODS:
        fn = tf.function(
            lambda b, s, c, m=method: NMS.batched_nms(b, s, c, 0.5, 25, method=m),
            input_signature=[
                tf.TensorSpec([None, None, 4], tf.float32),
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None, None], tf.int32),
            ],
        )
        for n in (0, 30, 200):
            boxes = np.stack([clustered_boxes(rng, n, num_clusters=8) for _ in range(2)])
            scores = rng.random((2, n)).astype(np.float32)
            classes = rng.integers(0, 5, (2, n)).astype(np.int32)
            got, count = fn(boxes, scores, classes)
            assert got.shape == (2, 25)
            eager, eager_count = NMS.batched_nms(boxes, scores, classes, 0.5, 25, method=method)
            np.testing.assert_array_equal(got.numpy(), eager.numpy())
            np.testing.assert_array_equal(count.numpy(), eager_count.numpy())
        assert fn.get_concrete_function().structured_outputs[0].shape.as_list() == [None, 25]


def test_invalid_method_raises():
    with pytest.raises(ValueError, match="method"):
        NMS.batched_nms(np.zeros((1, 1, 4), np.float32), [[1.0]], [[0]], 0.5, 1, method="fast")


# ---------------------------------------------------------------- mutation tests


def test_mutations_break_the_comparison(torch, torchvision):
    """The comparisons above are sensitive: >= instead of >, ignoring classes, unstable ties."""
    boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 1]], np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], np.float32)
    got = ours(boxes, scores, [0, 0], 0.5, 2)
    assert not np.array_equal(got, oracle_nms(boxes, scores, thr=0.5, ge=True))
    rng = np.random.default_rng(9)
    boxes = clustered_boxes(rng, 500)
    scores = rng.random(500).astype(np.float32)
    classes = rng.integers(0, 80, 500)
    got = ours(boxes, scores, classes, 0.5, 500)
    np.testing.assert_array_equal(got, tv_batched(torch, torchvision, boxes, scores, classes, 0.5))
    assert not np.array_equal(got, oracle_nms(boxes, scores, classes, ignore_classes=True))
    # ties resolved to the HIGHER index (a reversed stable sort) would be detected
    scores = np.round(scores * 4) / 4
    got = ours(boxes, scores, classes, 0.5, 500)
    flipped = oracle_nms(boxes[::-1], scores[::-1], classes[::-1])
    assert not np.array_equal(got, len(boxes) - 1 - flipped)
    np.testing.assert_array_equal(got, tv_batched(torch, torchvision, boxes, scores, classes, 0.5))
