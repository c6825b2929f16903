"""keras_maskrcnn.data.images / image_graph: one set of pixels per file, whoever decodes it.

For each kind of file made here (8/16-bit, gray, gray + alpha, RGBA, palette with and without
transparency, bilevel, CMYK JPEG, RGB / gray / progressive JPEG, GIF, BMP, WebP with and
without alpha), the Python reader (PIL), the in-graph decoder of ``serving_default``
(tf.io) and the TFRecord reader give the same array; header sizes agree with PIL's.
"""
import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_maskrcnn.config import InputConfig
from keras_maskrcnn.data import image_graph, images, tfrecord_reader


def _encode(image, fmt, **kwargs):
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _png16(array):
    """A 16-bit PNG written byte by byte (PIL cannot write 16-bit RGB / gray + alpha):
    array (H, W) gray, (H, W, 2) gray + alpha, (H, W, 3) RGB or (H, W, 4) RGBA uint16."""
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = array.reshape(h, w * channels).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _files():
    """{kind: encoded bytes} of every kind of file the readers must agree on (37 x 53)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    cmyk = Image.frombytes("CMYK", (53, 37), rng.integers(0, 256, (37, 53, 4),
                                                          dtype=np.uint8).tobytes())
    gray_alpha = Image.merge("LA", [Image.fromarray(rgb[..., 0]), Image.fromarray(rgb[..., 1])])
    return {
        "png_rgb": _encode(Image.fromarray(rgb), "PNG"),
        "png_gray": _encode(Image.fromarray(rgb[..., 0]), "PNG"),
        "png_gray_alpha": _encode(gray_alpha, "PNG"),
        "png_rgba": _encode(Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "PNG"),
        "png_palette": _encode(palette, "PNG"),
        "png_palette_transparency": _encode(palette, "PNG", transparency=3),
        "png_bilevel": _encode(Image.fromarray(rgb[..., 0] > 128), "PNG"),
        "png16_gray": _encode(Image.fromarray(gray16), "PNG"),
        "png16_gray_alpha": _png16(np.dstack([gray16, gray16[::-1]])),
        "png16_rgb": _png16(rng.integers(0, 65536, (37, 53, 3), dtype=np.uint16)),
        "png16_rgba": _png16(rng.integers(0, 65536, (37, 53, 4), dtype=np.uint16)),
        "jpeg_rgb": _encode(Image.fromarray(rgb), "JPEG", quality=90),
        "jpeg_gray": _encode(Image.fromarray(rgb[..., 0]), "JPEG", quality=90),
        "jpeg_progressive": _encode(Image.fromarray(rgb), "JPEG", quality=90, progressive=True),
        "jpeg_cmyk": _encode(cmyk, "JPEG", quality=90),
        "gif": _encode(palette, "GIF"),
        "bmp": _encode(Image.fromarray(rgb), "BMP"),
        "webp_lossless": _encode(Image.fromarray(rgb), "WEBP", lossless=True),
        "webp_lossy": _encode(Image.fromarray(rgb), "WEBP", quality=80),
        "webp_alpha": _encode(Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "WEBP",
                              quality=80),
    }


FILES = _files()


@pytest.mark.parametrize("kind", sorted(FILES))
def test_python_reader_graph_decoder_and_header_agree(kind):
    data = FILES[kind]
    python = images.read_image(data)
    graph = image_graph.decode_image_tensor(tf.constant(data)).numpy()
    assert python.shape == (37, 53, 3) and python.dtype == np.uint8
    np.testing.assert_array_equal(python, graph, err_msg=kind)
    assert tuple(image_graph.header_size(tf.constant(data)).numpy()) == (37, 53)
    assert images.image_size(data) == (37, 53)
    decoded, reason = tfrecord_reader._decode_image(data, 37, 53)  # the TFRecord reader's
    assert reason is None
    np.testing.assert_array_equal(decoded, python)


def test_sixteen_bit_keeps_the_high_byte():
    gray16 = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, ... 65535
    image = images.read_image(_encode(Image.fromarray(gray16), "PNG"))
    np.testing.assert_array_equal(image[..., 0], gray16 >> 8)  # 0..255, not 0 or 255
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    rgb16 = np.stack([gray16, gray16[::-1], gray16.T], -1)
    np.testing.assert_array_equal(images.read_image(_png16(rgb16)), rgb16 >> 8)


def test_alpha_is_dropped_not_composited():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200  # fully transparent grey: stays grey (not white, not black)
    np.testing.assert_array_equal(images.read_image(_encode(Image.fromarray(rgba), "PNG")),
                                  np.full((4, 4, 3), 200, np.uint8))


def test_exif_orientation_is_ignored_and_reported():
    rgb = np.zeros((10, 30, 3), np.uint8)
    rgb[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif)
    assert images.exif_orientation(data) == 6
    assert images.read_image(data).shape == (10, 30, 3)  # stored pixels, as tf.io reads
    assert image_graph.decode_image_tensor(tf.constant(data)).shape == (10, 30, 3)


def test_unreadable_and_float_images_are_errors_naming_the_file(tmp_path):
    with pytest.raises(images.ImageError, match=r"x\.png: no such file"):
        images.read_image(tmp_path / "x.png")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(images.ImageError, match=r"t\.txt: cannot decode the image: not an "):
        images.read_image(tmp_path / "t.txt")
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(images.ImageError, match=r"f\.tiff: cannot decode.*mode F"):
        images.read_image(tmp_path / "f.tiff")
    with pytest.raises(images.ImageError, match="differs from the annotation's 5x4"):
        images.read_image(FILES["png_rgb"], expected_size=(5, 4))


def test_pixel_cap_is_checked_from_the_header():
    data = FILES["png_rgb"]  # 37 x 53 = 1961 pixels
    assert images.read_image(data, max_pixels=1961).shape == (37, 53, 3)
    with pytest.raises(images.ImageTooLargeError, match="53x37 = 1961 pixels exceeds "
                                                        "max_image_pixels 1960"):
        images.read_image(data, max_pixels=1960)


def test_schema_default_is_the_readers_default():
    assert InputConfig().max_image_pixels == images.DEFAULT_MAX_IMAGE_PIXELS


def test_check_image_batch_passes_good_requests():
    check = tf.function(lambda x: image_graph.check_image_batch(x, 2000),
                        input_signature=[tf.TensorSpec([None], tf.string)])
    sizes = check(tf.constant([FILES["png_rgb"], FILES["jpeg_cmyk"], FILES["webp_alpha"]]))
    np.testing.assert_array_equal(sizes.numpy(), [[37, 53]] * 3)
    assert check(tf.zeros([0], tf.string)).shape == (0, 2)
