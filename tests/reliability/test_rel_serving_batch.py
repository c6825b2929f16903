"""Issue 20 item 11 (serving half) and item 4 (serving half): a request whose image at index i
is unreadable, truncated or too large fails with a message naming ``image_bytes[i]``; the
size is checked from the header before anything is decoded (``data.image_graph``, the check
``serving_default`` runs first)."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_maskrcnn.data import image_graph


def _png(h, w):
    out = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _jpeg(h, w):
    out = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def check():
    return tf.function(lambda batch: image_graph.check_image_batch(batch, 10_000),
                       input_signature=[tf.TensorSpec([None], tf.string)])


@pytest.mark.parametrize("bad, index, message", [
    (b"not an image", 2, "not a readable JPEG, PNG, GIF, BMP or WebP image header"),
    (_png(20, 30)[:-30], 1, "cannot be decoded"),  # truncated PNG
    (_jpeg(20, 30)[:400], 0, "cannot be decoded"),  # truncated JPEG
    (_png(101, 100), 1, r"100x101 \(W x H\) pixels exceed max_image_pixels 10000"),
], ids=["garbage", "truncated_png", "truncated_jpeg", "too_large"])
def test_the_bad_image_is_named_by_its_index(check, bad, index, message):
    batch = [_png(20, 30), _jpeg(25, 10), _png(8, 8)]
    batch[index] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"image_bytes\[{index}\]: "
                                                             + message):
        check(tf.constant(batch))


def test_a_good_request_passes(check):
    sizes = check(tf.constant([_png(20, 30), _jpeg(25, 10)]))
    np.testing.assert_array_equal(sizes.numpy(), [[20, 30], [25, 10]])


def test_the_header_of_a_20000x20000_png_is_read_without_decoding():
    head = _png(1, 1)[:16] + (20000).to_bytes(4, "big") * 2  # IHDR sizes, nothing after
    np.testing.assert_array_equal(image_graph.header_size(tf.constant(head)).numpy(),
                                  [20000, 20000])
