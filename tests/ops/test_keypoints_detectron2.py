"""keras_maskrcnn.ops.keypoints in detectron2's conventions (score "detectron2", the COCO
coordinate offset, absent keypoints) against the torch oracle tests/support/d2_keypoints.py."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.keypoints import (ABSENT_SCORE, heatmaps_to_keypoints,
                                          mask_absent_keypoints, shift_keypoints)
from support.d2_keypoints import D2_COCO_OFFSET, d2_heatmaps_to_keypoints, d2_keypoint_predictions


def _rois(rng, n):
    """(n, 4) float32 boxes: log-uniform non-integer sides 0.2..250 px, a few below 1 px, one
    empty and one inverted."""
    x1, y1 = rng.uniform(-10, 300, (2, n))
    w, h = np.exp(rng.uniform(np.log(0.2), np.log(250.0), (2, n)))
    rois = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
    rois[0] = [3.0, 4.0, 3.0, 4.0]  # empty -> 1 x 1
    rois[1] = [9.0, 9.0, 8.5, 8.2]  # inverted -> 1 x 1
    rois[2] = [1.25, 2.5, 1.75, 2.9]  # 0.5 x 0.4 px
    return rois


def _heatmaps(rng, n, k, size=56):
    """Noise plus a peak at a random sub-cell place (sharp enough to avoid most ties)."""
    grid = np.arange(size, dtype=np.float32)
    cx, cy = rng.uniform(0, size - 1, (2, n, k, 1, 1))
    blob = np.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / 6.0)
    return (6.0 * blob + rng.normal(size=(n, k, size, size))).astype(np.float32)


def _resized_value(torch, heatmap, roi, x, y):
    """Value of the bicubically resized heatmap at the cell holding (x, y), and its max."""
    w, h = max(roi[2] - roi[0], 1.0), max(roi[3] - roi[1], 1.0)
    size = (int(np.ceil(h)), int(np.ceil(w)))
    resized = torch.nn.functional.interpolate(torch.from_numpy(heatmap[None, None]), size=size,
                                              mode="bicubic", align_corners=False)[0, 0].numpy()
    col = int(round((x - roi[0]) / (w / size[1]) - 0.5))
    row = int(round((y - roi[1]) / (h / size[0]) - 0.5))
    return resized[row, col], resized.max()


@pytest.mark.parametrize("heatmap_kind", ["peaked", "noise"])
def test_detectron2_score_and_positions_match_the_oracle(torch, rng, heatmap_kind):
    n, k = 40, 5
    rois = _rois(rng, n)
    maps = (_heatmaps(rng, n, k) if heatmap_kind == "peaked"
            else rng.normal(size=(n, k, 56, 56)).astype(np.float32))
    ref = d2_heatmaps_to_keypoints(maps, rois)  # (n, k, 4)
    ours = heatmaps_to_keypoints(maps, rois, score="detectron2").numpy()
    logit = heatmaps_to_keypoints(maps, rois).numpy()
    close = np.all(np.abs(ours[..., :2] - ref[..., :2]) <= 1e-3, axis=-1)  # (n, k)
    assert close.mean() >= 0.99, close.mean()
    for i, j in zip(*np.nonzero(~close)):  # a different argmax must be a near-tie
        value, peak = _resized_value(torch, maps[i, j], rois[i], *ours[i, j, :2])
        assert value == pytest.approx(peak, abs=1e-5)
    np.testing.assert_allclose(ours[..., 2], ref[..., 3], rtol=1e-4, atol=0)
    np.testing.assert_allclose(ours[..., :2], logit[..., :2])  # same positions either way
    np.testing.assert_allclose(logit[..., 2], ref[..., 2], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(d2_keypoint_predictions(maps, rois), ref[..., [0, 1, 3]])
    assert np.all((ours[..., 2] > 0) & (ours[..., 2] <= 56 * 56))


def test_detectron2_score_hand_case():
    # A 4 x 4 box keeps the 4 x 4 map (bicubic at scale 1 is the identity): the score is
    # 1 / sum exp(h - max) over the map.
    maps = np.zeros((1, 1, 4, 4), np.float32)
    maps[0, 0, 1, 2] = np.log(5.0)
    rois = np.array([[10.0, 20.0, 14.0, 24.0]], np.float32)
    out = heatmaps_to_keypoints(maps, rois, score="detectron2").numpy()
    np.testing.assert_allclose(out[0, 0], [12.5, 21.5, 1.0 / (1.0 + 15.0 / 5.0)], rtol=1e-6)


def test_detectron2_score_mutation_fails(torch, rng):
    """Keeping the logit, or normalising over the resized map, is not detectron2's score."""
    rois = _rois(rng, 12)
    maps = _heatmaps(rng, 12, 3)
    ref = d2_heatmaps_to_keypoints(maps, rois)
    logit = heatmaps_to_keypoints(maps, rois).numpy()
    assert not np.allclose(logit[..., 2], ref[..., 3], rtol=1e-4)
    i = int(np.argmax(rois[:, 2] - rois[:, 0]))  # resized map far wider than 56
    w, h = max(rois[i, 2] - rois[i, 0], 1.0), max(rois[i, 3] - rois[i, 1], 1.0)
    assert w > 56
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(maps[i:i + 1]), size=(int(np.ceil(h)), int(np.ceil(w))),
        mode="bicubic", align_corners=False)[0].numpy()  # (3, h, w)
    peak = resized.reshape(3, -1).max(axis=1)
    over_resized = 1.0 / np.exp(resized - peak[:, None, None]).sum(axis=(1, 2))
    assert not np.allclose(over_resized, ref[i, :, 3], rtol=1e-4)
    with pytest.raises(ValueError, match="score"):
        heatmaps_to_keypoints(maps, rois, score="softmax")


def test_detectron2_score_in_a_tf_function_and_batched(rng):
    rois = _rois(rng, 6).reshape(2, 3, 4)
    maps = _heatmaps(rng, 6, 4).reshape(2, 3, 4, 56, 56)
    fn = tf.function(lambda m, r: heatmaps_to_keypoints(m, r, score="detectron2"))
    out = fn(maps, rois).numpy()
    ref = d2_keypoint_predictions(maps.reshape(6, 4, 56, 56), rois.reshape(6, 4))
    np.testing.assert_allclose(out.reshape(6, 4, 3), ref, rtol=1e-4, atol=1e-3)


def test_shift_keypoints_moves_present_keypoints_only():
    kp = np.array([[[10.0, 20.0, 0.7], [0.0, 0.0, ABSENT_SCORE]]], np.float32)
    out = shift_keypoints(kp, D2_COCO_OFFSET).numpy()
    np.testing.assert_array_equal(out[0, 0], [9.5, 19.5, np.float32(0.7)])
    np.testing.assert_array_equal(out[0, 1], [0.0, 0.0, -np.inf])
    np.testing.assert_array_equal(shift_keypoints(kp, 0.0).numpy(), kp)


def test_mask_absent_keypoints():
    kp = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)
    present = np.array([[True, False, True], [False, False, True]])
    out = mask_absent_keypoints(kp, present).numpy()
    np.testing.assert_array_equal(out[present], kp[present])
    np.testing.assert_array_equal(out[~present][..., :2], 0.0)
    assert np.all(out[~present][..., 2] == -np.inf)
