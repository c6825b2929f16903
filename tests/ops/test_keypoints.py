"""Tests for keras_maskrcnn.ops.keypoints against torchvision's roi_heads and numpy oracles."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.keypoints import (
    bicubic_resize_matrix,
    heatmaps_to_keypoints,
    keypoints_to_heatmap,
)


# ----------------------------------------------------------------------------- helpers


def _random_rois(rng, n, low=0.5, high=200.0, span=400.0):
    """(n, 4) float32 xyxy RoIs with log-uniform sides in [low, high]."""
    x1 = rng.uniform(-20, span, n)
    y1 = rng.uniform(-20, span, n)
    w = np.exp(rng.uniform(np.log(low), np.log(high), n))
    h = np.exp(rng.uniform(np.log(low), np.log(high), n))
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def _random_keypoints(rng, rois, k):
    """(n, k, 3) keypoints around each RoI: inside, outside, on each edge, invisible."""
    n = len(rois)
    x1, y1, x2, y2 = (rois[:, i : i + 1] for i in range(4))
    u = rng.uniform(-0.3, 1.3, (n, k))
    v = rng.uniform(-0.3, 1.3, (n, k))
    x = (x1 + u * (x2 - x1)).astype(np.float32)
    y = (y1 + v * (y2 - y1)).astype(np.float32)
    edge = rng.integers(0, 6, (n, k))  # put some exactly on an edge
    x = np.where(edge == 1, x2, np.where(edge == 2, x1, x))
    y = np.where(edge == 3, y2, np.where(edge == 4, y1, y))
    x = np.where(edge == 5, x2, x)
    y = np.where(edge == 5, y2, y)  # bottom-right corner
    vis = rng.integers(0, 3, (n, k)).astype(np.float32)  # 0 unlabelled, 1, 2
    return np.stack([x, y, vis], axis=-1).astype(np.float32)


def _numpy_heatmap_oracle(keypoints, rois, size):
    """Slow loop oracle of keypoints_to_heatmap for (n, k, 3) keypoints, (n, 4) float32 rois."""
    n, k = keypoints.shape[:2]
    targets = np.zeros((n, k), np.int64)
    valid = np.zeros((n, k), bool)
    for i in range(n):
        x1, y1, x2, y2 = rois[i]
        sx = np.float32(size) / (x2 - x1)
        sy = np.float32(size) / (y2 - y1)
        for j in range(k):
            x, y, vis = keypoints[i, j]
            cx = size - 1 if x == x2 else int(np.floor((x - x1) * sx))
            cy = size - 1 if y == y2 else int(np.floor((y - y1) * sy))
            if vis > 0 and 0 <= cx < size and 0 <= cy < size:
                valid[i, j] = True
                targets[i, j] = cy * size + cx
    return targets, valid


def _torch_keypoints(torch, torchvision, heatmaps, rois):
    """torchvision's decoding: (n, k, 3) [x, y, end_score]."""
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_decode

    xy, scores = tv_decode(torch.from_numpy(heatmaps), torch.from_numpy(rois))
    return np.concatenate([xy[..., :2].numpy(), scores[..., None].numpy()], axis=-1)


def _peaked_heatmaps(rng, n, k, size):
    """Heatmaps with one clear Gaussian peak at a random sub-cell location plus noise."""
    grid = np.arange(size, dtype=np.float32)
    cx = rng.uniform(0, size - 1, (n, k, 1, 1))
    cy = rng.uniform(0, size - 1, (n, k, 1, 1))
    blob = np.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / 4.0)
    return (8.0 * blob + 0.3 * rng.normal(size=(n, k, size, size))).astype(np.float32)


# ----------------------------------------------------------------------- keypoints_to_heatmap


def test_keypoints_to_heatmap_hand_case():
    rois = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)  # scale 5 / 10 = 0.5
    keypoints = np.array(
        [
            [
                [3.0, 7.0, 1.0],  # (1, 3) -> 3 * 5 + 1 = 16
                [10.0, 2.0, 2.0],  # right edge -> column 4, row 1 -> 9
                [-0.1, 5.0, 1.0],  # left of the RoI -> invalid
                [3.0, 7.0, 0.0],  # unlabelled -> invalid
                [9.99, 9.99, 1.0],  # (4, 4) -> 24
                [10.01, 5.0, 1.0],  # right of the RoI (column 5) -> invalid
                [0.0, 10.0, 1.0],  # left edge, bottom edge -> (0, 4) -> 20
            ]
        ],
        np.float32,
    )
    targets, valid = keypoints_to_heatmap(keypoints, rois, 5)
    assert targets.dtype == tf.int32 and valid.dtype == tf.bool
    np.testing.assert_array_equal(targets.numpy(), [[16, 9, 0, 0, 24, 0, 20]])
    np.testing.assert_array_equal(valid.numpy(), [[1, 1, 0, 0, 1, 0, 1]])


def test_keypoints_to_heatmap_matches_torchvision_and_oracle(torch, torchvision, rng):
    from torchvision.models.detection.roi_heads import keypoints_to_heatmap as tv_encode

    size, b, r, k = 56, 2, 40, 17
    rois = _random_rois(rng, b * r)
    keypoints = _random_keypoints(rng, rois, k)
    ref_t, ref_v = tv_encode(torch.from_numpy(keypoints), torch.from_numpy(rois), size)
    ora_t, ora_v = _numpy_heatmap_oracle(keypoints, rois, size)
    targets, valid = keypoints_to_heatmap(
        keypoints.reshape(b, r, k, 3), rois.reshape(b, r, 4), size
    )
    assert targets.shape == (b, r, k) and valid.shape == (b, r, k)
    np.testing.assert_array_equal(targets.numpy().reshape(-1, k), ref_t.numpy())
    np.testing.assert_array_equal(valid.numpy().reshape(-1, k), ref_v.numpy().astype(bool))
    np.testing.assert_array_equal(targets.numpy().reshape(-1, k), ora_t)
    np.testing.assert_array_equal(valid.numpy().reshape(-1, k), ora_v)
    # The sample exercises every branch: valid, edges, outside, unlabelled.
    assert 0.2 < ora_v.mean() < 0.8
    assert np.any((keypoints[..., 0] == rois[:, None, 2]) & ora_v)
    assert np.any((keypoints[..., 2] == 0) & (ora_t == 0))


def test_keypoints_to_heatmap_mutation_width_plus_one_fails(torch, torchvision, rng):
    """A +1 width convention (x2 - x1 + 1) must be caught by the torchvision comparison."""
    from torchvision.models.detection.roi_heads import keypoints_to_heatmap as tv_encode

    rois = _random_rois(rng, 40, low=5.0)
    keypoints = _random_keypoints(rng, rois, 17)
    ref_t, _ = tv_encode(torch.from_numpy(keypoints), torch.from_numpy(rois), 56)
    mutated = rois + np.array([0, 0, 1, 1], np.float32)  # width = x2 - x1 + 1
    targets, _ = keypoints_to_heatmap(keypoints, mutated, 56)
    assert np.mean(targets.numpy() != ref_t.numpy()) > 0.1


def test_keypoints_to_heatmap_empty_and_tf_function():
    fn = tf.function(keypoints_to_heatmap, reduce_retracing=True)
    targets, valid = fn(tf.zeros([2, 0, 17, 3]), tf.zeros([2, 0, 4]), 56)
    assert targets.shape == (2, 0, 17) and valid.shape == (2, 0, 17)
    # Degenerate (zero-size) RoI: only keypoints on its (x2, y2) corner survive, as torchvision.
    rois = tf.constant([[[5.0, 5.0, 5.0, 5.0]]])
    kps = tf.constant([[[[5.0, 5.0, 1.0], [4.0, 5.0, 1.0], [6.0, 6.0, 1.0]]]])
    targets, valid = fn(kps, rois, 56)
    np.testing.assert_array_equal(valid.numpy(), [[[True, False, False]]])
    np.testing.assert_array_equal(targets.numpy(), [[[56 * 56 - 1, 0, 0]]])


# ----------------------------------------------------------------------------- bicubic resize


@pytest.mark.parametrize("in_size,out_size", [(56, 1), (56, 3), (56, 57), (56, 223), (5, 5)])
def test_bicubic_resize_matrix_matches_torch(torch, in_size, out_size, rng):
    signal = rng.normal(size=(3, in_size)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(signal)[:, None, :, None].expand(-1, -1, -1, 2),
        size=(out_size, 2),
        mode="bicubic",
        align_corners=False,
    )[:, 0, :, 0].numpy()
    weights = bicubic_resize_matrix(out_size, in_size).numpy()
    assert weights.shape == (out_size, in_size)
    np.testing.assert_allclose(signal @ weights.T, ref, atol=2e-6)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)  # partition of unity


# ----------------------------------------------------------------------- heatmaps_to_keypoints


def test_heatmaps_to_keypoints_hand_case():
    # A 4 x 4 RoI keeps the 4 x 4 heatmap as is (bicubic at scale 1 is the identity).
    maps = np.zeros((1, 2, 4, 4), np.float32)
    maps[0, 0, 1, 2] = 3.0  # row 1, column 2
    maps[0, 1] = 1.0  # constant map: ties -> first position (0, 0), as torch.argmax
    rois = np.array([[10.0, 20.0, 14.0, 24.0]], np.float32)
    out = heatmaps_to_keypoints(maps, rois).numpy()
    np.testing.assert_allclose(out[0, 0], [10.0 + 2.5, 20.0 + 1.5, 3.0], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [10.0 + 0.5, 20.0 + 0.5, 1.0], atol=1e-6)
    # A 2.5 x 1 RoI: resized to 3 x 1 (ceil), corrections 2.5 / 3 and 1 / 1.
    rois = np.array([[0.0, 0.0, 2.5, 1.0]], np.float32)
    out = heatmaps_to_keypoints(maps, rois).numpy()
    assert out[0, 0, 1] == pytest.approx(0.5)
    assert out[0, 0, 0] in [pytest.approx((j + 0.5) * 2.5 / 3) for j in range(3)]


def _assert_matches_torch(torch, torchvision, heatmaps, rois, min_exact=0.99):
    """Positions equal to torchvision's except at float near-ties; scores within 1e-3."""
    ref = _torch_keypoints(torch, torchvision, heatmaps, rois)
    ours = heatmaps_to_keypoints(heatmaps, rois).numpy()
    same = np.all(ours[..., :2] == ref[..., :2], axis=-1)
    assert same.mean() >= min_exact, same.mean()
    np.testing.assert_allclose(ours[..., 2], ref[..., 2], atol=1e-3, rtol=0)
    for i, j in zip(*np.nonzero(~same)):  # a differing argmax must be a near-tie in torch's map
        x1, y1, x2, y2 = rois[i]
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(heatmaps[i, j][None, None]),
            size=(int(np.ceil(h)), int(np.ceil(w))),
            mode="bicubic",
            align_corners=False,
        )[0, 0].numpy()
        col = int(round((ours[i, j, 0] - x1) / (w / np.ceil(w)) - 0.5))
        row = int(round((ours[i, j, 1] - y1) / (h / np.ceil(h)) - 0.5))
        assert resized[row, col] == pytest.approx(resized.max(), abs=1e-5)
    return ours, ref


def test_heatmaps_to_keypoints_peaked_matches_torchvision(torch, torchvision, rng):
    rois = _random_rois(rng, 24, low=0.3, high=300.0)
    heatmaps = _peaked_heatmaps(rng, 24, 17, 56)
    _assert_matches_torch(torch, torchvision, heatmaps, rois)


def test_heatmaps_to_keypoints_noise_matches_torchvision(torch, torchvision, rng):
    rois = _random_rois(rng, 24, low=0.3, high=150.0)
    rois[0] = [5.0, 5.0, 5.0, 5.0]  # zero size -> clamped to 1 x 1
    rois[1] = [5.0, 5.0, 4.0, 3.0]  # inverted -> clamped to 1 x 1
    rois[2] = [0.0, 0.0, 56.0, 56.0]  # same size as the heatmap
    heatmaps = rng.normal(size=(24, 5, 56, 56)).astype(np.float32)
    _assert_matches_torch(torch, torchvision, heatmaps, rois)


def test_heatmaps_to_keypoints_mutation_offset_fails(torch, torchvision, rng):
    """Dropping the +0.5 (Heckbert) offset, or using the tf.image bicubic kernel, must fail."""
    rois = _random_rois(rng, 16, low=20.0, high=100.0)
    heatmaps = _peaked_heatmaps(rng, 16, 17, 56)
    ours, ref = _assert_matches_torch(torch, torchvision, heatmaps, rois)
    w = np.maximum(rois[:, 2] - rois[:, 0], 1.0)
    no_offset = ours[..., 0] - 0.5 * (w / np.ceil(w))[:, None]
    assert not np.allclose(no_offset, ref[..., 0], atol=1e-3)
    # TF's bicubic (Keys A = -0.5, half-pixel centres) peaks elsewhere or scores differently.
    i = 0
    size = (int(np.ceil(rois[i, 3] - rois[i, 1])), int(np.ceil(rois[i, 2] - rois[i, 0])))
    tf_map = tf.image.resize(heatmaps[i].transpose(1, 2, 0), size, method="bicubic").numpy()
    assert not np.allclose(tf_map.max(axis=(0, 1)), ref[i, :, 2], atol=1e-3)


def test_heatmaps_to_keypoints_batched_tf_function_and_empty(torch, torchvision, rng):
    b, r, k = 2, 3, 4
    rois = _random_rois(rng, b * r, low=2.0, high=80.0)
    heatmaps = _peaked_heatmaps(rng, b * r, k, 56)
    fn = tf.function(heatmaps_to_keypoints)
    out = fn(heatmaps.reshape(b, r, k, 56, 56), rois.reshape(b, r, 4))
    assert out.shape == (b, r, k, 3)
    ref = _torch_keypoints(torch, torchvision, heatmaps, rois)
    np.testing.assert_allclose(out.numpy().reshape(-1, k, 3), ref, atol=1e-3)
    empty = fn(tf.zeros([b, 0, k, 56, 56]), tf.zeros([b, 0, 4]))
    assert empty.shape == (b, 0, k, 3)


@pytest.mark.parametrize("score", ["logit", "detectron2"])
def test_heatmaps_to_keypoints_unrolled_equals_map_fn(rng, score):
    """``unroll=True`` (the ONNX / LiteRT graphs) decodes the same keypoints as the loop."""
    rois = _random_rois(rng, 6, low=0.3, high=120.0).reshape(1, 6, 4)
    heatmaps = rng.normal(size=(1, 6, 3, 56, 56)).astype(np.float32)
    looped = heatmaps_to_keypoints(heatmaps, rois, score=score).numpy()
    spec = [tf.TensorSpec([1, 6, 3, 56, 56]), tf.TensorSpec([1, 6, 4])]
    unrolled = tf.function(lambda h, r: heatmaps_to_keypoints(h, r, score=score, unroll=True),
                           input_signature=spec)
    assert "While" not in {op.type for op in unrolled.get_concrete_function().graph
                           .get_operations()}
    np.testing.assert_array_equal(unrolled(heatmaps, rois).numpy(), looped)
    empty = heatmaps_to_keypoints(tf.zeros([1, 0, 3, 56, 56]), tf.zeros([1, 0, 4]), unroll=True)
    assert empty.shape == (1, 0, 3, 3)
