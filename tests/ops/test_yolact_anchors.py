"""yolact_anchors against a NumPy transcription of YOLACT's ``make_priors``."""
from itertools import product
from math import sqrt

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.anchors import yolact_anchors

SIZES_550 = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
SCALES = [[24], [48], [96], [192], [384]]


def make_priors_oracle(conv_h, conv_w, scales, ratios, max_size, square):
    """The reference's loop: relative (cx, cy, w, h) from Python floats."""
    data = []
    for j, i in product(range(conv_h), range(conv_w)):
        x = (i + 0.5) / conv_w
        y = (j + 0.5) / conv_h
        for scale in scales:
            for ar in ratios:
                ar = sqrt(ar)
                w = scale * ar / max_size
                h = scale / ar / max_size
                if square:
                    h = w
                data += [x, y, w, h]
    return np.array(data, np.float64).reshape(-1, 4)


def oracle_pixels(image_hw, feature_sizes, scales=SCALES, ratios=(1, 0.5, 2), square=True,
                  reference=550):
    priors = np.concatenate([make_priors_oracle(h, w, s, ratios, reference, square)
                             for (h, w), s in zip(feature_sizes, scales)])
    cx, cy, w, h = priors.T
    height, width = image_hw
    xyxy = np.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                     (cx + w / 2) * width, (cy + h / 2) * height], 1)  # point_form x size
    return xyxy.astype(np.float32)


def test_550_count_and_exact_values():
    got = yolact_anchors(550, SIZES_550).numpy()
    assert got.shape == (19248, 4)
    np.testing.assert_array_equal(got, oracle_pixels((550, 550), SIZES_550))
    # first anchor: cell (0, 0) of P3, ratio 1: 24 px square centred at 550 / 138
    c = 0.5 / 69 * 550
    np.testing.assert_allclose(got[0], [c - 12, c - 12, c + 12, c + 12], rtol=1e-6)
    # second and third: ratios 1/2 and 2, still square (side 24 sqrt(r))
    side = got[1:3, 2] - got[1:3, 0]
    np.testing.assert_allclose(side, [24 * sqrt(0.5), 24 * sqrt(2)], rtol=1e-5)
    np.testing.assert_allclose(got[1:3, 3] - got[1:3, 1], side, rtol=1e-5)


def test_float32_relative_route_agrees():
    """The reference keeps float32 relative priors: the same boxes up to float32 rounding."""
    priors = np.concatenate([make_priors_oracle(h, w, s, (1, 0.5, 2), 550, True)
                             for (h, w), s in zip(SIZES_550, SCALES)]).astype(np.float32)
    rel = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    np.testing.assert_allclose(yolact_anchors(550, SIZES_550).numpy(), rel * 550, atol=1e-3)


def test_non_square_ratios_and_other_sizes():
    sizes = [(9, 12), (5, 6)]
    got = yolact_anchors((70, 96), sizes, scales=(10, (20, 30)), aspect_ratios=(1, 0.5, 2),
                         square=False, reference_size=110).numpy()
    want = oracle_pixels((70, 96), sizes, scales=[[10], [20, 30]], square=False, reference=110)
    assert got.shape == (9 * 12 * 3 + 5 * 6 * 6, 4)
    np.testing.assert_array_equal(got, want)
    w = got[1, 2] - got[1, 0]
    h = got[1, 3] - got[1, 1]
    # ratio 1/2 = w / h in relative units: pixel ratio w / h = 0.5 * 96 / 70
    np.testing.assert_allclose(w / h, 0.5 * 96 / 70, rtol=1e-5)


def test_scaled_to_other_input_size_and_tensor_sizes():
    sizes = [(88, 88), (44, 44), (23, 23), (12, 12), (6, 6)]
    got = yolact_anchors(700, sizes).numpy()
    np.testing.assert_array_equal(got, oracle_pixels((700, 700), sizes))
    side = got[0, 2] - got[0, 0]
    np.testing.assert_allclose(side, 24 * 700 / 550, rtol=1e-5)
    fn = tf.function(lambda s: yolact_anchors(s, [(s // 8, s // 8)], scales=(24,)))
    np.testing.assert_array_equal(fn(tf.constant(64)).numpy(),
                                  oracle_pixels((64, 64), [(8, 8)], scales=[[24]]))


def test_scales_must_match_levels():
    with pytest.raises(ValueError):
        yolact_anchors(550, SIZES_550[:2])
