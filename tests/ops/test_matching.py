"""Tests for keras_maskrcnn.ops.matching: torchvision's Matcher / sampler and numpy oracles."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    gather_or_pad,
    match_boxes,
    sample_balanced,
)

F32 = np.float32
CONFIGS = [(0.7, 0.3, True), (0.5, 0.5, False), (0.7, 0.3, False), (0.5, 0.5, True)]


# ----------------------------------------------------------------------------- oracles
def _torch_match(torchvision, torch, iou, gt_valid, high, low, allow_low):
    """torchvision Matcher per image on the valid rows; maps indices back to padded rows."""
    from torchvision.models.detection._utils import Matcher

    matcher = Matcher(high, low, allow_low_quality_matches=allow_low)
    out = np.empty(iou.shape[::2], np.int64)  # (B, N)
    for b in range(iou.shape[0]):
        rows = np.flatnonzero(gt_valid[b])
        if rows.size == 0:  # torchvision raises; its RoI heads treat this as background
            out[b] = BELOW_LOW_THRESHOLD
            continue
        m = matcher(torch.from_numpy(iou[b, rows].copy())).numpy()
        out[b] = np.where(m >= 0, rows[np.maximum(m, 0)], m)
    return out


def _numpy_match(iou, gt_valid, high, low, allow_low, mutation=None):
    """Slow loop oracle of the Matcher semantics; ``mutation`` breaks one convention."""
    bsz, num_gt, num_pred = iou.shape
    high, low = F32(high), F32(low)
    out = np.full((bsz, num_pred), -1, np.int64)
    for b in range(bsz):
        rows = [g for g in range(num_gt) if gt_valid[b, g]]
        if not rows:
            continue
        best = {}
        for n in range(num_pred):
            vals = [iou[b, g, n] for g in rows]
            v = max(vals)
            ties = [g for g in rows if iou[b, g, n] == v]
            best[n] = ties[-1] if mutation == "last_tie" else ties[0]
            if v < low or (mutation == "low_is_background" and v == low):
                out[b, n] = BELOW_LOW_THRESHOLD
            elif v < high or (mutation == "high_is_ignored" and v == high):
                out[b, n] = BETWEEN_THRESHOLDS
            else:
                out[b, n] = best[n]
        if allow_low and mutation != "no_low_quality":
            for g in rows:
                top = max(iou[b, g, n] for n in range(num_pred)) if num_pred else None
                for n in range(num_pred):
                    if iou[b, g, n] == top:
                        out[b, n] = g if mutation == "selecting_gt" else best[n]
    return out


def _random_case(rng, bsz=4, num_gt=6, num_pred=40):
    """IoU on a coarse grid (ties, exact thresholds) with interspersed garbage padding rows."""
    grid = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], F32)
    iou = grid[rng.integers(0, grid.size, (bsz, num_gt, num_pred))]
    # many images have low maxima so the low-quality rule matters
    iou = (iou * rng.choice(np.array([1.0, 0.5, 0.35], F32), (bsz, 1, 1))).astype(F32)
    iou = np.round(iou * 20).astype(F32) / F32(20)  # back onto a grid of 0.05 -> exact ties
    gt_valid = rng.random((bsz, num_gt)) < 0.7
    gt_valid[0] = False  # an image without GT
    gt_valid[1, :] = True
    iou[~gt_valid] = F32(1.0)  # padding rows carry garbage that must be ignored
    return iou, gt_valid


# ----------------------------------------------------------------------------- matcher
def test_constants():
    assert BELOW_LOW_THRESHOLD == -1 and BETWEEN_THRESHOLDS == -2
    assert isinstance(BELOW_LOW_THRESHOLD, int) and isinstance(BETWEEN_THRESHOLDS, int)


def test_hand_computed_3x4():
    # rows = GT, columns = predictions
    iou = np.array(
        [[0.80, 0.10, 0.25, 0.00], [0.75, 0.50, 0.20, 0.00], [0.10, 0.60, 0.30, 0.00]], F32
    )[None]
    valid = np.ones((1, 3), bool)
    # max over GT: 0.80 (gt0), 0.60 (gt2), 0.30 (gt2), 0.0 (gt0, tie -> first)
    np.testing.assert_array_equal(match_boxes(iou, valid, 0.7, 0.3, False), [[0, -2, -2, -1]])
    # gt0 best is pred0; gt1 best is pred0 (0.75) -> keeps argmax gt0; gt2 best is pred1
    np.testing.assert_array_equal(match_boxes(iou, valid, 0.7, 0.3, True), [[0, 2, -2, -1]])
    np.testing.assert_array_equal(match_boxes(iou, valid, 0.5, 0.5, False), [[0, 2, -1, -1]])


def test_low_quality_match_keeps_argmax_not_selecting_gt(torchvision, torch):
    # pred1 is gt1's best (0.4) but its overall best GT is gt0 (0.45): it gets gt0
    iou = np.array([[0.9, 0.45, 0.0], [0.1, 0.40, 0.2]], F32)[None]
    valid = np.ones((1, 2), bool)
    got = match_boxes(iou, valid, 0.7, 0.3, True).numpy()
    np.testing.assert_array_equal(got, [[0, 0, -1]])
    np.testing.assert_array_equal(got, _torch_match(torchvision, torch, iou, valid, 0.7, 0.3, True))


def test_gt_without_overlap_quirk(torchvision, torch):
    # gt1 overlaps nothing: its highest IoU is 0, so every prediction with IoU 0 to gt1 is
    # reset to its argmax (torchvision behaviour, reproduced on purpose): even pred1/pred2
    # (best IoU 0) and pred3 (best IoU 0.1 < low) become matches of gt0
    iou = np.array([[0.9, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0]], F32)[None]
    valid = np.ones((1, 2), bool)
    got = match_boxes(iou, valid, 0.7, 0.3, True).numpy()
    np.testing.assert_array_equal(got, [[0, 0, 0, 0]])
    np.testing.assert_array_equal(match_boxes(iou, valid, 0.7, 0.3, False), [[0, -1, -1, -1]])
    np.testing.assert_array_equal(got, _torch_match(torchvision, torch, iou, valid, 0.7, 0.3, True))


@pytest.mark.parametrize("high,low,allow_low", CONFIGS)
def test_random_vs_torchvision_and_numpy(torchvision, torch, high, low, allow_low):
    rng = np.random.default_rng(int(high * 10) + int(allow_low))
    for _ in range(6):
        iou, valid = _random_case(rng)
        got = match_boxes(tf.constant(iou), tf.constant(valid), high, low, allow_low).numpy()
        want = _torch_match(torchvision, torch, iou, valid, high, low, allow_low)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, _numpy_match(iou, valid, high, low, allow_low))
        assert got.dtype == np.int32
        assert np.all(got[0] == -1)  # image without GT
        for b in range(iou.shape[0]):  # padding rows never matched
            assert np.all(valid[b][got[b][got[b] >= 0]])


def test_threshold_boundaries_in_float32(torchvision, torch):
    vals = []
    for t in (0.3, 0.5, 0.7):
        t32 = F32(t)
        vals += [np.nextafter(t32, F32(0)), t32, np.nextafter(t32, F32(1))]
    iou = np.array(vals, F32)[None, None, :]  # one GT, predictions straddle each threshold
    valid = np.ones((1, 1), bool)
    for high, low in ((0.7, 0.3), (0.5, 0.5)):
        got = match_boxes(iou, valid, high, low, False).numpy()
        np.testing.assert_array_equal(
            got, _torch_match(torchvision, torch, iou, valid, high, low, False)
        )
    got = match_boxes(iou, valid, 0.7, 0.3, False).numpy()[0]
    np.testing.assert_array_equal(got, [-1, -2, -2, -2, -2, -2, -2, 0, 0])


def test_ties_per_prediction_take_first_gt(torchvision, torch):
    iou = np.array([[0.8, 0.2], [0.8, 0.9], [0.8, 0.9]], F32)[None]
    valid = np.array([[False, True, True]])  # gt0 is padding: gt1 wins both ties
    got = match_boxes(iou, valid, 0.7, 0.3, True).numpy()
    np.testing.assert_array_equal(got, [[1, 1]])
    np.testing.assert_array_equal(got, _torch_match(torchvision, torch, iou, valid, 0.7, 0.3, True))


def test_ties_per_gt_all_predictions_kept(torchvision, torch):
    iou = np.array([[0.2, 0.2, 0.1, 0.2]], F32)[None]  # three predictions tie for gt0's best
    valid = np.ones((1, 1), bool)
    got = match_boxes(iou, valid, 0.7, 0.3, True).numpy()
    np.testing.assert_array_equal(got, [[0, 0, -1, 0]])
    np.testing.assert_array_equal(got, _torch_match(torchvision, torch, iou, valid, 0.7, 0.3, True))


@pytest.mark.parametrize("allow_low", [False, True])
def test_empty_inputs(allow_low):
    got = match_boxes(tf.zeros((2, 3, 0)), tf.ones((2, 3), tf.bool), 0.7, 0.3, allow_low)
    assert got.shape == (2, 0) and got.dtype == tf.int32
    got = match_boxes(tf.zeros((2, 0, 5)), tf.ones((2, 0), tf.bool), 0.7, 0.3, allow_low)
    np.testing.assert_array_equal(got, -np.ones((2, 5)))
    got = match_boxes(tf.ones((2, 3, 5)), tf.zeros((2, 3), tf.bool), 0.7, 0.3, allow_low)
    np.testing.assert_array_equal(got, -np.ones((2, 5)))


def test_bad_thresholds_raise():
    with pytest.raises(ValueError):
        match_boxes(tf.zeros((1, 1, 1)), tf.ones((1, 1), tf.bool), 0.3, 0.7)


@pytest.mark.parametrize(
    "mutation,high,low,allow_low",
    [
        ("low_is_background", 0.7, 0.3, False),
        ("high_is_ignored", 0.5, 0.5, False),
        ("last_tie", 0.5, 0.5, False),
        ("no_low_quality", 0.7, 0.3, True),
        ("selecting_gt", 0.7, 0.3, True),
    ],
)
def test_mutations_are_detected(torchvision, torch, mutation, high, low, allow_low):
    """Each broken convention disagrees with torchvision on the test data (data is sharp)."""
    rng = np.random.default_rng(1)
    iou, valid = _random_case(rng, bsz=6)
    want = _torch_match(torchvision, torch, iou, valid, high, low, allow_low)
    np.testing.assert_array_equal(_numpy_match(iou, valid, high, low, allow_low), want)
    assert np.any(_numpy_match(iou, valid, high, low, allow_low, mutation) != want)


def test_mutation_low_threshold_one_ulp(torchvision, torch):
    """Treating iou == low as background (threshold nudged by 1 ulp) must fail the comparison."""
    rng = np.random.default_rng(2)
    iou, valid = _random_case(rng)
    want = _torch_match(torchvision, torch, iou, valid, 0.7, 0.3, True)
    np.testing.assert_array_equal(match_boxes(iou, valid, 0.7, 0.3, True), want)
    nudged = float(np.nextafter(F32(0.3), F32(1)))
    assert np.any(match_boxes(iou, valid, 0.7, nudged, True).numpy() != want)


def test_match_under_tf_function_dynamic_shapes():
    fn = tf.function(
        lambda iou, valid: match_boxes(iou, valid, 0.7, 0.3, True),
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32),
            tf.TensorSpec([None, None], tf.bool),
        ],
    )
    rng = np.random.default_rng(3)
    for num_pred in (7, 0, 30):
        iou, valid = _random_case(rng, bsz=3, num_gt=5, num_pred=num_pred)
        np.testing.assert_array_equal(fn(iou, valid), match_boxes(iou, valid, 0.7, 0.3, True))
        if num_pred:
            np.testing.assert_array_equal(fn(iou, valid), _numpy_match(iou, valid, 0.7, 0.3, True))
    # dynamic M = 0 takes the no-GT branch at run time
    got = fn(np.zeros((2, 0, 4), F32), np.zeros((2, 0), bool))
    np.testing.assert_array_equal(got, -np.ones((2, 4)))


# ----------------------------------------------------------------------------- sampler
def _expected_counts(labels, num_samples, fraction):
    pos = (labels >= 1).sum(1)
    neg = (labels == 0).sum(1)
    num_pos = np.minimum(int(num_samples * fraction), pos)
    return num_pos, np.minimum(num_samples - num_pos, neg)


def _check_sample(labels, indices, sampled, num_samples, fraction):
    labels, indices, sampled = np.asarray(labels), np.asarray(indices), np.asarray(sampled)
    assert indices.shape == sampled.shape == (labels.shape[0], num_samples)
    assert indices.dtype == sampled.dtype == np.int32
    num_pos, num_neg = _expected_counts(labels, num_samples, fraction)
    for b in range(labels.shape[0]):
        p, q = num_pos[b], num_neg[b]
        want = np.r_[np.ones(p), np.zeros(q), -np.ones(num_samples - p - q)]
        np.testing.assert_array_equal(sampled[b], want)
        np.testing.assert_array_equal(indices[b, p + q :], -1)
        chosen = indices[b, : p + q]
        assert len(set(chosen.tolist())) == p + q  # no duplicates
        assert np.all(labels[b, chosen[:p]] >= 1)
        assert np.all(labels[b, chosen[p:]] == 0)  # never an ignored (-1) element


def test_sampler_counts_random_configs():
    rng = np.random.default_rng(4)
    for trial in range(25):
        num = int(rng.integers(0, 60))
        probs = rng.dirichlet([0.5, 0.5, 0.5])
        labels = rng.choice(np.array([1, 0, -1], np.int32), size=(5, num), p=probs)
        labels[0, :] = -1  # all ignored
        num_samples = int(rng.integers(1, 32))
        fraction = float(rng.choice([0.25, 0.5, 0.3, 1.0, 0.0]))
        idx, lab = sample_balanced(labels, num_samples, fraction, (trial, 7))
        _check_sample(labels, idx, lab, num_samples, fraction)


def test_sampler_counts_vs_torchvision(torchvision, torch):
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

    rng = np.random.default_rng(5)
    for num_samples, fraction in ((512, 0.25), (256, 0.5), (16, 0.3)):
        values = np.array([2, 1, 0, -1], np.int32)  # 2: a class id, positive like 1
        labels = rng.choice(values, size=(4, 300), p=[0.01, 0.02, 0.6, 0.37])
        labels[1, :] = np.where(labels[1] == 0, -1, labels[1])  # not enough negatives
        tv = BalancedPositiveNegativeSampler(num_samples, fraction)
        pos_masks, neg_masks = tv([torch.from_numpy(l.astype(np.int64)) for l in labels])
        _, lab = sample_balanced(labels, num_samples, fraction, (1, 2))
        lab = lab.numpy()
        for b in range(labels.shape[0]):
            assert (lab[b] == 1).sum() == int(pos_masks[b].sum())
            assert (lab[b] == 0).sum() == int(neg_masks[b].sum())


def test_sampler_mutated_formula_is_detected():
    """The random configs exercise the 'too few positives -> more negatives' rule."""
    rng = np.random.default_rng(6)
    labels = rng.choice(np.array([1, 0, -1], np.int32), size=(8, 40), p=[0.05, 0.8, 0.15])
    _, lab = sample_balanced(labels, 16, 0.5, (3, 4))
    got_neg = (lab.numpy() == 0).sum(1)
    mutated_neg = np.minimum(16 - int(16 * 0.5), (labels == 0).sum(1))  # ignores the refill
    assert np.any(got_neg != mutated_neg)
    np.testing.assert_array_equal(got_neg, _expected_counts(labels, 16, 0.5)[1])


def test_sampler_uniformity():
    # 12 elements: 4 positives (2 drawn), 6 negatives (2 drawn), 2 ignored; 4000 images in one
    # call give independent draws; every candidate of a group should be chosen equally often.
    row = np.array([1, 0, -1, 1, 0, 0, 1, 0, -1, 0, 1, 0], np.int32)
    trials = 4000
    labels = np.tile(row, (trials, 1))
    idx, _ = sample_balanced(labels, 4, 0.5, (11, 12))
    idx = idx.numpy()
    counts = np.bincount(idx.ravel(), minlength=row.size)
    assert counts[row == -1].sum() == 0
    for group, k in ((1, 2), (0, 2)):
        members = np.flatnonzero(row == group)
        expected = trials * k / members.size
        chi2 = ((counts[members] - expected) ** 2 / expected).sum()
        assert chi2 < 30, (group, counts[members], expected)  # dof <= 5: very loose
    # the first slot (order within positives) is uniform too
    first = np.bincount(idx[:, 0], minlength=row.size)[row == 1]
    assert (((first - trials / 4) ** 2) / (trials / 4)).sum() < 30
    # and over seeds, for a single image
    seeds_counts = np.zeros(row.size)
    fn = tf.function(lambda s: sample_balanced(row[None], 4, 0.5, s)[0])
    for s in range(300):
        seeds_counts += np.bincount(fn(tf.constant([s, 99])).numpy().ravel(), minlength=row.size)
    pos = seeds_counts[row == 1]
    assert pos.min() > 0.6 * 150 and pos.max() < 1.4 * 150


def test_sampler_determinism_and_seed_dependence():
    rng = np.random.default_rng(7)
    labels = rng.choice(np.array([1, 0, -1], np.int32), size=(3, 500), p=[0.2, 0.6, 0.2])
    a = sample_balanced(labels, 64, 0.25, (1, 2))
    b = sample_balanced(tf.constant(labels), 64, 0.25, tf.constant([1, 2], tf.int64))
    c = sample_balanced(labels, 64, 0.25, (1, 3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.any(a[0].numpy() != c[0].numpy())
    np.testing.assert_array_equal(a[1], c[1])  # counts do not depend on the seed
    assert np.any(a[0].numpy()[0] != a[0].numpy()[1][:64])  # images drawn independently


def test_sampler_padding_and_empty():
    labels = np.array([[1, 0, -1], [-1, -1, -1]], np.int32)
    idx, lab = sample_balanced(labels, 6, 0.5, (0, 0))
    _check_sample(labels, idx, lab, 6, 0.5)
    np.testing.assert_array_equal(idx.numpy()[0], [0, 1, -1, -1, -1, -1])
    np.testing.assert_array_equal(idx.numpy()[1], -np.ones(6))
    idx, lab = sample_balanced(np.zeros((2, 0), np.int32), 4, 0.25, (0, 0))
    np.testing.assert_array_equal(idx, -np.ones((2, 4)))
    np.testing.assert_array_equal(lab, -np.ones((2, 4)))


def test_sampler_under_tf_function_dynamic_shapes():
    fn = tf.function(
        lambda labels, seed: sample_balanced(labels, 8, 0.25, seed),
        input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([2], tf.int32)],
    )
    rng = np.random.default_rng(8)
    for num in (3, 50, 0):
        labels = rng.choice(np.array([1, 0, -1], np.int32), size=(4, num))
        idx, lab = fn(labels, tf.constant([5, 6]))
        _check_sample(labels, idx, lab, 8, 0.25)
        eager = sample_balanced(labels, 8, 0.25, (5, 6))
        np.testing.assert_array_equal(idx, eager[0])


def test_gather_or_pad_reads_pad_value_at_minus_one_and_n():
    """Rows at -1 (and N, the appended pad row) read ``pad_value``; N = 0 is safe."""
    params = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # (B, N, 2)
    indices = np.array([[2, -1, 0, 3], [-1, 1, 1, -1]], np.int32)  # (B, S)
    got = gather_or_pad(params, indices, -5.0).numpy()
    expected = np.full((2, 4, 2), -5.0, np.float32)
    for b in range(2):
        for s, i in enumerate(indices[b]):
            if 0 <= i < 3:
                expected[b, s] = params[b, i]
    np.testing.assert_array_equal(got, expected)
    empty = gather_or_pad(np.zeros((2, 0), np.int32), -np.ones((2, 3), np.int32), 7).numpy()
    np.testing.assert_array_equal(empty, np.full((2, 3), 7))
    fn = tf.function(lambda p, i: gather_or_pad(p, i, -5.0),
                     input_signature=[tf.TensorSpec([None, None, 2], tf.float32),
                                      tf.TensorSpec([None, None], tf.int32)])
    np.testing.assert_array_equal(fn(params, indices).numpy(), expected)
