"""ops.pil_resize against Pillow itself: every value equal, on many sizes (shrinking and
enlarging, odd and even, one axis only, 1-pixel sides, the sizes detectron2's
ResizeShortestEdge(800, 1333) gives for typical photos), run as a graph with unknown sizes.
The default pass order is Pillow >= 13's (the installed Pillow is checked for it); Pillow <= 12's
order is checked by composing two one-axis PIL resizes (a one-axis resize has no order)."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import preprocessing
from keras_maskrcnn.ops.pil_resize import bilinear_coefficients, resize_bilinear_pil

Image = pytest.importorskip("PIL.Image")
PIL = pytest.importorskip("PIL")
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13

# (H, W) -> (h, w): photos at detectron2's test sizes (int(x + 0.5) of the scaled long side)
PHOTO_CASES = [((480, 640), (800, 1067)), ((640, 480), (1067, 800)), ((427, 640), (800, 1199)),
               ((375, 500), (800, 1067)), ((333, 500), (800, 1201)), ((1080, 1920), (750, 1333)),
               ((1512, 2016), (800, 1067)), ((1200, 1600), (800, 1067)),
               ((2000, 3000), (800, 1200)), ((1000, 700), (800, 560)), ((600, 800), (600, 800)),
               ((500, 400), (400, 320)),  # an exact 4/5 shrink (Pillow's weight ties)
               ((1600, 600), (1333, 500))]  # tall: Pillow >= 13 runs the height pass first


@pytest.fixture(autouse=True, scope="module")
def pillow_13():
    if not PILLOW_13:
        pytest.skip(f"Pillow {PIL.__version__}: the default pass order is Pillow >= 13's")


@pytest.fixture(scope="module")
def resize_fn():
    """One traced graph for every size (unknown H, W and output size)."""
    return tf.function(resize_bilinear_pil, input_signature=[
        tf.TensorSpec([None, None, None, None], tf.uint8), tf.TensorSpec([2], tf.int32)])


def _pil(image, size):
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))


@pytest.mark.parametrize("shape, size", PHOTO_CASES)
def test_equal_to_pil_at_photo_sizes(rng, resize_fn, shape, size):
    image = rng.integers(0, 256, shape + (3,)).astype(np.uint8)
    got = resize_fn(image[None], tf.constant(size)).numpy()[0]
    want = _pil(image, size)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{(got != want).sum()} values differ"


def test_equal_to_pil_on_many_small_sizes(rng, resize_fn):
    """300 random (H, W) -> (h, w) in 1..48 plus exact ratios (2x, 1/2, 3/4, 4/5, 1/3);
    smooth images as well as noise (edges of the 0 / 255 clipping)."""
    cases = [tuple(map(int, c)) for c in rng.integers(1, 49, (300, 4))]
    cases += [(10, 12, 20, 24), (20, 24, 10, 12), (16, 20, 12, 15), (25, 35, 20, 28),
              (30, 33, 10, 11), (1, 40, 1, 7), (40, 1, 7, 1), (2, 2, 1, 1), (1, 1, 30, 30)]
    for i, (h0, w0, h, w) in enumerate(cases):
        if i % 2:
            image = rng.integers(0, 256, (h0, w0, 3)).astype(np.uint8)
        else:  # a gradient with saturated corners
            ramp = np.add.outer(np.arange(h0) * 37.0, np.arange(w0) * 23.0) % 300 - 20
            image = np.clip(np.stack([ramp, 255 - ramp, ramp / 2], -1), 0, 255).astype(np.uint8)
        got = resize_fn(image[None], tf.constant([h, w])).numpy()[0]
        assert np.array_equal(got, _pil(image, (h, w))), (h0, w0, h, w)


def test_gray_batch_and_float_input(rng):
    """Any channel count (PIL mode "L" for one); a batch is resized image by image; float
    input holding uint8 values gives the same result."""
    images = rng.integers(0, 256, (2, 37, 53, 1)).astype(np.uint8)
    got = resize_bilinear_pil(images, (20, 71)).numpy()
    for image, out in zip(images, got):
        want = np.asarray(Image.fromarray(image[..., 0], mode="L").resize((71, 20),
                                                                          Image.BILINEAR))
        assert np.array_equal(out[..., 0], want)
    assert np.array_equal(resize_bilinear_pil(images[0].astype(np.float32), (20, 71)), got[0])


def test_coefficients_hand_computed():
    """2x enlargement (4 -> 8): output x has centre (x + 0.5) / 2 in input coordinates (pixel
    i centred at i + 0.5), so output 1 (centre 0.75) is 3/4 of input 0 + 1/4 of input 1,
    output 2 (centre 1.25) 1/4 + 3/4; output 0 lies left of input 0's centre: its in-image
    taps 3/4 (input 0) and 0 (input 1) renormalise to 1. Every row sums to 2^22."""
    indices, coefficients = bilinear_coefficients(4, 8)
    assert indices.numpy()[:3, :2].tolist() == [[0, 1]] * 3
    assert coefficients.numpy()[:3, :2].tolist() == [[1 << 22, 0], [3 << 20, 1 << 20],
                                                     [1 << 20, 3 << 20]]
    assert (coefficients.numpy().sum(1) == 1 << 22).all()
    indices, coefficients = bilinear_coefficients(9, 3)  # 3x shrink: the triangle widens to 3
    assert coefficients.shape == (3, 2 * 3 + 1) and indices.numpy()[1, 0] == 2
    assert coefficients.numpy()[1, :5].tolist() == [round(w / 9 * 2 ** 22) for w in
                                                    (1, 2, 3, 2, 1)]


def test_preprocessor_uses_it(rng):
    """``resize_style="detectron2"`` gives PIL's pixels (then zero padding)."""
    image = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    pre = preprocessing.Preprocessor.shorter_side(100, 1333, resize_style="detectron2")
    images, sizes = pre(tf.constant(image)[None])
    assert sizes.numpy().tolist() == [[100, 133]]
    assert np.array_equal(images.numpy()[0, :100, :133], _pil(image, (100, 133)))


def test_pillow_12_pass_order(rng):
    """``horizontal_first=True`` = width pass, stored as uint8, then height pass (Pillow <= 12
    on every size); it differs from the default where Pillow >= 13 goes height first."""
    image = rng.integers(0, 256, (31, 27, 3)).astype(np.uint8)
    for size in [(27, 45), (20, 60), (45, 27)]:
        want = _pil(_pil(image, (31, size[1])), size)  # width, then height
        got = resize_bilinear_pil(image, size, horizontal_first=True).numpy()
        assert np.array_equal(got, want), size
        other = _pil(_pil(image, (size[0], 27)), size)  # height, then width
        assert np.array_equal(resize_bilinear_pil(image, size, horizontal_first=False), other)
    assert not np.array_equal(resize_bilinear_pil(image, (27, 45), horizontal_first=True),
                              resize_bilinear_pil(image, (27, 45)))
