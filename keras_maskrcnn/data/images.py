"""Image files -> (H, W, 3) uint8 RGB: the one reader of training, evaluation, predict and
the exported graph (data input, no paper section).

Conventions pinned here (tests/data/test_data_images.py checks each kind of file: the Python
reader, the in-graph decoder and the TFRecord reader give the same pixels):
    * Python (``read_image``: PIL) and the graph (``decode_image_tensor``: tf.io) decode the
      same file to the same array. JPEG: libjpeg's accurate integer IDCT in both (PIL's
      default; the graph asks ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``, since
      TensorFlow's default fast IDCT differs by up to 6 levels); CMYK (and YCCK) as
      TensorFlow converts it: R = floor((255 - C) * (255 - K) / 255) (PIL rounds: 1 level
      apart), on the CMYK values PIL reads (Adobe-inverted files un-inverted).
    * Channels: gray and bilevel are replicated to RGB; an alpha channel (gray + alpha, RGBA,
      a palette with transparency) is dropped, not composited (as ``tf.io.decode_image``).
    * 16-bit samples (PNG, TIFF) are scaled to 8 bits by keeping the high byte (v >> 8, what
      tf.image.convert_image_dtype does for uint16 -> uint8), never clipped: a 16-bit PNG does
      not turn white.
    * EXIF orientation is IGNORED everywhere: the pixels are used as stored, as
      ``tf.io.decode_image`` (and so a SavedModel's ``serving_default``) decodes them, as
      torchvision's and Model Garden's readers do, and in the frame COCO annotation
      tools store ``width``/``height`` and boxes. ``predict`` says so when a file carries an
      orientation other than 1.
    * Decompression bombs: ``max_pixels`` (``input.max_image_pixels``) caps H * W, checked
      from the file's header BEFORE anything is decoded (PIL's lazy open; in the graph the
      JPEG SOF, PNG IHDR, GIF screen, BMP and WebP headers). Over it: ``ImageTooLargeError``
      (Python) or an InvalidArgumentError naming the request index (graph). PIL's own
      DecompressionBombError / Warning never escape as such.
    * Formats: the graph decodes JPEG, PNG, GIF (first frame), BMP and WebP; the Python reader
      also what else PIL opens (e.g. TIFF). Floating-point images (PIL mode "F") are refused.

Shape shorthand: H, W image height and width; B images in a request.
"""
import io
import os
import warnings

import numpy as np

DEFAULT_MAX_IMAGE_PIXELS = 80_000_000  # a 64 MP phone photo fits; COCO images are < 0.4 MP
GRAPH_FORMATS = "JPEG, PNG, GIF, BMP or WebP"
_NOT_AN_IMAGE = "cannot decode the image: not an image file (no format PIL reads recognises it)"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and what was expected."""


class ImageTooLargeError(ImageError):
    """An image whose header declares more than ``max_pixels`` pixels (not decoded)."""


def _name(source, name):
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)


def too_large_message(name, height, width, max_pixels):
    return (f"{name}: {width}x{height} = {height * width} pixels exceeds max_image_pixels "
            f"{max_pixels} (input.max_image_pixels; checked before decoding)")


def _open(source):
    """PIL's lazy open of a path or bytes, its own bomb check turned into ours."""
    from PIL import Image

    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(data)


def image_size(source, name=None):
    """(H, W) from the header only (nothing decoded). Raises ``ImageError``."""
    from PIL import Image, UnidentifiedImageError

    name = _name(source, name)
    try:
        with _open(source) as image:
            return image.height, image.width
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: {_NOT_AN_IMAGE}") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"{name}: cannot read the image header ({e})") from None


def exif_orientation(source):
    """The EXIF orientation tag (1..8) of a file, 1 when absent or unreadable."""
    try:
        with _open(source) as image:
            return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - no orientation to report
        return 1


def _to_rgb(image):
    """A PIL image of any mode -> (H, W, 3) uint8 (module docstring: channels, 16 bits)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)  # 16 -> 8 bits: high byte
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "CMYK":  # as TensorFlow's JPEG decoder: floor((255 - c)(255 - k) / 255)
        cmyk = np.asarray(image).astype(np.int32)  # (H, W, 4)
        white = 255 - cmyk[..., 3:]
        return ((255 - cmyk[..., :3]) * white // 255).astype(np.uint8)
    if image.mode in ("F", "I;32", "I;32B", "I;32L"):
        raise ValueError(f"samples of mode {image.mode} (floating-point or 32-bit) have no "
                         "8-bit meaning")
    return np.asarray(image.convert("RGB"), np.uint8)


def read_image(source, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, expected_size=None, name=None):
    """An image file (path or bytes) -> (H, W, 3) uint8 RGB (conventions in the module doc).

    Args:
        source: a path or the encoded bytes.
        max_pixels: refuse images whose header declares more than this many pixels (None:
            no cap of ours; PIL's own bomb limit then still refuses, as an ``ImageError``).
        expected_size: (H, W) the annotations give, or None: another decoded size raises.
        name: what messages call the file (default: the path, or "<bytes>").

    Returns:
        (H, W, 3) uint8. Raises ``ImageTooLargeError`` (before decoding) or ``ImageError``
        (missing, unreadable, truncated, of another size), each naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    name = _name(source, name)
    try:
        with _open(source) as image:
            height, width = image.height, image.width
            if max_pixels is not None and height * width > max_pixels:
                raise ImageTooLargeError(too_large_message(name, height, width, max_pixels))
            array = _to_rgb(image)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}") from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: {_NOT_AN_IMAGE}") from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{name}: cannot decode the image ({type(e).__name__}: {e})") from None
    if expected_size is not None and tuple(array.shape[:2]) != tuple(expected_size):
        raise ImageError(f"{name}: decoded size {array.shape[0]}x{array.shape[1]} differs from "
                         f"the annotation's {expected_size[0]}x{expected_size[1]}")
    return array
