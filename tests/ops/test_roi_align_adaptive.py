"""keras_maskrcnn.ops.roi_align_adaptive against torchvision.ops.roi_align(sampling_ratio=0)
(values and autograd gradients) and, for the FPN version, detectron2's level rule restated in
torch."""

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import roi_align as RAF
from keras_maskrcnn.ops import roi_align_adaptive as RA

SCALES = (1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32)


def make_boxes(rng, shape, lo, hi, max_side):
    """Random xyxy float32 boxes (*shape, 4): corners in [lo, hi), sides in [0, max_side)."""
    xy = rng.uniform(lo, hi, size=shape + (2,))
    wh = rng.uniform(0.0, max_side, size=shape + (2,))
    return np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)


def special_boxes(height, width, scale):
    """(14, 4) input-pixel boxes: borders, zero-size, inverted, tiny, huge, outside."""
    h, w = height / scale, width / scale  # the map's extent in input pixels
    return np.array([
        [0, 0, w, h],  # exactly the whole map
        [0, 0, 1 / scale, 1 / scale],  # one feature pixel at the top-left corner
        [w - 1 / scale, h - 1 / scale, w, h],  # one feature pixel at the bottom-right corner
        [w / 3, h / 3, w / 3, h / 3],  # zero-size box
        [w / 2, h / 4, w / 2, h / 2],  # zero width
        [w / 2, h / 2, w / 3, h / 3],  # inverted
        [w / 2, h / 2, w / 2 + 0.01, h / 2 + 0.02],  # tiny
        [-10 * w, -10 * h, 10 * w, 10 * h],  # huge, covers everything (many samples per bin)
        [2 * w, 2 * h, 3 * w, 3 * h],  # fully outside (bottom-right)
        [-3 * w, -3 * h, -2 * w, -2 * h],  # fully outside (top-left)
        [-w / 2, -h / 2, w / 2, h / 2],  # partly outside, top-left
        [w / 2, h / 2, 1.5 * w, 1.5 * h],  # partly outside, bottom-right
        [-1.5 / scale, h / 3, 0.5 / scale, h / 2],  # straddles the left border by ~1 pixel
        [0, -0.5 / scale, w, h + 0.5 / scale],  # half a pixel beyond top and bottom
    ], np.float32)


def tv_roi_align(torch, torchvision, features, boxes, output_size, scale, aligned):
    """torchvision.ops.roi_align(sampling_ratio=0) on NHWC features and (B, R, 4) boxes."""
    b, r = boxes.shape[:2]
    rois = np.concatenate([np.repeat(np.arange(b), r)[:, None], boxes.reshape(-1, 4)], axis=1)
    out = torchvision.ops.roi_align(
        torch.from_numpy(features).permute(0, 3, 1, 2), torch.from_numpy(rois.astype(np.float32)),
        output_size, scale, 0, aligned)  # (B * R, C, P, Q)
    out = out.permute(0, 2, 3, 1).numpy()  # (B * R, P, Q, C)
    return out.reshape((b, r) + out.shape[1:])


def random_case(rng, scale, height=13, width=17, rois=24):
    """Features (2, H, W, 3) and boxes (2, R, 4) of every size, many crossing the border."""
    features = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    extent = max(height, width) / scale
    boxes = make_boxes(rng, (2, rois), -0.3 * extent, 1.1 * extent, 1.4 * extent)
    small = make_boxes(rng, (2, rois // 2), 0.0, extent, 3.0 / scale)  # a few pixels at most
    return features, np.concatenate([boxes, small], axis=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", SCALES)
def test_matches_torchvision_random_boxes(torch, torchvision, rng, scale, aligned):
    features, boxes = random_case(rng, scale)
    for output_size in [(7, 7), (5, 3), (1, 1)]:
        got = RA.roi_align_adaptive(features, boxes, output_size, scale, aligned).numpy()
        want = tv_roi_align(torch, torchvision, features, boxes, output_size, scale, aligned)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", SCALES)
def test_matches_torchvision_special_boxes(torch, torchvision, rng, scale, aligned):
    features = rng.normal(size=(1, 11, 20, 4)).astype(np.float32)
    boxes = special_boxes(11, 20, scale)[None]  # (1, 14, 4)
    got = RA.roi_align_adaptive(features, boxes, 7, scale, aligned).numpy()
    want = tv_roi_align(torch, torchvision, features, boxes, (7, 7), scale, aligned)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_matches_torchvision_every_window_bucket(torch, torchvision, rng):
    """A 70x90 map: RoIs from sub-pixel to larger than the map, one per ladder step and more."""
    features = rng.normal(size=(2, 70, 90, 5)).astype(np.float32)
    sides = np.geomspace(0.3, 200.0, 40)  # feature pixels
    corners = rng.uniform(-20.0, 80.0, size=(2, 40, 2))
    aspect = rng.uniform(0.3, 3.0, size=(2, 40, 1))
    wh = np.stack([sides * aspect[..., 0], sides / aspect[..., 0]], -1)
    boxes = (np.concatenate([corners, corners + wh], -1) * 8.0).astype(np.float32)
    got = RA.roi_align_adaptive(features, boxes, (14, 14), 1 / 8, True).numpy()
    want = tv_roi_align(torch, torchvision, features, boxes, (14, 14), 1 / 8, True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_hand_case_whole_map_is_the_mean():
    """aligned, 4x4 map, box (0, 0, 4, 4), 1x1 output: 4x4 samples at the pixel centres."""
    features = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = RA.roi_align_adaptive(features, np.array([[[0, 0, 4, 4]]], np.float32), 1)
    np.testing.assert_allclose(out.numpy().ravel(), [7.5], rtol=0, atol=1e-6)
    out = RA.roi_align_adaptive(features, np.array([[[0, 0, 4, 4]]], np.float32), 2)
    np.testing.assert_allclose(out.numpy().reshape(2, 2), [[2.5, 4.5], [10.5, 12.5]], atol=1e-6)


@pytest.mark.parametrize("aligned", [True, False])
def test_samples_exactly_on_the_validity_border(torch, torchvision, rng, aligned):
    """1x1 bins whose single sample sits exactly at y (x) = -1 or H (W): still read (the
    rule drops only y < -1 and y > H), and just beyond: dropped."""
    features = rng.normal(size=(1, 6, 9, 2)).astype(np.float32)
    shift = 0.5 if aligned else 0.0  # the sample of a 1-pixel box: x1 + 0.5 - offset
    edges = [-1.0, 6.0, -1.0 - 2**-10, 6.0 + 2**-10]
    boxes = [[2, c - 0.5 + shift, 5, c + 0.5 + shift] for c in edges]
    boxes += [[c - 0.5 + shift, 1, c + 0.5 + shift, 4] for c in (-1.0, 9.0, 9.0 + 2**-10)]
    boxes = np.array(boxes, np.float32)[None]
    got = RA.roi_align_adaptive(features, boxes, 1, 1.0, aligned).numpy()
    want = tv_roi_align(torch, torchvision, features, boxes, (1, 1), 1.0, aligned)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.all(got[0, [0, 1, 4, 5]] != 0) and np.all(got[0, [2, 3, 6]] == 0)


@pytest.mark.parametrize("aligned", [True, False])
def test_gradient_matches_torch_autograd(torch, torchvision, rng, aligned):
    scale = 1 / 4
    features, boxes = random_case(rng, scale, height=9, width=12, rois=16)
    boxes = np.concatenate([boxes, special_boxes(9, 12, scale)[None].repeat(2, 0)], axis=1)
    upstream = rng.normal(size=boxes.shape[:2] + (7, 7, 3)).astype(np.float32)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = RA.roi_align_adaptive(x, boxes, 7, scale, aligned)
        loss = tf.reduce_sum(out * upstream)
    got = tape.gradient(loss, x).numpy()

    t = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    rois = np.concatenate([np.repeat(np.arange(2), boxes.shape[1])[:, None],
                           boxes.reshape(-1, 4)], axis=1).astype(np.float32)
    ref = torchvision.ops.roi_align(t, torch.from_numpy(rois), (7, 7), scale, 0, aligned)
    up = torch.from_numpy(upstream.reshape((-1,) + upstream.shape[2:])).permute(0, 3, 1, 2)
    (ref * up).sum().backward()
    want = t.grad.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_chunks_and_buckets_agree_with_one_chunk(rng, monkeypatch):
    """Tiny chunks (one RoI per gather) give the same values and gradients."""
    features, boxes = random_case(rng, 1 / 4, height=20, width=30, rois=20)

    def run():
        x = tf.constant(features)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = RA.roi_align_adaptive(x, boxes, (7, 5), 1 / 4, True)
            loss = tf.reduce_sum(out * out)
        return out.numpy(), tape.gradient(loss, x).numpy()

    out, grad = run()
    monkeypatch.setattr(RA, "_CHUNK_FLOATS", 1)
    out_small, grad_small = run()
    np.testing.assert_allclose(out_small, out, rtol=0, atol=1e-6)
    np.testing.assert_allclose(grad_small, grad, rtol=0, atol=1e-5)


def test_tf_function_unknown_shapes_and_no_rois(torch, torchvision, rng):
    fn = tf.function(lambda f, b: RA.roi_align_adaptive(f, b, (7, 7), 1 / 8, True),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                      tf.TensorSpec([None, None, 4], tf.float32)])
    for height, width, rois in [(13, 17, 9), (30, 8, 5), (6, 6, 0)]:
        features, boxes = random_case(rng, 1 / 8, height, width, rois)
        boxes = boxes[:, :rois]
        got = fn(features, boxes).numpy()
        assert got.shape == (2, rois, 7, 7, 3)
        if rois:
            want = tv_roi_align(torch, torchvision, features, boxes, (7, 7), 1 / 8, True)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert len(fn._list_all_concrete_functions()) == 1

    x = tf.constant(rng.normal(size=(1, 10, 12, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x, tf.zeros([1, 0, 4]))
        loss = tf.reduce_sum(out)
    assert out.shape == (1, 0, 7, 7, 3)
    assert np.all(tape.gradient(loss, x).numpy() == 0)


def test_gradient_in_tf_function_with_unknown_shapes(torch, torchvision, rng):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                  tf.TensorSpec([None, None, 4], tf.float64)])
    def grad(features, boxes):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(tf.square(RA.roi_align_adaptive(features, boxes, 5, 1 / 4)))
        return tape.gradient(loss, features)

    features, boxes = random_case(rng, 1 / 4, height=11, width=14, rois=10)
    got = grad(features, boxes.astype(np.float64)).numpy()
    t = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    rois = np.concatenate([np.repeat(np.arange(2), boxes.shape[1])[:, None],
                           boxes.reshape(-1, 4)], axis=1).astype(np.float32)
    torchvision.ops.roi_align(t, torch.from_numpy(rois), 5, 1 / 4, 0, True).square().sum(
        ).backward()
    np.testing.assert_allclose(got, t.grad.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-4)


def test_static_shapes_and_dtype():
    features = tf.random.normal([2, 10, 12, 6], dtype=tf.float32)
    out = RA.roi_align_adaptive(tf.cast(features, tf.bfloat16), tf.zeros([2, 5, 4]), (3, 4))
    assert out.shape == (2, 5, 3, 4, 6) and out.dtype == tf.bfloat16
    with pytest.raises(ValueError):
        RA.roi_align_adaptive(features, tf.zeros([2, 5, 4]), 0)


def d2_levels(torch, boxes, min_level=2, max_level=5):
    """detectron2's assign_boxes_to_levels restated in torch (absolute levels)."""
    b = torch.from_numpy(boxes.reshape(-1, 4))
    sizes = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    levels = torch.floor(4 + torch.log2(sizes / 224 + 1e-8))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64).numpy()


def test_detectron2_levels(torch):
    sides = np.array([1e-3, 10, 55.9, 56, 56.1, 111.9, 112, 112.1, 223.9, 224, 224.1, 447.9,
                      448, 448.1, 895, 896, 897, 5000], np.float32)
    boxes = np.stack([np.full_like(sides, 3.0), np.full_like(sides, 7.0), 3.0 + sides,
                      7.0 + sides], -1)
    boxes = np.concatenate([boxes, [[5, 5, 5, 9], [0, 0, 0, 0], [10, 10, 20, 30]]]).astype(
        np.float32)
    got = RAF.assign_fpn_levels_detectron2(boxes).numpy()
    want = d2_levels(torch, boxes)
    np.testing.assert_array_equal(got, want)
    inverted = RAF.assign_fpn_levels_detectron2(np.array([[10, 10, 5, 30]], np.float32))
    assert inverted.numpy().tolist() == [2]
    assert RAF.assign_fpn_levels_detectron2(boxes[:3], 3, 4).numpy().tolist() == [3, 3, 3]


def fpn_case(rng, batch=2, rois=40, height=128, width=160, channels=4):
    features = {f"P{l}": rng.normal(size=(batch, height >> l, width >> l, channels)
                                    ).astype(np.float32) for l in range(2, 7)}
    boxes = make_boxes(rng, (batch, rois), -30.0, 150.0, 700.0)
    return features, boxes


def fpn_oracle(torch, torchvision, features, boxes, output_size, upstream=None):
    """Each RoI through torchvision.ops.roi_align(sampling_ratio=0, aligned=True) on its
    detectron2 level; returns the pooled (B, R, P, Q, C) and, given upstream, the gradients."""
    b, r = boxes.shape[:2]
    levels = d2_levels(torch, boxes)
    maps = {l: torch.from_numpy(features[f"P{l}"]).permute(0, 3, 1, 2).contiguous()
            .requires_grad_(True) for l in range(2, 6)}
    rois = torch.from_numpy(np.concatenate([np.repeat(np.arange(b), r)[:, None],
                                            boxes.reshape(-1, 4)], 1).astype(np.float32))
    out = torch.zeros((b * r, features["P2"].shape[-1]) + output_size)
    for l, t in maps.items():
        ids = torch.from_numpy(np.nonzero(levels == l)[0])
        out[ids] = torchvision.ops.roi_align(t, rois[ids], output_size, 1 / 2**l, 0, True)
    pooled = out.permute(0, 2, 3, 1).detach().numpy().reshape((b, r) + output_size + (-1,))
    if upstream is None:
        return pooled, None
    up = torch.from_numpy(upstream.reshape((b * r,) + upstream.shape[2:])).permute(0, 3, 1, 2)
    (out * up).sum().backward()
    return pooled, {f"P{l}": t.grad.permute(0, 2, 3, 1).numpy() for l, t in maps.items()}


def test_multilevel_matches_detectron2_rule_with_torchvision(torch, torchvision, rng):
    features, boxes = fpn_case(rng)
    upstream = rng.normal(size=boxes.shape[:2] + (7, 7, 4)).astype(np.float32)
    want, want_grads = fpn_oracle(torch, torchvision, features, boxes, (7, 7), upstream)
    maps = {name: tf.constant(value) for name, value in features.items()}
    with tf.GradientTape() as tape:
        tape.watch(maps)
        got = RAF.multilevel_roi_align(maps, boxes, 7, sampling_ratio=0,
                                        level_mapping="detectron2")
        loss = tf.reduce_sum(got * upstream)
    grads = tape.gradient(loss, maps)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-4)
    for name, grad in want_grads.items():
        np.testing.assert_allclose(grads[name].numpy(), grad, rtol=0, atol=1e-4)
    assert grads["P6"] is None


def test_multilevel_tf_function_unknown_shapes(torch, torchvision, rng):
    spec = {f"P{l}": tf.TensorSpec([None, None, None, 4], tf.float32) for l in range(2, 6)}
    fn = tf.function(lambda f, b: RAF.multilevel_roi_align(f, b, (14, 14), 0,
                                                       level_mapping="detectron2"),
                     input_signature=[spec, tf.TensorSpec([None, None, 4], tf.float32)])
    for rois in (7, 0):
        features, boxes = fpn_case(rng, batch=1, rois=rois, height=96, width=64)
        features = {name: value for name, value in features.items() if name != "P6"}
        got = fn(features, boxes).numpy()
        assert got.shape == (1, rois, 14, 14, 4)
        if rois:
            want, _ = fpn_oracle(torch, torchvision, features, boxes, (14, 14))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="P5"):
        RAF.multilevel_roi_align({"P2": tf.zeros([1, 4, 4, 1])}, tf.zeros([1, 1, 4]), 7, 0)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 7), (5, 1), (2, 2)])
def test_matches_torchvision_on_tiny_maps(torch, torchvision, rng, height, width):
    features = rng.normal(size=(1, height, width, 2)).astype(np.float32)
    boxes = np.concatenate([special_boxes(height, width, 1.0),
                            make_boxes(rng, (14,), -3.0, 8.0, 9.0)])[None]
    for aligned in (True, False):
        got = RA.roi_align_adaptive(features, boxes, (3, 2), 1.0, aligned).numpy()
        want = tv_roi_align(torch, torchvision, features, boxes, (3, 2), 1.0, aligned)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_level_mappings_at_power_of_two_boundaries(torch, torchvision):
    """fpn_levels: "torchvision" = LevelMapper, "detectron2" = assign_boxes_to_levels, on
    squares exactly at, one float32 step around, 4e-7 below and 1e-5 around each boundary side
    224 * 2**k; the two rules disagree just below a boundary (eps 1e-6 outside the log vs 1e-8
    inside it)."""
    exact = (224.0 * 2.0 ** np.arange(-4, 4)).astype(np.float32)
    sides = np.concatenate([exact, np.nextafter(exact, np.float32(0)),
                            np.nextafter(exact, np.float32(np.inf)), exact * np.float32(1 - 4e-7),
                            exact * np.float32(1 - 1e-5), exact * np.float32(1 + 1e-5)])
    zeros = np.zeros_like(sides)
    boxes = np.stack([zeros, zeros, sides, sides], -1).astype(np.float32)
    mapper = torchvision.ops.poolers.initLevelMapper(2, 5, canonical_scale=224,
                                                     canonical_level=4)
    want_tv = mapper([torch.from_numpy(boxes)]).numpy() + 2
    got_tv = RAF.fpn_levels(boxes, "torchvision", min_level=2, max_level=5).numpy()
    np.testing.assert_array_equal(got_tv, want_tv)
    got_d2 = RAF.fpn_levels(boxes, "detectron2", min_level=2, max_level=5).numpy()
    np.testing.assert_array_equal(got_d2, d2_levels(torch, boxes))
    below = slice(3 * len(exact), 4 * len(exact))  # 4e-7 below: torchvision rounds up
    inner = slice(3, 6)  # sides 112, 224, 448: the boundaries inside the clamp range
    np.testing.assert_array_equal(got_tv[below][inner], got_d2[below][inner] + 1)
    with pytest.raises(ValueError, match="level_mapping"):
        RAF.fpn_levels(boxes, "detectron", min_level=2, max_level=5)
