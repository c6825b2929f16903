"""ops.size_rule against Python's float64 arithmetic (torchvision's resize rule computes the
output size with Python floats: floor(side * min(min_size / short, max_size / long)))."""
import math

import numpy as np
import tensorflow as tf

from keras_maskrcnn.ops.size_rule import floor_times_ratio, shorter_side_ratio
from keras_maskrcnn.preprocessing import shorter_side_output_size


def _python_floor(x, a, d):
    return math.floor(float(x) * (float(a) / float(d)))


def _torchvision_sizes(h, w, lo, hi):
    scale = min(float(lo) / min(h, w), float(hi) / max(h, w))
    return math.floor(h * scale), math.floor(w * scale)


def test_floor_times_ratio_equals_float64_on_a_grid_and_on_every_disagreement():
    x, a, d = np.meshgrid(np.arange(1, 700), [800, 1333, 512, 550, 7, 1], np.arange(1, 700),
                          indexing="ij")
    x, a, d = x.ravel(), a.ravel(), d.ravel()
    expected = np.array([_python_floor(*v) for v in zip(x.tolist(), a.tolist(), d.tolist())])
    exact = (x * a) // d
    assert (expected != exact).sum() > 900  # float64 really does round below the integer
    got = floor_times_ratio(x, a, d).numpy()
    np.testing.assert_array_equal(got, expected)


def test_floor_times_ratio_large_sides_and_powers_of_two():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 2**20, 20000)
    d = rng.integers(1, 2**20, 20000)
    a = rng.choice([800, 1333, 1024, 2048, 640, 1], 20000)
    cases = [(x, a, d), (d, a, d), (2 ** rng.integers(0, 19, 20000), a, d)]  # side == short
    for xs, as_, ds in cases:
        expected = [_python_floor(*v) for v in zip(xs.tolist(), as_.tolist(), ds.tolist())]
        np.testing.assert_array_equal(floor_times_ratio(xs, as_, ds).numpy(), expected)


def test_shorter_side_output_size_equals_torchvision_rule_on_photo_sizes():
    sizes = [(h, w) for h in range(16, 3001, 37) for w in range(16, 3001, 53)]
    sizes += [(49, 640), (640, 49), (7, 9), (3000, 4000), (1, 1)]
    h, w = np.array(sizes).T
    for lo, hi in [(800, 1333), (512, 853), (160, 160), (600, 1000)]:
        got_h, got_w = shorter_side_output_size(tf.constant(h), tf.constant(w), lo, hi)
        expected = np.array([_torchvision_sizes(a, b, lo, hi) for a, b in sizes])
        np.testing.assert_array_equal(np.stack([got_h, got_w], 1), expected, err_msg=str(lo))


def test_shorter_side_ratio_picks_the_smaller_scale():
    a, d = shorter_side_ratio(100, 1000, 800, 1333)  # 800 / 100 = 8 > 1333 / 1000
    assert (int(a), int(d)) == (1333, 1000)
    a, d = shorter_side_ratio(480, 640, 800, 1333)
    assert (int(a), int(d)) == (800, 480)
