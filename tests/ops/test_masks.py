"""Tests for keras_maskrcnn.ops.masks against torchvision's roi_heads mask functions."""
import numpy as np
import pytest
import tensorflow as tf
from skimage.draw import ellipse, polygon

from keras_maskrcnn.ops.masks import bilinear_paste_matrix, paste_masks, project_masks_on_boxes
from keras_maskrcnn.ops import masks as M


# ----------------------------------------------------------------------------- helpers


def _shape_masks(rng, b, m, height, width):
    """(b, m, H, W) uint8 masks (rotated ellipses and star polygons) and (b, m, 4) tight boxes."""
    masks = np.zeros((b, m, height, width), np.uint8)
    boxes = np.zeros((b, m, 4), np.float32)
    for i in range(b):
        for j in range(m):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)  # may touch the border
            if j % 2 == 0:
                ry, rx = rng.uniform(8, height / 3, 2)
                rows, cols = ellipse(cy, cx, ry, rx, (height, width), rng.uniform(0, np.pi))
            else:
                angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
                radii = rng.uniform(10, height / 3, 9)
                rows, cols = polygon(cy + radii * np.sin(angles), cx + radii * np.cos(angles),
                                     (height, width))
            masks[i, j, rows, cols] = 1
            boxes[i, j] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    return masks, boxes


def _tv_targets(torch, torchvision, gt_masks, boxes, matched, size):
    """torchvision's project_masks_on_boxes per image -> (B, R, S, S)."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes as tv_project

    return np.stack([
        tv_project(torch.from_numpy(gt_masks[i]), torch.from_numpy(boxes[i]),
                   torch.from_numpy(np.maximum(matched[i], 0)).long(), size).numpy()
        for i in range(len(boxes))
    ])


def _tv_paste(torch, torchvision, masks, boxes, height, width, padding=1):
    """torchvision's paste_masks_in_image per image -> (B, R, H, W)."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    return np.stack([
        paste_masks_in_image(torch.from_numpy(masks[i])[:, None], torch.from_numpy(boxes[i]),
                             (height, width), padding)[:, 0].numpy()
        for i in range(len(boxes))
    ])


def _iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def _paste_boxes(rng, shape, height, width):
    """Random boxes: tiny (< 1 px), small, large, partly outside the image on every side.

    torchvision's paste raises (negative slice ends) when an expanded box lies entirely left of
    or above the image, so every box keeps x2, y2 >= 0.5 and x1 < W - 1, y1 < H - 1.
    """
    side = np.exp(rng.uniform(np.log(0.2), np.log(1.5 * max(height, width)), shape + (2,)))
    x1 = rng.uniform(-0.3 * width, width - 1.0, shape)
    y1 = rng.uniform(-0.3 * height, height - 1.0, shape)
    x2 = np.maximum(x1 + side[..., 0], 0.5)
    y2 = np.maximum(y1 + side[..., 1], 0.5)
    return np.stack([np.minimum(x1, x2), np.minimum(y1, y2), x2, y2], -1).astype(np.float32)


# --------------------------------------------------------------------- project_masks_on_boxes


def test_project_hand_case():
    # GT 0: a 2 x 2 block at the top-left of a 4 x 4 image; GT 1: empty.
    gt = np.zeros((1, 2, 4, 4), np.uint8)
    gt[0, 0, :2, :2] = 1
    boxes = np.array([[[0.0, 0.0, 4.0, 4.0]] * 3], np.float32)
    matched = np.array([[0, 1, -1]], np.int32)  # -1 (background) reads GT 0
    out = project_masks_on_boxes(gt, boxes, matched, 2, sampling_ratio=2).numpy()
    # Bin (0, 0) samples y, x in {0.5, 1.5}: bilinear values 1 and 0.5 per axis -> mean 0.5625.
    expected = np.array([[0.5625, 0.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], 0.0)
    np.testing.assert_allclose(out[0, 2], expected, atol=1e-6)


@pytest.mark.parametrize("grid,low,high", [(2, 28.5, 56.0), (3, 56.5, 84.0)])
def test_project_exact_where_adaptive_sampling_equals_grid(torch, torchvision, rng, grid, low,
                                                           high):
    """RoI sides in (28 (G - 1), 28 G] make torchvision's adaptive sampling exactly G."""
    b, m, r, size = 2, 4, 40, 28
    gt, _ = _shape_masks(rng, b, m, 96, 128)
    x1 = rng.uniform(-20, 110, (b, r))
    y1 = rng.uniform(-20, 80, (b, r))  # some RoIs hang over every border
    wh = rng.uniform(low, high, (b, r, 2))
    boxes = np.stack([x1, y1, x1 + wh[..., 0], y1 + wh[..., 1]], -1).astype(np.float32)
    matched = rng.integers(-1, m, (b, r)).astype(np.int32)
    ref = _tv_targets(torch, torchvision, gt, boxes, matched, size)
    for masks in (gt, gt.astype(bool), gt.astype(np.float32)):
        out = project_masks_on_boxes(masks, boxes, matched, size, sampling_ratio=grid)
        assert out.shape == (b, r, size, size) and out.dtype == tf.float32
        # crop_and_resize normalises coordinates by (H + 1): float rounding only, ~2e-5.
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-4)
    # Mutations: the half-pixel (aligned) convention, or reading the wrong GT, are caught.
    aligned = project_masks_on_boxes(gt, boxes, matched, size, grid, aligned=True).numpy()
    assert np.abs(aligned - ref).max() > 0.1
    shifted = project_masks_on_boxes(gt, boxes, (np.maximum(matched, 0) + 1) % m, size, grid)
    assert np.abs(shifted.numpy() - ref).max() > 0.5


def test_project_realistic_rois_close_to_adaptive_torchvision(torch, torchvision, rng):
    """Fixed G = 2 vs torchvision's adaptive sampling on jittered GT boxes of shape masks."""
    b, m, r, size = 2, 6, 96, 28
    gt, gt_boxes = _shape_masks(rng, b, m, 240, 320)
    matched = rng.integers(0, m, (b, r)).astype(np.int32)
    matched_boxes = np.take_along_axis(gt_boxes, matched[..., None], axis=1)  # (b, r, 4)
    sides = np.concatenate([matched_boxes[..., 2:] - matched_boxes[..., :2]] * 2, axis=-1)
    boxes = (matched_boxes + rng.normal(0.0, 0.1, (b, r, 4)) * sides).astype(np.float32)
    ref = _tv_targets(torch, torchvision, gt, boxes, matched, size)
    out = project_masks_on_boxes(gt, boxes, matched, size, sampling_ratio=2).numpy()
    iou = _iou(out >= 0.5, ref >= 0.5)
    mean_abs = np.abs(out - ref).mean()
    print(f"project_masks_on_boxes G=2 vs adaptive: IoU {iou:.4f}, mean |diff| {mean_abs:.5f}")
    assert iou >= 0.99
    assert mean_abs < 0.01
    # Mutation: a 1-pixel shift of the RoIs is clearly visible in the same metrics.
    moved = project_masks_on_boxes(gt, boxes + 2.0, matched, size).numpy()
    assert _iou(moved >= 0.5, ref >= 0.5) < iou - 0.01


def test_project_empty_and_tf_function():
    fn = tf.function(project_masks_on_boxes)
    out = fn(tf.zeros([2, 3, 16, 16], tf.uint8), tf.zeros([2, 0, 4]), tf.zeros([2, 0], tf.int32),
             28)
    assert out.shape == (2, 0, 28, 28)
    gt = np.zeros((2, 3, 16, 16), np.uint8)
    gt[1, 2, 4:12, 4:12] = 1  # only image 1, GT 2 is non-empty
    boxes = np.tile(np.array([[[4.0, 4.0, 12.0, 12.0]]], np.float32), (2, 2, 1))
    matched = np.array([[2, 2], [1, 2]], np.int32)
    out = fn(gt, boxes, matched, 8).numpy()
    assert out[1, 1].min() > 0.2 and out[1, 1].mean() > 0.8  # image 1's GT 2, not image 0's
    np.testing.assert_allclose(out[[0, 0, 1], [0, 1, 0]], 0.0)
    none = project_masks_on_boxes(tf.zeros([2, 0, 16, 16]), boxes, matched, 8)  # no GT slots
    assert none.shape == (2, 2, 8, 8)


# ------------------------------------------------------------------------------- paste_masks


def test_paste_hand_case(torch, torchvision):
    # 2 x 2 ones, padded to 4 x 4 with zeros; box (0, 0, 2, 2) expands by 4 / 2 about its centre
    # to (-1, -1, 3, 3): 5 x 5 pixels, resized with source x = max(0.8 (j + 0.5) - 0.5, 0)
    # -> (0, 0.7, 1, 0.7, 0) per axis, written from pixel -1 (so pixel 0 gets 0.7).
    masks = np.ones((1, 1, 2, 2), np.float32)
    boxes = np.array([[[0.0, 0.0, 2.0, 2.0]]], np.float32)
    out = paste_masks(masks, boxes, 5, 6).numpy()
    profile = np.array([0.7, 1.0, 0.7, 0.0, 0.0])
    np.testing.assert_allclose(out[0, 0], np.outer(profile, np.append(profile, 0.0)), atol=1e-6)
    np.testing.assert_allclose(out, _tv_paste(torch, torchvision, masks, boxes, 5, 6), atol=1e-6)


def test_bilinear_paste_matrix_rows_sum_to_one_inside():
    weights = bilinear_paste_matrix(tf.constant([3, -4]), tf.constant([9, 2]), 30, 12).numpy()
    inside = np.zeros((2, 12), bool)
    inside[0, 3:10] = True
    inside[1, 0:3] = True
    np.testing.assert_allclose(weights.sum(-1), inside.astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("size,padding,height,width", [(28, 1, 120, 150), (14, 1, 97, 61),
                                                       (28, 0, 64, 80), (28, 2, 50, 50)])
def test_paste_matches_torchvision(torch, torchvision, rng, size, padding, height, width):
    b, r = 2, 40
    boxes = _paste_boxes(rng, (b, r), height, width)
    logits = rng.normal(0.0, 4.0, (b, r, size, size))
    masks = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    ref = _tv_paste(torch, torchvision, masks, boxes, height, width, padding)
    out = paste_masks(masks, boxes, height, width, padding).numpy()
    assert out.shape == (b, r, height, width)
    max_abs = np.abs(out - ref).max()
    print(f"paste_masks S={size} padding={padding}: max |diff| {max_abs:.2e}")
    assert max_abs < 1e-5
    assert _iou(out > 0.5, ref > 0.5) == 1.0  # exact binary masks
    assert np.array_equal(out > 0, ref > 0)  # the same support (the pasted box region)
    # Mutations: a one-pixel shift of the pasted region, or another padding, are caught.
    assert np.abs(np.roll(out, 1, axis=-1) - ref).max() > 0.1
    other = paste_masks(masks, boxes, height, width, padding + 1).numpy()
    assert _iou(other > 0.5, ref > 0.5) < 0.99


def test_paste_outside_empty_and_tf_function():
    fn = tf.function(paste_masks)
    masks = tf.ones([1, 3, 28, 28])
    boxes = tf.constant([[[-50.0, 5.0, -20.0, 9.0],  # left of the image
                          [5.0, 70.0, 9.0, 90.0],  # below it
                          [0.0, 0.0, 1e-3, 1e-3]]])  # tiny: one pixel
    out = fn(masks, boxes, tf.constant(40), tf.constant(60)).numpy()
    assert out.shape == (1, 3, 40, 60)
    np.testing.assert_allclose(out[0, :2], 0.0)  # entirely outside (torchvision raises here)
    assert out[0, 2, 0, 0] > 0.0 and out[0, 2].sum() == out[0, 2, 0, 0]  # one pixel
    empty = fn(tf.zeros([2, 0, 28, 28]), tf.zeros([2, 0, 4]), 40, 60)
    assert empty.shape == (2, 0, 40, 60)


# ---------------------------------------------------------------- detectron2's paste


def d2_paste_boxes(rng, height, width):
    """(R, 4) float boxes: random fractional, tiny, border-crossing, out-of-image, whole."""
    xy = rng.uniform(-10, [width, height], size=(12, 2))
    wh = rng.uniform(1.0, 0.8 * max(height, width), size=(12, 2))
    random = np.concatenate([xy, xy + wh], 1)
    special = np.array([
        [3.3, 4.7, 3.9, 5.2],  # tiny, inside one pixel
        [10.5, 2.25, 10.75, 30.0],  # thin
        [-7.4, -3.1, 12.6, 9.9],  # crosses the top-left border
        [width - 5.5, height - 9.2, width + 20.3, height + 4.1],  # crosses bottom-right
        [width + 3.0, 2.0, width + 30.0, 40.0],  # entirely outside (right)
        [-40.0, -30.0, -2.0, -1.0],  # entirely outside (top-left)
        [0.0, 0.0, width, height],  # the whole image
        [-20.0, -20.0, width + 20.0, height + 20.0],  # larger than the image
    ])
    return np.concatenate([random, special]).astype(np.float32)


def test_paste_detectron2_matches_grid_sample_transcription(torch, rng):
    from support import d2_masks

    height, width, size = 61, 83, 28
    boxes = d2_paste_boxes(rng, height, width)
    probs = rng.uniform(0.0, 1.0, size=(2, len(boxes), size, size)).astype(np.float32)
    got = M.paste_masks_detectron2(probs, np.stack([boxes, boxes[::-1]]), height, width).numpy()
    for b, image_boxes in enumerate((boxes, boxes[::-1])):
        want = d2_masks.d2_do_paste_mask(probs[b], image_boxes, height, width)
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-5)
        on = M.paste_and_threshold(probs[b:b + 1], image_boxes[None], height, width, 0.5,
                                   "detectron2").numpy()[0]
        want_on = d2_masks.d2_paste_masks_in_image(probs[b], image_boxes, (height, width))
        np.testing.assert_array_equal(on, want_on)
    assert got[:, -4].max() > 0 and got[0, len(boxes) - 4].sum() == 0  # outside: empty
    with pytest.raises(ValueError, match="paste"):
        M.paste_and_threshold(probs, np.stack([boxes] * 2), height, width, 0.5, "d2")


def test_paste_detectron2_binary_and_degenerate_boxes(torch):
    from support import d2_masks

    mask = np.ones((1, 1, 4, 4), np.float32)
    boxes = np.array([[[2.0, 1.0, 6.0, 3.0]]], np.float32)
    got = M.paste_and_threshold(mask, boxes, 5, 8, 0.5, "detectron2").numpy()[0, 0]
    want = np.zeros((5, 8), bool)
    want[1:3, 2:6] = True  # pixel centres inside the box, nothing more (no 1-pixel expansion)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        got, d2_masks.d2_paste_masks_in_image(mask[0], boxes[0], (5, 8))[0])
    # pixel centres on the mask's cell centres: values exactly the mask's, and >= keeps ties
    ties = np.array([[[[0.5, 0.49, 0.51, 0.5]] * 4]], np.float32)
    on = M.paste_and_threshold(ties, np.array([[[0, 0, 4, 4]]], np.float32), 4, 4, 0.5,
                               "detectron2").numpy()[0, 0]
    np.testing.assert_array_equal(on, ties[0, 0] >= 0.5)
    np.testing.assert_array_equal(
        on, d2_masks.d2_paste_masks_in_image(ties[0], [[0, 0, 4, 4]], (4, 4))[0])
    empty = np.array([[[4.0, 1.0, 4.0, 3.0]]], np.float32)  # zero width: zeros, no NaN
    assert M.paste_masks_detectron2(mask, empty, 5, 8).numpy().max() == 0.0


def test_project_adaptive_equals_torchvision_and_detectron2_targets(torch, torchvision, rng):
    """sampling_ratio=0: torchvision's own targets (aligned False) exactly, and detectron2's
    BitMasks.crop_and_resize (ROIAlign(S, 1.0, 0, aligned=True)) with aligned True."""
    b, m, r, size = 2, 3, 30, 28
    gt, _ = _shape_masks(rng, b, m, 96, 128)
    boxes = _paste_boxes(rng, (b, r), 96, 128)
    matched = rng.integers(-1, m, (b, r)).astype(np.int32)
    out = project_masks_on_boxes(gt, boxes, matched, size, sampling_ratio=0).numpy()
    np.testing.assert_allclose(out, _tv_targets(torch, torchvision, gt, boxes, matched, size),
                               rtol=0, atol=1e-4)
    out = project_masks_on_boxes(gt, boxes, matched, size, 0, aligned=True).numpy()
    for i in range(b):
        maps = torch.from_numpy(gt[i][np.maximum(matched[i], 0)].astype(np.float32))[:, None]
        rois = torch.cat([torch.arange(r, dtype=torch.float32)[:, None],
                          torch.from_numpy(boxes[i])], 1)
        want = torchvision.ops.roi_align(maps, rois, size, 1.0, 0, True)[:, 0].numpy()
        np.testing.assert_allclose(out[i], want, rtol=0, atol=1e-4)
