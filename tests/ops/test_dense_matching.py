"""match_anchors / hard_negative_mask against NumPy loop transcriptions of YOLACT's ``match``
and ``ohem_conf_loss``."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.anchors import yolact_anchors
from keras_maskrcnn.ops.dense_matching import hard_negative_mask, match_anchors

IMAGE = 110
ANCHORS = None


def anchors():
    global ANCHORS
    if ANCHORS is None:
        ANCHORS = yolact_anchors(IMAGE, [(14, 14), (7, 7), (4, 4)], scales=(12, 30, 60),
                                 reference_size=IMAGE).numpy()
    return ANCHORS


def jaccard(a, b, iscrowd=False):
    """The reference's jaccard on (A, 4) x (B, 4) float32 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, np.float32(0))
    inter = wh[..., 0] * wh[..., 1]
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / area_a if iscrowd else inter / (area_a + area_b - inter)


def encode(matched, priors):
    """SSD encoding with variances (0.1, 0.2), priors as xyxy (converted to centre-size)."""
    pc = (priors[:, :2] + priors[:, 2:]) / 2
    pwh = priors[:, 2:] - priors[:, :2]
    g = ((matched[:, :2] + matched[:, 2:]) / 2 - pc) / (0.1 * pwh)
    gwh = np.log((matched[:, 2:] - matched[:, :2]) / pwh) / 0.2
    return np.concatenate([g, gwh], 1)


def match_oracle(truths, labels, crowd_boxes, priors, pos=0.5, neg=0.4, crowd_thr=0.7):
    """The reference's ``match`` (labels 0-based here, as its dataset gives them)."""
    overlaps = jaccard(truths, priors)
    best_truth_overlap = overlaps.max(0)
    best_truth_idx = overlaps.argmax(0)
    for _ in range(overlaps.shape[0]):
        best_prior_overlap = overlaps.max(1)
        best_prior_idx = overlaps.argmax(1)
        j = best_prior_overlap.argmax(0)
        i = best_prior_idx[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_truth_overlap[i] = 2
        best_truth_idx[i] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx] + 1
    conf[best_truth_overlap < pos] = -1
    conf[best_truth_overlap < neg] = 0
    if crowd_boxes is not None and crowd_thr < 1:
        crowd_overlaps = jaccard(priors, crowd_boxes, iscrowd=True)
        best_crowd = crowd_overlaps.max(1)
        conf[(conf <= 0) & (best_crowd > crowd_thr)] = -1
    return conf, best_truth_idx, encode(matches, priors)


def random_boxes(rng, n, lo=4, hi=70):
    xy = rng.uniform(0, IMAGE - lo, (n, 2))
    wh = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, IMAGE)], 1).astype(np.float32)


def padded_problem(images, m):
    """images: list of (boxes, classes 1-based, crowd flags) -> padded arrays, padding -1."""
    b = len(images)
    boxes = -np.ones((b, m, 4), np.float32)
    classes = -np.ones((b, m), np.int32)
    crowd = np.zeros((b, m), bool)
    for k, (bx, cl, cr) in enumerate(images):
        boxes[k, :len(bx)] = bx
        classes[k, :len(bx)] = cl
        crowd[k, :len(bx)] = cr
    return boxes, classes, crowd


def check(images, m):
    priors = anchors()
    boxes, classes, crowd = padded_problem(images, m)
    labels, matched, targets = [t.numpy() for t in match_anchors(priors, boxes, classes, crowd)]
    for k, (bx, cl, cr) in enumerate(images):
        rows = np.flatnonzero(~np.asarray(cr, bool))  # the reference splits crowds off
        crowd_boxes = bx[np.asarray(cr, bool)] if np.any(cr) else None
        if len(rows) == 0:
            want_conf = np.zeros(len(priors), np.int64)
            if crowd_boxes is not None:
                want_conf[jaccard(priors, crowd_boxes, True).max(1) > 0.7] = -1
            np.testing.assert_array_equal(labels[k], want_conf)
            assert not np.any(targets[k])
            continue
        conf, idx, loc = match_oracle(bx[rows].copy(), np.asarray(cl)[rows] - 1, crowd_boxes,
                                      priors)
        np.testing.assert_array_equal(labels[k], conf)
        np.testing.assert_array_equal(matched[k], rows[idx])
        pos = conf > 0
        np.testing.assert_allclose(targets[k][pos], loc[pos], rtol=1e-4, atol=1e-4)
        assert not np.any(targets[k][~pos])
    return labels


def test_random_images_against_reference_loop():
    rng = np.random.default_rng(0)
    for trial in range(6):
        images = []
        for _ in range(3):
            n = int(rng.integers(1, 9))
            images.append((random_boxes(rng, n), rng.integers(1, 5, n),
                            rng.uniform(size=n) < 0.2))
        check(images, 10)


def test_gt_sharing_the_same_best_anchor_and_duplicates():
    base = np.array([[10, 10, 22, 22]], np.float32)  # exactly one 12 px anchor's neighbourhood
    shared = np.concatenate([base, base + 0.5, base - 0.3, base, [[60, 60, 100, 100]]])
    labels = check([(shared, [1, 2, 3, 4, 2], [0, 0, 0, 0, 0])], 6)
    # every GT got an anchor of its own: five distinct forced positives at least
    assert (labels[0] > 0).sum() >= 5
    assert set(labels[0][labels[0] > 0]) >= {1, 2, 3, 4}


def test_no_gt_and_all_crowd():
    rng = np.random.default_rng(1)
    crowd = random_boxes(rng, 2, lo=40, hi=80)
    labels = check([(np.zeros((0, 4), np.float32), [], []), (crowd, [1, 3], [1, 1]),
                    (random_boxes(rng, 3), [2, 2, 1], [0, 1, 0])], 4)
    assert np.all(labels[0] == 0)
    assert np.any(labels[1] == -1) and not np.any(labels[1] > 0)


def test_crowd_rule_is_intersection_over_anchor_area():
    priors = np.array([[0, 0, 10, 10], [0, 0, 40, 40], [50, 50, 60, 60], [90, 90, 99, 99]],
                      np.float32)
    boxes = np.array([[[0, 0, 30, 30], [52, 52, 60, 60]]], np.float32)
    labels, matched, _ = match_anchors(priors, boxes, [[1, 2]], [[1, 0]])
    # anchor 0 lies inside the crowd (ratio 1 > 0.7) -> neutral, anchor 1: 900/1600 -> stays 0,
    # anchor 2 is the forced match of GT 1 (IoU 0.64) -> positive class 2
    np.testing.assert_array_equal(labels.numpy(), [[-1, 0, 2, 0]])
    assert matched.numpy()[0, 2] == 1


def ohem_oracle(conf, conf_t, ratio=3):
    """The reference's ohem_conf_loss selection with a stable sort (ties -> lower index)."""
    x_max = conf.max()
    loss_c = np.log(np.exp(conf - x_max).sum(-1)) + x_max - conf[..., 0]
    pos = conf_t > 0
    loss_c[pos] = 0
    loss_c[conf_t < 0] = 0
    loss_idx = np.argsort(-loss_c, axis=1, kind="stable")
    idx_rank = np.argsort(loss_idx, axis=1, kind="stable")
    num_neg = np.minimum(ratio * pos.sum(1, keepdims=True), pos.shape[1] - 1)
    neg = idx_rank < num_neg
    neg[pos] = False
    neg[conf_t < 0] = False
    return neg


def test_hard_negatives_against_reference():
    rng = np.random.default_rng(2)
    for num_pos in [(0, 3), (5, 1), (30, 2)]:
        conf = rng.normal(0, 2, (2, 100, 5)).astype(np.float32)
        conf_t = rng.choice([-1, 0], (2, 100), p=[0.2, 0.8])
        for k, p in enumerate(num_pos):
            conf_t[k, rng.choice(100, p, replace=False)] = rng.integers(1, 5, p)
        got = hard_negative_mask(conf, conf_t).numpy()
        np.testing.assert_array_equal(got, ohem_oracle(conf.astype(np.float64), conf_t))
        want_count = np.minimum(3 * np.array(num_pos), (conf_t == 0).sum(1))
        np.testing.assert_array_equal(got.sum(1), want_count)


def test_hard_negative_ties_and_cap():
    conf = np.zeros((1, 6, 3), np.float32)  # every background loss equal: log(3)
    conf_t = np.array([[0, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(hard_negative_mask(conf, conf_t).numpy(),
                                  [[True, False, True, True, False, False]])
    conf_t = np.array([[1, 1, 0, 0, 0, 0]])  # 6 wanted, cap N - 1 = 5, 4 candidates
    assert hard_negative_mask(conf, conf_t).numpy().sum() == 4


def test_graph_mode_and_dynamic_shapes():
    priors = anchors()
    rng = np.random.default_rng(3)
    boxes, classes, crowd = padded_problem([(random_boxes(rng, 4), [1, 2, 3, 1], [0, 0, 1, 0])], 5)
    fn = tf.function(match_anchors, input_signature=[
        tf.TensorSpec([None, 4]), tf.TensorSpec([None, None, 4]),
        tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.bool)])
    for got, want in zip(fn(priors, boxes, classes, crowd),
                         match_anchors(priors, boxes, classes, crowd)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_zero_gt_rows():
    labels, matched, targets = match_anchors(anchors(), np.zeros((2, 0, 4), np.float32),
                                             np.zeros((2, 0), np.int32))
    assert labels.shape == (2, len(anchors())) and targets.shape == (2, len(anchors()), 4)
    assert not np.any(labels.numpy()) and not np.any(targets.numpy())
