"""ops.bilinear_resize (the ONNX export's resize) against tf.image.resize (bilinear, half-pixel
centres, no antialias), which tests/test_preprocessing.py checks against torch."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.bilinear_resize import resize_bilinear_gather


@pytest.mark.parametrize("in_hw,out_hw", [((480, 280), (512, 298)), ((400, 600), (320, 480)),
                                          ((300, 451), (320, 481)), ((7, 5), (13, 2)),
                                          ((1, 1), (4, 3)), ((213, 320), (550, 550))])
def test_equals_tf_image_resize(rng, in_hw, out_hw):
    images = rng.integers(0, 256, (1,) + in_hw + (3,)).astype(np.uint8)
    got = resize_bilinear_gather(images, tf.constant(out_hw)).numpy()
    expected = tf.image.resize(tf.cast(images, tf.float32), out_hw, antialias=False).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)  # grey levels (0..255)
