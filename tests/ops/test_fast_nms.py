"""keras_maskrcnn.ops.fast_nms against a NumPy loop statement of YOLACT's Fast NMS."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import fast_nms, standard_nms

F32 = np.float32


def iou32(a, b):
    """IoU of two xyxy boxes in float32, in ops.boxes.pairwise_iou's order of operations."""
    w = max(F32(0), min(a[2], b[2]) - max(a[0], b[0]))
    h = max(F32(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area_a = max(a[2] - a[0], F32(0)) * max(a[3] - a[1], F32(0))
    area_b = max(b[2] - b[0], F32(0)) * max(b[3] - b[1], F32(0))
    union = area_a + area_b - inter
    return F32(0) if union == 0 else inter / union


def groups_of(scores, score_thr, top_k, cross_class, threshold_on):
    """[(class of each anchor, score of each anchor, sorted candidate anchors)] for one image."""
    num_anchors, num_classes = scores.shape
    best = [max(scores[n]) for n in range(num_anchors)]
    groups = []
    if cross_class:
        classes = [int(np.argmax(scores[n])) for n in range(num_anchors)]  # first maximum
        cands = [n for n in range(num_anchors) if best[n] > F32(score_thr)]
        groups.append((classes, best, cands))
    else:
        for c in range(num_classes):
            col = [scores[n, c] for n in range(num_anchors)]
            gate = col if threshold_on == "class" else best
            cands = [n for n in range(num_anchors) if gate[n] > F32(score_thr)]
            groups.append(([c] * num_anchors, col, cands))
    return [(cls, sc, sorted(cands, key=lambda n: (-sc[n], n))[:top_k])
            for cls, sc, cands in groups]


def oracle(boxes, scores, iou_thr=0.5, score_thr=0.05, top_k=200, max_det=100,
           cross_class=False, threshold_on="anchor", method="fast"):
    """The definition, per image, with loops: returns rows (score, class, anchor, box)."""
    rows = []
    for g, (cls, sc, cands) in enumerate(groups_of(scores, score_thr, top_k, cross_class,
                                                   threshold_on)):
        kept = []
        for j, n in enumerate(cands):
            if method == "fast":  # every box ranked above, suppressed or not
                rivals = cands[:j]
                survives = all(iou32(boxes[m], boxes[n]) <= F32(iou_thr) for m in rivals)
            else:  # greedy: only the boxes kept so far
                survives = all(iou32(boxes[m], boxes[n]) <= F32(iou_thr) for m in kept)
            if survives:
                kept.append(n)
                rows.append((-sc[n], g, j, cls[n], n))
    rows.sort(key=lambda r: r[:3])  # decreasing score, then group, then rank
    return [(F32(-r[0]), r[3], r[4], boxes[r[4]]) for r in rows[:max_det]]


def check(out, boxes, scores, max_det, **kwargs):
    """Every output of image b equals the oracle's rows, padding included."""
    for b in range(len(boxes)):
        rows = oracle(boxes[b], scores[b], max_det=max_det, **kwargs)
        n = len(rows)
        assert int(out["num_detections"][b]) == n
        np.testing.assert_array_equal(out["scores"][b, :n], [r[0] for r in rows])
        np.testing.assert_array_equal(out["classes"][b, :n], [r[1] for r in rows])
        np.testing.assert_array_equal(out["indices"][b, :n], [r[2] for r in rows])
        np.testing.assert_array_equal(out["boxes"][b, :n], np.reshape([r[3] for r in rows],
                                                                      (n, 4)))
        np.testing.assert_array_equal(out["scores"][b, n:], 0.0)
        np.testing.assert_array_equal(out["boxes"][b, n:], 0.0)
        np.testing.assert_array_equal(out["classes"][b, n:], -1)
        np.testing.assert_array_equal(out["indices"][b, n:], -1)


def random_case(seed, batch=2, num_anchors=150, num_classes=4, num_clusters=12):
    """Clustered 1/8-pixel boxes and YOLACT-like scores (mostly low), all scores distinct."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 300, (batch, num_clusters, 2))
    sizes = rng.uniform(10, 80, (batch, num_clusters, 2))
    k = rng.integers(0, num_clusters, (batch, num_anchors))
    pick = lambda a: np.take_along_axis(a, k[..., None], axis=1)  # noqa: E731
    ctr = pick(centres) + rng.normal(0, 0.15, (batch, num_anchors, 2)) * pick(sizes)
    wh = pick(sizes) * rng.uniform(0.7, 1.3, (batch, num_anchors, 2))
    boxes = np.round(np.concatenate([ctr - wh / 2, ctr + wh / 2], -1) * 8) / 8
    ranks = rng.permutation(batch * num_anchors * num_classes) + 1
    scores = (ranks / ranks.size) ** 4  # ~40% above 0.05
    scores = scores.reshape(batch, num_anchors, num_classes).astype(F32)
    assert len(np.unique(scores)) == scores.size  # no ties by construction
    return boxes.astype(F32), scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["fast", "standard"])
@pytest.mark.parametrize("threshold_on", ["class", "anchor"])
def test_matches_oracle(seed, method, threshold_on):
    boxes, scores = random_case(seed)
    for top_k, max_det in ((25, 40), (200, 100)):  # top_k truncates; fewer than top_k
        out = fast_nms(boxes, scores, top_k=top_k, max_detections=max_det,
                       threshold_on=threshold_on, method=method)
        check(out, boxes, scores, max_det, top_k=top_k, threshold_on=threshold_on,
              method=method)


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("method", ["fast", "standard"])
def test_cross_class_matches_oracle(seed, method):
    boxes, scores = random_case(seed, num_anchors=200, num_classes=5)
    out = fast_nms(boxes, scores, top_k=60, max_detections=50, cross_class=True, method=method)
    check(out, boxes, scores, 50, top_k=60, cross_class=True, method=method)


@pytest.mark.parametrize("seed", [6, 7])
def test_other_thresholds(seed):
    boxes, scores = random_case(seed, num_anchors=120, num_classes=3)
    out = fast_nms(boxes, scores, iou_threshold=0.3, score_threshold=0.2, top_k=30,
                   max_detections=20, threshold_on="class")
    check(out, boxes, scores, 20, iou_thr=0.3, score_thr=0.2, top_k=30, threshold_on="class")


def test_fast_keeps_a_subset_of_greedy():
    boxes, scores = random_case(8, num_anchors=300)
    fast = fast_nms(boxes, scores, top_k=100, max_detections=400, threshold_on="class")
    greedy = standard_nms(boxes, scores, top_k=100, max_detections=400, threshold_on="class")
    for b in range(2):
        pairs = lambda out: {(int(c), int(i)) for c, i in zip(  # noqa: E731
            out["classes"][b], out["indices"][b]) if i >= 0}
        assert pairs(fast) < pairs(greedy)  # strictly fewer on these clusters


def test_chain_fast_drops_what_greedy_keeps():
    # IoU(A, B) = IoU(B, C) = 70 / 130 > 0.5, IoU(A, C) = 40 / 160 = 0.25.
    boxes = np.array([[[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]]], F32)
    scores = np.array([[[0.9], [0.8], [0.7]]], F32)
    fast = fast_nms(boxes, scores, max_detections=5, threshold_on="class")
    greedy = standard_nms(boxes, scores, max_detections=5, threshold_on="class")
    np.testing.assert_array_equal(fast["indices"][0], [0, -1, -1, -1, -1])  # B suppresses C
    np.testing.assert_array_equal(greedy["indices"][0], [0, 2, -1, -1, -1])  # B is gone
    assert list(fast["num_detections"].numpy()) == [1]
    assert list(greedy["num_detections"].numpy()) == [2]
    check(fast, boxes, scores, 5, threshold_on="class")
    check(greedy, boxes, scores, 5, method="standard", threshold_on="class")


def test_iou_at_threshold_survives_and_zero_area_never_interacts():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 5],  # IoU exactly 0.5: kept
                       [20, 20, 20, 30], [20, 20, 20, 30]]], F32)  # zero-area twins: IoU 0
    scores = np.array([[[0.9], [0.8], [0.7], [0.6]]], F32)
    for method in ("fast", "standard"):
        out = fast_nms(boxes, scores, max_detections=4, method=method, threshold_on="class")
        np.testing.assert_array_equal(out["indices"][0], [0, 1, 2, 3])


def test_below_threshold_candidates():
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60], [100, 0, 110, 10]]], F32)
    scores = np.array([[[0.9, 0.03], [0.05, 0.04], [0.01, 0.06]]], F32)  # 0.05 is not > 0.05
    out = fast_nms(boxes, scores, max_detections=6, threshold_on="class")
    np.testing.assert_array_equal(out["indices"][0], [0, 2, -1, -1, -1, -1])
    np.testing.assert_array_equal(out["classes"][0], [0, 1, -1, -1, -1, -1])
    # YOLACT's gate: anchors 0 and 2 pass (best > 0.05), then all their class scores compete.
    anchor = fast_nms(boxes, scores, max_detections=6, threshold_on="anchor")
    np.testing.assert_array_equal(anchor["indices"][0], [0, 2, 0, 2, -1, -1])
    np.testing.assert_array_equal(anchor["classes"][0], [0, 1, 1, 0, -1, -1])
    np.testing.assert_allclose(anchor["scores"][0], [0.9, 0.06, 0.03, 0.01, 0, 0])
    for mode, out in (("class", out), ("anchor", anchor)):
        check(out, boxes, scores, 6, threshold_on=mode)


def test_default_is_yolacts_anchor_gate():
    """The defaults are YOLACT's ``Detect`` (the model's settings): an anchor whose best score
    is > 0.05 enters with every class score, so a returned score may be <= score_threshold;
    threshold_on="class" is the per-(anchor, class) threshold."""
    import inspect

    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60], [100, 0, 110, 10]]], F32)
    scores = np.array([[[0.9, 0.03], [0.05, 0.04], [0.01, 0.06]]], F32)
    for fn in (fast_nms, standard_nms):
        defaults = {k: v.default for k, v in inspect.signature(fn).parameters.items()
                    if v.default is not inspect.Parameter.empty}
        assert defaults["threshold_on"] == "anchor"
        assert (defaults["iou_threshold"], defaults["score_threshold"], defaults["top_k"],
                defaults["max_detections"]) == (0.5, 0.05, 200, 100)
        out = fn(boxes, scores, max_detections=6)
        np.testing.assert_array_equal(out["indices"][0], [0, 2, 0, 2, -1, -1])
        np.testing.assert_allclose(out["scores"][0], [0.9, 0.06, 0.03, 0.01, 0, 0])
        assert float(np.min(out["scores"][0, :4])) < 0.05  # low scores of gated anchors
        per_pair = fn(boxes, scores, max_detections=6, threshold_on="class")
        np.testing.assert_array_equal(per_pair["indices"][0], [0, 2, -1, -1, -1, -1])
    check(fast_nms(boxes, scores, max_detections=6), boxes, scores, 6)  # the oracle's default


def test_no_candidates_and_different_counts():
    boxes, scores = random_case(9, num_anchors=60, num_classes=3)
    scores[0] = np.minimum(scores[0], 0.05)  # image 0: nothing above the threshold
    scores[1, 20:] = 0.0  # image 1: 20 anchors, fewer than top_k
    for cross_class in (False, True):
        out = fast_nms(boxes, scores, top_k=50, max_detections=30, cross_class=cross_class,
                       threshold_on="class")
        assert out["num_detections"][0] == 0 and 0 < out["num_detections"][1] <= 30
        check(out, boxes, scores, 30, top_k=50, cross_class=cross_class, threshold_on="class")
    empty = fast_nms(np.zeros((2, 0, 4), F32), np.zeros((2, 0, 3), F32), max_detections=7,
                     threshold_on="class")
    assert empty["boxes"].shape == (2, 7, 4) and list(empty["num_detections"].numpy()) == [0, 0]
    np.testing.assert_array_equal(empty["indices"], -1)


@pytest.mark.parametrize("method", ["fast", "standard"])
def test_one_trace_serves_every_batch_and_anchor_count(method):
    spec = [tf.TensorSpec([None, None, 4], tf.float32), tf.TensorSpec([None, None, 4],
                                                                       tf.float32)]
    fn = tf.function(lambda b, s: fast_nms(b, s, top_k=40, max_detections=30, method=method,
                                           threshold_on="class"),
                     input_signature=spec)
    outputs = fn.get_concrete_function().structured_outputs
    assert outputs["boxes"].shape.as_list() == [None, 30, 4]
    assert outputs["classes"].shape.as_list() == [None, 30]
    for seed, batch, num_anchors in ((10, 2, 80), (11, 1, 25), (12, 3, 170), (13, 2, 0)):
        if num_anchors:
            boxes, scores = random_case(seed, batch, num_anchors, num_classes=4)
        else:
            boxes, scores = np.zeros((batch, 0, 4), F32), np.zeros((batch, 0, 4), F32)
        check(fn(boxes, scores), boxes, scores, 30, top_k=40, method=method, threshold_on="class")
    assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("cross_class", [False, True])
def test_indices_point_at_the_anchors(cross_class):
    boxes, scores = random_case(14, num_anchors=100, num_classes=6)
    out = fast_nms(boxes, scores, top_k=30, max_detections=50, cross_class=cross_class,
                   threshold_on="class")
    for b in range(2):
        n = int(out["num_detections"][b])
        idx, cls = out["indices"][b, :n].numpy(), out["classes"][b, :n].numpy()
        np.testing.assert_array_equal(out["boxes"][b, :n], boxes[b, idx])
        np.testing.assert_array_equal(out["scores"][b, :n], scores[b, idx, cls])
        if cross_class:
            np.testing.assert_array_equal(cls, scores[b, idx].argmax(-1))


def test_cross_class_suppresses_across_classes():
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10]]], F32)  # IoU 90 / 110
    scores = np.array([[[0.9, 0.1], [0.2, 0.8]]], F32)
    per_class = fast_nms(boxes, scores, max_detections=4, threshold_on="class")
    cross = fast_nms(boxes, scores, max_detections=4, cross_class=True)
    np.testing.assert_array_equal(per_class["indices"][0], [0, 1, -1, -1])  # one per class
    np.testing.assert_array_equal(per_class["classes"][0], [0, 1, -1, -1])
    np.testing.assert_array_equal(cross["indices"][0], [0, -1, -1, -1])
    np.testing.assert_array_equal(cross["classes"][0], [0, -1, -1, -1])


def test_ties_follow_top_k_order():
    # Equal scores: the lower anchor index ranks first, so of two overlapping tied boxes it is
    # the one that survives, and it is output first; checked with the tied boxes both ways.
    boxes = np.array([[[50, 50, 60, 60], [0, 0, 10, 10], [1, 0, 11, 10], [90, 90, 99, 99]]],
                     F32)
    scores = np.full((1, 4, 2), 0.5, F32)
    scores[0, 3, 1] = 0.0
    for order in ([0, 1, 2, 3], [0, 2, 1, 3]):
        out = fast_nms(boxes[:, order], scores, max_detections=8, threshold_on="class")
        np.testing.assert_array_equal(out["indices"][0], [0, 1, 3, 0, 1, -1, -1, -1])
        np.testing.assert_array_equal(out["classes"][0], [0, 0, 0, 1, 1, -1, -1, -1])
        np.testing.assert_array_equal(out["boxes"][0, 1], boxes[0, order[1]])
        check(out, boxes[:, order], scores, 8, threshold_on="class")


def test_rejects_bad_arguments():
    boxes, scores = np.zeros((1, 3, 4), F32), np.zeros((1, 3, 2), F32)
    with pytest.raises(ValueError, match="method"):
        fast_nms(boxes, scores, method="greedy")
    with pytest.raises(ValueError, match="threshold_on"):
        fast_nms(boxes, scores, threshold_on="image")
    with pytest.raises(ValueError, match="top_k"):
        fast_nms(boxes, scores, top_k=0)
    with pytest.raises(ValueError, match="scores"):
        fast_nms(boxes, scores[..., 0])


@pytest.mark.parametrize("method", ["fast", "standard"])
def test_one_crowded_class_and_every_block_width(method):
    # One class with ~230 candidates (top_k keeps 200) next to classes with at most 8, 16, ..,
    # 40: blocks of many widths are used.
    boxes, scores = random_case(15, batch=1, num_anchors=400, num_classes=6)
    scores[0, :, 0] = np.where(np.arange(400) % 7 < 3, scores[0, :, 0] / 9, 0.06 + scores[0, :, 0])
    for c in range(1, 6):
        scores[0, 8 * c:, c] = np.minimum(scores[0, 8 * c:, c], 0.01)  # 8c anchors at most
    out = fast_nms(boxes, scores, top_k=200, max_detections=300, method=method,
                   threshold_on="class")
    check(out, boxes, scores, 300, top_k=200, method=method, threshold_on="class")


def test_iou_matrix_is_pairwise_iou_bit_for_bit():
    from keras_maskrcnn.ops import pairwise_iou
    from keras_maskrcnn.ops.nms_fast import _iou_matrix

    boxes, _ = random_case(16, num_anchors=64)
    boxes[0, :5] = [[3, 3, 3, 9], [5, 5, 2, 2], [0, 0, 0, 0], [1, 1, 4, 4], [1, 1, 4, 4]]
    np.testing.assert_array_equal(_iou_matrix(boxes), pairwise_iou(boxes, boxes))


@pytest.mark.parametrize("max_det", [1, 3, 10])
def test_few_detections_from_many_clustered_candidates(max_det):
    # Only the best 2D candidates are computed first, then 4D, ...: image 0 (few clusters)
    # needs several rounds to find D survivors, image 1 (spread boxes) finds them at once.
    boxes, scores = random_case(17, num_anchors=200, num_classes=3, num_clusters=2)
    spread, _ = random_case(18, num_anchors=200, num_classes=3, num_clusters=150)
    boxes[1] = spread[1]
    for threshold_on in ("class", "anchor"):
        out = fast_nms(boxes, scores, top_k=150, max_detections=max_det,
                       threshold_on=threshold_on)
        check(out, boxes, scores, max_det, top_k=150, threshold_on=threshold_on)


def torch_yolact_detect(torch, boxes, scores, iou_thr=0.5, conf_thr=0.05, top_k=200,
                        max_det=100):
    """YOLACT's Detect with Fast NMS (use_fast_nms, second_threshold off), restated in torch
    for one image: returns (scores, classes, anchor indices), best first."""
    boxes, scores = torch.from_numpy(boxes), torch.from_numpy(scores).t()  # (C, N)
    keep = scores.max(dim=0).values > conf_thr  # the anchor's best foreground score
    anchors = torch.nonzero(keep)[:, 0]
    if len(anchors) == 0:
        return np.zeros(0, F32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    scores, idx = scores[:, keep].sort(dim=1, descending=True, stable=True)
    scores, idx = scores[:, :top_k], idx[:, :top_k]  # (C, K)
    b = boxes[anchors][idx]  # (C, K, 4)
    tl = torch.max(b[:, :, None, :2], b[:, None, :, :2])
    br = torch.min(b[:, :, None, 2:], b[:, None, :, 2:])
    inter = (br - tl).clamp(min=0).prod(dim=3)
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = (inter / (area[:, :, None] + area[:, None, :] - inter)).triu(diagonal=1)
    survive = iou.max(dim=1).values <= iou_thr  # (C, K)
    classes = torch.arange(len(scores))[:, None].expand_as(survive)[survive]
    kept_anchors, scores = anchors[idx][survive], scores[survive]
    scores, order = scores.sort(dim=0, descending=True, stable=True)
    order = order[:max_det]
    return scores[:max_det].numpy(), classes[order].numpy(), kept_anchors[order].numpy()


@pytest.mark.parametrize("seed", [19, 20])
def test_anchor_gating_matches_yolact_detect(torch, seed):
    boxes, scores = random_case(seed, num_anchors=250, num_classes=5)
    out = fast_nms(boxes, scores, top_k=60, max_detections=90, threshold_on="anchor")
    for b in range(2):
        ref_scores, ref_classes, ref_anchors = torch_yolact_detect(torch, boxes[b], scores[b],
                                                                   top_k=60, max_det=90)
        n = int(out["num_detections"][b])
        assert n == len(ref_scores)
        np.testing.assert_array_equal(out["scores"][b, :n], ref_scores)
        np.testing.assert_array_equal(out["classes"][b, :n], ref_classes)
        np.testing.assert_array_equal(out["indices"][b, :n], ref_anchors)
