"""keras_maskrcnn.preprocessing: resize policies, padding, normalisation, mapping back."""
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import preprocessing as P


def _torchvision_size(h, w, min_size, max_size):
    """torchvision's rule in plain Python floats (transform._resize_image_and_masks)."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return int(math.floor(h * scale)), int(math.floor(w * scale)), scale


# ------------------------------------------------------------------------- shorter side
def test_shorter_side_size_matches_torchvision_rule(rng):
    cases = [(480, 640, 800, 1333), (427, 640, 800, 1333), (1000, 100, 800, 1333),
             (256, 256, 256, 320), (333, 500, 224, 320), (7, 9, 5, 6)]
    cases += [(int(h), int(w), 800, 1333) for h, w in rng.integers(50, 1500, (200, 2))]
    for h, w, lo, hi in cases:
        nh, nw, scale = P.shorter_side_size(h, w, lo, hi)
        eh, ew, es = _torchvision_size(h, w, lo, hi)
        assert (int(nh), int(nw)) == (eh, ew), (h, w, lo, hi)
        assert float(scale) == pytest.approx(es, rel=1e-6)
        assert max(eh, ew) <= hi


def test_shorter_side_size_hand_cases():
    # 480x640 -> 800 / 480 = 1.667, long side 1066.67 <= 1333: (800, 1066)
    assert [int(v) for v in P.shorter_side_size(480, 640, 800, 1333)[:2]] == [800, 1066]
    # 100x1000: 800 / 100 = 8 would make the long side 8000; 1333 / 1000 wins: (133, 1333)
    assert [int(v) for v in P.shorter_side_size(100, 1000, 800, 1333)[:2]] == [133, 1333]


def test_shorter_side_policy_equals_the_rule_on_a_table_of_sizes():
    pre = P.Preprocessor.shorter_side(800, 1333)
    table = [(480, 640), (427, 640), (640, 427), (1000, 100), (100, 1000), (800, 1333),
             (1, 1), (3000, 4000), (801, 1335), (333, 500)]
    for h, w in table:
        expected = _torchvision_size(h, w, 800, 1333)[:2]
        assert tuple(int(v) for v in pre.output_size(h, w)) == expected, (h, w)
        images, sizes = pre(tf.zeros((2, h, w, 3), tf.uint8))
        assert sizes.numpy().tolist() == [list(expected)] * 2
        assert images.shape[1:3] == tuple(-(-s // 32) * 32 for s in expected)


def test_padded_size():
    assert [int(v) for v in P.padded_size(tf.constant(33), tf.constant(64), 32)] == [64, 64]
    assert [int(v) for v in P.padded_size(tf.constant(1), tf.constant(32), 32)] == [32, 32]


# ------------------------------------------------------------------------- fixed square
@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (550, 550), (17, 1000)])
def test_fixed_square_sizes_ignore_the_aspect_ratio(shape):
    pre = P.Preprocessor.fixed_square(550)
    assert pre.size_divisor == 1
    images, sizes = pre(tf.ones((1,) + shape + (3,), tf.uint8) * 7)
    assert images.shape == (1, 550, 550, 3) and images.dtype == tf.float32
    assert sizes.numpy().tolist() == [[550, 550]]
    np.testing.assert_allclose(images.numpy(), 7.0)  # no padding at all
    padded, _ = P.Preprocessor.fixed_square(550, size_divisor=32)(tf.ones((1,) + shape + (3,)))
    assert padded.shape == (1, 576, 576, 3) and not padded[0, 550:].numpy().any()


def test_fixed_square_resize_is_bilinear_half_pixel_without_antialias(rng):
    image = rng.integers(0, 256, (1, 40, 90, 3)).astype(np.uint8)
    images, _ = P.Preprocessor.fixed_square(30)(tf.constant(image))
    expected = tf.compat.v1.image.resize_bilinear(image.astype(np.float32), (30, 30),
                                                  half_pixel_centers=True)
    np.testing.assert_allclose(images.numpy(), expected.numpy(), atol=1e-4)


def test_fixed_square_mapping_back_is_the_inverse_scale_per_axis():
    pre = P.Preprocessor.fixed_square(550)
    original = (400, 1100)  # (H0, W0): x scaled by 0.5, y by 1.375 into the square
    _, sizes = pre(tf.zeros((1,) + original + (3,)))
    sx, sy = 550 / original[1], 550 / original[0]
    boxes = np.array([[[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 550.0, 550.0]]], np.float32)
    keypoints = np.array([[[[55.0, 110.0, 0.7]], [[0.0, 0.0, 1.0]]]], np.float32)
    out = P.to_original_pixels({"boxes": tf.constant(boxes), "keypoints": tf.constant(keypoints),
                                "scores": tf.constant([[0.5, 0.25]])}, sizes,
                               tf.constant([original]))
    np.testing.assert_allclose(out["boxes"][0], boxes[0] / [sx, sy, sx, sy], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 1], [0, 0, 1100, 400], rtol=1e-6)
    np.testing.assert_allclose(out["keypoints"][0, 0, 0], [110.0, 80.0, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(out["scores"], [[0.5, 0.25]])  # other keys untouched


def test_policy_is_validated():
    with pytest.raises(ValueError, match="resize policy"):
        P.Preprocessor("longer_side")
    with pytest.raises(ValueError, match="min_size == max_size"):
        P.Preprocessor("fixed_square", 550, 600)


# ------------------------------------------------------------------------- normalise, masks
def test_normalize_zeroes_the_padding():
    pre = P.Preprocessor.shorter_side(8, 8, pixel_mean=(0.5, 0.5, 0.5),
                                      pixel_std=(0.25, 0.25, 0.25))
    images = tf.fill((1, 4, 6, 3), 255.0)
    x = pre.normalize(images, tf.constant([[3, 5]])).numpy()
    np.testing.assert_allclose(x[0, :3, :5], 2.0)  # (255 - 127.5) / 63.75
    assert not x[0, 3:].any() and not x[0, :, 5:].any()


def test_full_image_masks_on_a_common_canvas():
    full = P.full_image_masks(
        tf.ones([2, 1, 4, 4]), tf.constant([[[-9., -9., 50., 40.]], [[0., 0., 40., 10.]]]),
        tf.constant([[20, 30], [10, 40]]), 0.5, tf.constant([1, 0])).numpy()
    assert full.shape == (2, 1, 20, 40) and full.dtype == bool
    assert full[0, 0, :20, :30].all() and not full[0, 0, :, 30:].any()  # beyond W0 = 30
    assert not full[1].any()  # image 1 has no detections


# ------------------------------------------------------------------------- detectron2 style
def _detectron2_size(h, w, short, longest):
    """detectron2's ResizeShortestEdge.get_output_shape in Python floats."""
    scale = short * 1.0 / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > longest:
        scale = longest * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def test_detectron2_sizes_on_a_table(rng):
    table = [(480, 640, 800, 1333), (427, 640, 800, 1333), (640, 427, 800, 1333),
             (1000, 100, 800, 1333), (100, 1000, 800, 1333), (800, 1333, 800, 1333),
             (333, 500, 800, 1333), (375, 500, 800, 1333), (1, 1, 800, 1333),
             (3000, 4000, 800, 1333), (512, 512, 800, 1333), (1024, 2048, 1024, 2048),
             (683, 1024, 800, 1333), (7, 9, 5, 6), (333, 500, 224, 320)]
    table += [(int(h), int(w), 800, 1333) for h, w in rng.integers(50, 1500, (300, 2))]
    differ = 0
    for h, w, short, longest in table:
        want = _detectron2_size(h, w, short, longest)
        got = tuple(int(v) for v in P.detectron2_output_size(h, w, short, longest))
        assert got == want, (h, w, short, longest)
        pre = P.Preprocessor.shorter_side(short, longest, resize_style="detectron2")
        assert tuple(int(v) for v in pre.output_size(h, w)) == want
        differ += want != _torchvision_size(h, w, short, longest)[:2]
    assert differ > 50  # int(x + 0.5) vs floor: the rules really differ
    assert _detectron2_size(375, 500, 800, 1333) == (800, 1067)  # torchvision: (800, 1066)
    with pytest.raises(ValueError, match="resize_style"):
        P.Preprocessor.shorter_side(800, 1333, resize_style="pil")


# the pixels of resize_style detectron2: tests/ops/test_pil_resize.py (equal to PIL)


def test_detectron2_style_preprocessor_and_clipped_mapping_back():
    pre = P.Preprocessor.shorter_side(800, 1333, resize_style="detectron2")
    image = tf.fill((1, 375, 500, 3), tf.constant(9, tf.uint8))
    images, sizes = pre(image)
    assert sizes.numpy().tolist() == [[800, 1067]] and images.shape == (1, 800, 1088, 3)
    np.testing.assert_array_equal(images.numpy()[0, :800, :1067], 9.0)
    assert not images.numpy()[0, 800:].any() and not images.numpy()[0, :, 1067:].any()
    # fixed_square ignores the style
    assert not P.Preprocessor.fixed_square(550, resize_style="detectron2").detectron2_style
    boxes = {"boxes": tf.constant([[[0.0, 0.0, 1067.0, 800.0], [10.0, 20.0, 30.0, 40.0]]])}
    out = P.to_original_pixels(boxes, sizes, tf.constant([[375, 500]]), clip=True)["boxes"]
    scale = np.array([500 / 1067, 375 / 800] * 2, np.float32)
    np.testing.assert_allclose(out.numpy()[0, 1], np.array([10, 20, 30, 40]) * scale, rtol=1e-6)
    assert out.numpy()[0, 0].tolist() == [0.0, 0.0, 500.0, 375.0]  # clipped, never beyond


def test_image_masks_of_an_empty_batch_in_a_graph():
    """An empty serving request: no image to map over, the canvas is 0 x 0 (map_fn alone
    cannot stack zero elements of an unknown shape)."""
    fn = tf.function(lambda m, s: P.full_image_masks_from_image_masks(m, s, 0.5),
                     input_signature=[tf.TensorSpec([None, 10, None, None]),
                                      tf.TensorSpec([None, 2], tf.int32)])
    assert fn(tf.zeros([0, 10, 8, 8]), tf.zeros([0, 2], tf.int32)).shape == (0, 10, 0, 0)
    masks = tf.fill([2, 10, 8, 8], 0.9)
    out = fn(masks, tf.constant([[4, 6], [3, 2]]))
    assert out.shape == (2, 10, 4, 6) and out[1, :, :3, :2].numpy().all()
    assert not out[1, :, 3:].numpy().any() and not out[1, :, :, 2:].numpy().any()
