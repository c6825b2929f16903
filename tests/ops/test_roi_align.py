"""keras_maskrcnn.ops.roi_align against torchvision.ops.roi_align / MultiScaleRoIAlign /
LevelMapper and a numpy loop oracle of torchvision's C++ kernel."""
import math

import numpy as np
import pytest
import tensorflow as tf

import keras_maskrcnn.ops.roi_align as RA  # the module (ops re-exports no roi_align function)


def make_boxes(rng, shape, lo, hi, max_side):
    """Random xyxy float32 boxes (*shape, 4): corners in [lo, hi), sides in [0, max_side)."""
    xy = rng.uniform(lo, hi, size=shape + (2,))
    wh = rng.uniform(0.0, max_side, size=shape + (2,))
    return np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)


def special_boxes(height, width, scale):
    """(12, 4) input-pixel boxes: borders, zero-size, tiny, huge, outside, partly outside."""
    h, w = height / scale, width / scale  # the map's extent in input pixels
    return np.array([
        [0, 0, w, h],  # exactly the whole map
        [0, 0, 1 / scale, 1 / scale],  # one feature pixel at the top-left corner
        [w - 1 / scale, h - 1 / scale, w, h],  # one feature pixel at the bottom-right corner
        [w / 3, h / 3, w / 3, h / 3],  # zero-size box
        [w / 2, h / 4, w / 2, h / 2],  # zero width
        [w / 2, h / 2, w / 2 + 0.01, h / 2 + 0.02],  # tiny
        [-10 * w, -10 * h, 10 * w, 10 * h],  # huge, covers everything
        [2 * w, 2 * h, 3 * w, 3 * h],  # fully outside (bottom-right)
        [-3 * w, -3 * h, -2 * w, -2 * h],  # fully outside (top-left)
        [-w / 2, -h / 2, w / 2, h / 2],  # partly outside, top-left
        [w / 2, h / 2, 1.5 * w, 1.5 * h],  # partly outside, bottom-right
        [-1.5 / scale, h / 3, 0.5 / scale, h / 2],  # straddles the left border by ~1 pixel
    ], np.float32)


def tv_roi_align(torch, torchvision, features, boxes, output_size, scale, sampling, aligned):
    """torchvision.ops.roi_align on NHWC features and (B, R, 4) boxes -> (B, R, P, Q, C)."""
    b, r = boxes.shape[:2]
    rois = np.concatenate([np.repeat(np.arange(b), r)[:, None], boxes.reshape(-1, 4)], axis=1)
    out = torchvision.ops.roi_align(
        torch.from_numpy(features).permute(0, 3, 1, 2), torch.from_numpy(rois.astype(np.float32)),
        output_size, scale, sampling, aligned)  # (B * R, C, P, Q)
    out = out.permute(0, 2, 3, 1).numpy()  # (B * R, P, Q, C)
    return out.reshape((b, r) + out.shape[1:])


def oracle_roi_align(features, boxes, out_hw, scale, grid, aligned):
    """Slow loop transcription of torchvision's C++ CPU kernel, float64. -> (B, R, P, Q, C)."""
    bsz, height, width, channels = features.shape
    out = np.zeros(boxes.shape[:2] + tuple(out_hw) + (channels,))

    def sample(img, y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= height - 1:
            y0 = y1 = height - 1
            y = float(y0)
        else:
            y1 = y0 + 1
        if x0 >= width - 1:
            x0 = x1 = width - 1
            x = float(x0)
        else:
            x1 = x0 + 1
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * img[y0, x0] + (1 - ly) * lx * img[y0, x1]
                + ly * (1 - lx) * img[y1, x0] + ly * lx * img[y1, x1])

    off = 0.5 if aligned else 0.0
    for b in range(bsz):
        for r, (x1, y1, x2, y2) in enumerate(boxes[b].astype(np.float64)):
            sx, sy = x1 * scale - off, y1 * scale - off
            rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
            if not aligned:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            bh, bw = rh / out_hw[0], rw / out_hw[1]
            for p in range(out_hw[0]):
                for q in range(out_hw[1]):
                    acc = 0.0
                    for i in range(grid):
                        for j in range(grid):
                            y = sy + p * bh + (i + 0.5) * bh / grid
                            x = sx + q * bw + (j + 0.5) * bw / grid
                            acc = acc + sample(features[b], y, x)
                    out[b, r, p, q] = acc / grid**2
    return out


# ---------------------------------------------------------------- hand-computed


def test_hand_computed_5x5():
    # f[y, x] = 10 y + x + 1 is linear, so interior bilinear samples are exact.
    grid = np.arange(5, dtype=np.float32)
    fmap = (10 * grid[:, None] + grid[None, :] + 1)[None, :, :, None]  # (1, 5, 5, 1)
    boxes = np.array([[
        [1, 1, 3, 3],  # samples at 1.5, 2.5 (legacy) -> mean = f(2, 2) = 23
        [-2, -2, 0, 0],  # samples -1.5 (< -1 -> 0) and -0.5 (clamped to 0): f(0,0) / 4
        [4, 4, 6, 6],  # samples 4.5 (clamped to row 4) and 5.5 (> H -> 0): f(4,4) / 4
        [2, 2, 2, 2],  # zero-size -> legacy side 1: samples 2.25, 2.75 -> f(2.5, 2.5)
    ]], np.float32)
    got = RA.roi_align(fmap, boxes, 1, sampling_ratio=2, aligned=False).numpy()[0, :, 0, 0, 0]
    np.testing.assert_allclose(got, [23.0, 0.25, 45.0 / 4, 28.5], rtol=1e-6)
    # aligned, 2x2 bins, one sample each: box [1, 3] -> start 0.5, bins of 1, samples 1.0, 2.0
    got = RA.roi_align(fmap, boxes[:, :1], 2, sampling_ratio=1, aligned=True).numpy()
    np.testing.assert_allclose(got[0, 0, :, :, 0], [[12, 13], [22, 23]], rtol=1e-6)
    # aligned zero-size box: every sample at 2 - 0.5 = 1.5
    got = RA.roi_align(fmap, boxes[:, 3:], 3, sampling_ratio=2, aligned=True).numpy()
    np.testing.assert_allclose(got[0, 0, :, :, 0], np.full((3, 3), 17.5), rtol=1e-6)


def test_oracle_agrees_with_torchvision_on_exact_edges(torch, torchvision):
    # samples exactly at -1 and at H (kept by torchvision) and just beyond (dropped)
    rng = np.random.default_rng(1)
    fmap = rng.uniform(size=(1, 5, 6, 2)).astype(np.float32)
    boxes = np.array([[[-2, -2, 0, 0], [5, 4, 7, 6], [-2.01, -2.01, -0.01, -0.01],
                       [5.01, 4.01, 7.01, 6.01], [0, 0, 6, 5]]], np.float32)
    ref = tv_roi_align(torch, torchvision, fmap, boxes, 1, 1.0, 1, False)
    np.testing.assert_allclose(ref, oracle_roi_align(fmap, boxes, (1, 1), 1.0, 1, False),
                               atol=1e-6)
    got = RA.roi_align(fmap, boxes, 1, sampling_ratio=1, aligned=False).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.all(got[0, :2] != 0) and np.all(got[0, 2:4] == 0)


# ---------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling", [1, 2, 4])
@pytest.mark.parametrize("scale", [1.0, 0.25, 1 / 32])
def test_matches_torchvision(torch, torchvision, aligned, sampling, scale):
    rng = np.random.default_rng(sampling + 10 * int(aligned))
    height, width = 11, 14
    fmap = rng.standard_normal((2, height, width, 3)).astype(np.float32)
    extent = max(height, width) / scale
    boxes = make_boxes(rng, (2, 24), -0.3 * extent, 1.1 * extent, 0.7 * extent)
    boxes[:, :12] = special_boxes(height, width, scale)
    got = RA.roi_align(fmap, boxes, (7, 5), scale, sampling, aligned)
    assert got.shape == (2, 24, 7, 5, 3) and got.dtype == tf.float32
    ref = tv_roi_align(torch, torchvision, fmap, boxes, (7, 5), scale, sampling, aligned)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)
    if sampling == 2:  # the loop oracle (float64) agrees as well
        oracle = oracle_roi_align(fmap, boxes[:, :14], (7, 5), scale, sampling, aligned)
        np.testing.assert_allclose(got.numpy()[:, :14], oracle, atol=1e-4)


def test_output_size_one_and_single_pixel_map(torch, torchvision, rng):
    # crop_and_resize samples the box centre when the crop size is 1; a 1x1 map is all edge
    for shape in [(1, 1, 1, 2), (2, 1, 7, 2), (1, 9, 8, 2)]:
        fmap = rng.standard_normal(shape).astype(np.float32)
        boxes = make_boxes(rng, (shape[0], 9), -3.0, 10.0, 6.0)
        for aligned in [True, False]:
            got = RA.roi_align(fmap, boxes, (1, 3), 1.0, 1, aligned).numpy()
            ref = tv_roi_align(torch, torchvision, fmap, boxes, (1, 3), 1.0, 1, aligned)
            np.testing.assert_allclose(got, ref, atol=1e-5)


def test_empty_rois_and_errors():
    fmap = tf.zeros((2, 6, 7, 4))
    out = RA.roi_align(fmap, tf.zeros((2, 0, 4)), (3, 2))
    assert out.shape == (2, 0, 3, 2, 4)
    with pytest.raises(ValueError, match="adaptive"):
        RA.roi_align(fmap, tf.zeros((2, 1, 4)), 7, sampling_ratio=0)
    with pytest.raises(ValueError, match="adaptive"):
        RA.roi_align(fmap, tf.zeros((2, 1, 4)), 7, sampling_ratio=-1)
    with pytest.raises(ValueError, match="output_size"):
        RA.roi_align(fmap, tf.zeros((2, 1, 4)), (0, 7))


def test_dtype_roundtrip(rng):
    fmap = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
    boxes = make_boxes(rng, (1, 5), 0.0, 6.0, 4.0)
    ref = RA.roi_align(fmap, boxes, 2).numpy()
    for dtype in [tf.bfloat16, tf.float16]:
        got = RA.roi_align(tf.cast(fmap, dtype), boxes, 2)
        assert got.dtype == dtype
        np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), ref, atol=0.05)


def test_tf_function_unknown_shapes(torch, torchvision, rng):
    spec_f = tf.TensorSpec([None, None, None, 3], tf.float32)
    spec_b = tf.TensorSpec([None, None, 4], tf.float32)
    fn = tf.function(lambda f, b: RA.roi_align(f, b, 4, 0.5, 2, False),
                     input_signature=[spec_f, spec_b])
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 4, 4, 3]
    for r in [0, 1, 6]:
        fmap = rng.standard_normal((2, 9, 10, 3)).astype(np.float32)
        boxes = make_boxes(rng, (2, r), -2.0, 20.0, 12.0)
        got = fn(fmap, boxes).numpy()
        assert got.shape == (2, r, 4, 4, 3)
        if r:
            ref = tv_roi_align(torch, torchvision, fmap, boxes, 4, 0.5, 2, False)
            np.testing.assert_allclose(got, ref, atol=1e-4)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("aligned", [True, False])
def test_gradient_matches_torch_autograd(torch, torchvision, rng, aligned):
    height, width, scale = 10, 12, 0.5
    fmap = rng.standard_normal((2, height, width, 3)).astype(np.float32)
    boxes = make_boxes(rng, (2, 16), -6.0, 26.0, 14.0)
    boxes[:, :12] = special_boxes(height, width, scale)
    upstream = rng.standard_normal((2, 16, 3, 4, 3)).astype(np.float32)

    ft = tf.constant(fmap)
    with tf.GradientTape() as tape:
        tape.watch(ft)
        loss = tf.reduce_sum(RA.roi_align(ft, boxes, (3, 4), scale, 2, aligned) * upstream)
    got = tape.gradient(loss, ft).numpy()

    fmap_t = torch.from_numpy(fmap).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    rois = np.concatenate([np.repeat(np.arange(2), 16)[:, None], boxes.reshape(-1, 4)], axis=1)
    out = torchvision.ops.roi_align(fmap_t, torch.from_numpy(rois.astype(np.float32)), (3, 4),
                                    scale, 2, aligned)  # (32, 3, 3, 4)
    up_t = torch.from_numpy(upstream.reshape(32, 3, 4, 3)).permute(0, 3, 1, 2)  # to NCHW
    (out * up_t).sum().backward()
    ref = fmap_t.grad.permute(0, 2, 3, 1).numpy()  # back to NHWC
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.abs(ref).sum() > 1.0  # non-trivial gradient


@pytest.mark.parametrize("hw", [(5, 7), (1, 4), (3, 1), (1, 1)])
def test_edge_pad_gradient_folds_the_border(rng, hw):
    # _pad_map's own gradient against TensorFlow's autodiff of the same two concats,
    # including maps one pixel high or wide (both borders fold onto the same row/column)
    images = tf.constant(rng.standard_normal((2, *hw, 3)).astype(np.float32))
    upstream = tf.constant(rng.standard_normal((2, hw[0] + 2, hw[1] + 2, 3)).astype(np.float32))
    grads = []
    for pad in (RA._pad_map, RA._edge_pad):
        with tf.GradientTape() as tape:
            tape.watch(images)
            padded = pad(images)
            loss = tf.reduce_sum(padded * upstream)
        grads.append(tape.gradient(loss, images).numpy())
    np.testing.assert_array_equal(RA._pad_map(images).numpy(), RA._edge_pad(images).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)
    # every padded pixel's gradient lands somewhere: the totals agree
    np.testing.assert_allclose(grads[0].sum((1, 2)), upstream.numpy().sum((1, 2)), rtol=1e-5)


def test_mutation_border_fold_without_corners_fails(rng, monkeypatch):
    images = tf.constant(rng.standard_normal((1, 4, 5, 2)).astype(np.float32))
    upstream = tf.constant(rng.standard_normal((1, 6, 7, 2)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(images)
        loss = tf.reduce_sum(RA._edge_pad(images) * upstream)
    ref = tape.gradient(loss, images).numpy()
    fold = RA._fold_border

    def without_corners(g):  # drops the four corner pixels' contribution
        g = g.numpy().copy()
        g[:, [0, 0, -1, -1], [0, -1, 0, -1]] = 0.0
        return fold(tf.constant(g))

    monkeypatch.setattr(RA, "_fold_border", without_corners)
    with tf.GradientTape() as tape:
        tape.watch(images)
        loss = tf.reduce_sum(RA._pad_map(images) * upstream)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(tape.gradient(loss, images).numpy(), ref, atol=1e-6)


def test_finite_difference_gradient(rng):
    fmap = rng.standard_normal((1, 4, 5, 2)).astype(np.float64)
    boxes = np.array([[[0.3, -0.7, 3.2, 2.9], [-1.6, 1.1, 1.3, 4.6], [2.2, 2.4, 5.9, 4.4]]],
                     np.float32)

    def fn(f):
        return RA.roi_align(tf.cast(f, tf.float32), boxes, 2, 1.0, 2, True)

    theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(fmap, tf.float32)],
                                                      delta=1e-2)
    # roi_align is linear in the features, so finite differences are exact up to rounding
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)
    assert np.abs(theoretical[0]).sum() > 1.0


def test_no_gradient_into_boxes(rng):
    fmap = tf.constant(rng.standard_normal((1, 6, 6, 2)).astype(np.float32))
    boxes = tf.constant(make_boxes(rng, (1, 3), 0.0, 3.0, 3.0))
    with tf.GradientTape() as tape:
        tape.watch(boxes)
        loss = tf.reduce_sum(RA.roi_align(fmap, boxes, 2))
    assert tape.gradient(loss, boxes) is None


# ---------------------------------------------------------------- mutations


def test_mutation_flipped_aligned_fails_comparison(torch, torchvision, rng):
    fmap = rng.standard_normal((1, 12, 12, 2)).astype(np.float32)
    boxes = make_boxes(rng, (1, 10), 0.0, 30.0, 20.0)
    for aligned in [True, False]:
        ref = tv_roi_align(torch, torchvision, fmap, boxes, 7, 0.25, 2, aligned)
        got = RA.roi_align(fmap, boxes, 7, 0.25, 2, aligned).numpy()
        flipped = RA.roi_align(fmap, boxes, 7, 0.25, 2, not aligned).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(flipped, ref, atol=1e-4)


def test_mutation_zero_padding_fails_on_borders(torch, torchvision, rng, monkeypatch):
    # without the edge-replicated pad, samples in [-1, 0) and (H - 1, H] read 0: border boxes
    # must then disagree with torchvision (proves the special boxes exercise the clamp)
    fmap = rng.uniform(1.0, 2.0, size=(1, 8, 9, 2)).astype(np.float32)
    boxes = special_boxes(8, 9, 1.0)[None]
    ref = tv_roi_align(torch, torchvision, fmap, boxes, 3, 1.0, 2, True)
    np.testing.assert_allclose(RA.roi_align(fmap, boxes, 3).numpy(), ref, atol=1e-4)

    def zero_pad(features):
        features = tf.cast(features, tf.float32)
        return tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]])

    monkeypatch.setattr(RA, "_pad_map", zero_pad)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(RA.roi_align(fmap, boxes, 3).numpy(), ref, atol=1e-4)


# ---------------------------------------------------------------- level assignment


def test_assign_fpn_levels_matches_level_mapper(torch, torchvision, rng):
    sides = 224.0 * 2.0 ** np.arange(-5, 4)  # exact level boundaries (ties)
    exact = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    rect = np.array([[10, 10, 10 + 56, 10 + 224], [5, 5, 5, 50], [0, 0, 0, 0],
                     [3, 3, 3 + 111.9999, 3 + 112.0001], [0, 0, 1e4, 1e4]])
    boxes = np.concatenate([exact, rect, make_boxes(rng, (300,), 0.0, 800.0, 700.0)])
    boxes = boxes.astype(np.float32)
    mapper = torchvision.ops.poolers.initLevelMapper(2, 5, canonical_scale=224, canonical_level=4)
    ref = mapper([torch.from_numpy(boxes)]).numpy() + 2  # LevelMapper is 0-based
    got = RA.assign_fpn_levels(boxes.reshape(2, -1, 4)).numpy()
    assert got.dtype == np.int32 and got.shape == (2, len(boxes) // 2)
    np.testing.assert_array_equal(got.reshape(-1), ref)
    np.testing.assert_array_equal(got.reshape(-1)[:9], [2, 2, 2, 2, 3, 4, 5, 5, 5])
    assert set(got.reshape(-1)) == {2, 3, 4, 5}
    # other canonical settings and level ranges
    mapper = torchvision.ops.poolers.initLevelMapper(3, 6, canonical_scale=100, canonical_level=5)
    got = RA.assign_fpn_levels(boxes, 3, 6, canonical_size=100, canonical_level=5).numpy()
    np.testing.assert_array_equal(got, mapper([torch.from_numpy(boxes)]).numpy() + 3)
    # one-side-inverted box (torchvision: NaN cast to int) goes to the lowest level
    assert RA.assign_fpn_levels(np.array([[10, 0, 0, 500]], np.float32)).numpy()[0] == 2


# ---------------------------------------------------------------- multi-level


def pyramid(rng, batch, height, width, channels, levels=(2, 3, 4, 5)):
    return {f"P{l}": rng.standard_normal(
        (batch, height // 2**l, width // 2**l, channels)).astype(np.float32) for l in levels}


def tv_multiscale(torch, torchvision, feats, boxes, output_size, image_size):
    """torchvision MultiScaleRoIAlign on our NHWC pyramid -> (B, R, P, Q, C)."""
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, 2)
    x = {str(i): torch.from_numpy(feats[f"P{i + 2}"]).permute(0, 3, 1, 2) for i in range(4)}
    out = pooler(x, [torch.from_numpy(b) for b in boxes], [image_size] * len(boxes))
    out = out.permute(0, 2, 3, 1).numpy()  # (B * R, P, Q, C)
    return out.reshape(boxes.shape[:2] + out.shape[1:])


def multiscale_boxes(rng, batch, num, height, width):
    """Boxes of sides 4..700 (all four levels used) centred anywhere incl. partly outside."""
    sides = np.exp(rng.uniform(np.log(4.0), np.log(700.0), size=(batch, num, 2)))
    centres = rng.uniform(-20.0, [width + 20.0, height + 20.0], size=(batch, num, 2))
    return np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype(np.float32)


def test_multilevel_matches_torchvision(torch, torchvision, rng):
    height, width = 256, 320
    feats = pyramid(rng, 2, height, width, 4)
    feats["P6"] = np.zeros((2, 4, 5, 4), np.float32)  # ignored
    boxes = multiscale_boxes(rng, 2, 40, height, width)
    levels = RA.assign_fpn_levels(boxes).numpy()
    assert set(levels.reshape(-1)) == {2, 3, 4, 5}
    got = RA.multilevel_roi_align(feats, boxes, (7, 6), sampling_ratio=2, aligned=False)
    assert got.shape == (2, 40, 7, 6, 4)
    ref = tv_multiscale(torch, torchvision, feats, boxes, (7, 6), (height, width))
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)
    # aligned=True: same as single-level roi_align on each RoI's assigned level
    got = RA.multilevel_roi_align(feats, boxes, 7, aligned=True).numpy()
    for level in range(2, 6):
        single = RA.roi_align(feats[f"P{level}"], boxes, 7, 1 / 2**level, 2, True).numpy()
        mask = levels == level
        np.testing.assert_allclose(got[mask], single[mask], atol=1e-5)


def test_multilevel_gradient_and_tf_function(torch, torchvision, rng):
    height, width = 128, 160
    feats = pyramid(rng, 2, height, width, 3)
    boxes = multiscale_boxes(rng, 2, 12, height, width)
    upstream = rng.standard_normal((2, 12, 5, 5, 3)).astype(np.float32)
    spec = {k: tf.TensorSpec([None, None, None, 3], tf.float32) for k in feats}

    @tf.function(input_signature=[spec, tf.TensorSpec([None, None, 4], tf.float32)])
    def grads(f, b):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = RA.multilevel_roi_align(f, b, 5, aligned=False)
            loss = tf.reduce_sum(out * tf.constant(upstream)[:, : tf.shape(b)[1]])
        return out, tape.gradient(loss, f)

    out, got = grads(feats, boxes)
    x = {str(i): torch.from_numpy(feats[f"P{i + 2}"]).permute(0, 3, 1, 2).contiguous()
         .requires_grad_(True) for i in range(4)}
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 5, 2)
    ref = pooler(x, [torch.from_numpy(b) for b in boxes], [(height, width)] * 2)  # (24, 3, 5, 5)
    np.testing.assert_allclose(out.numpy().reshape(24, 5, 5, 3),
                               ref.permute(0, 2, 3, 1).detach().numpy(), atol=1e-4)
    up_t = torch.from_numpy(upstream.reshape(24, 5, 5, 3)).permute(0, 3, 1, 2)  # to NCHW
    (ref * up_t).sum().backward()
    for i in range(4):
        np.testing.assert_allclose(got[f"P{i + 2}"].numpy(),
                                   x[str(i)].grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    empty, _ = grads(feats, np.zeros((2, 0, 4), np.float32))  # R = 0, same concrete function
    assert empty.shape == (2, 0, 5, 5, 3)


def test_multilevel_errors(rng):
    feats = pyramid(rng, 1, 64, 64, 2, levels=(2, 3, 4))
    with pytest.raises(ValueError, match="P5"):
        RA.multilevel_roi_align(feats, np.zeros((1, 1, 4), np.float32), 7)
    with pytest.raises(ValueError, match="adaptive"):
        RA.multilevel_roi_align(feats, np.zeros((1, 1, 4), np.float32), 7, sampling_ratio=-1,
                                max_level=4)
    out = RA.multilevel_roi_align(feats, np.array([[[0, 0, 64, 64]]], np.float32), 2,
                                  max_level=4)
    assert out.shape == (1, 1, 2, 2, 2) and math.isfinite(float(tf.reduce_sum(out)))
