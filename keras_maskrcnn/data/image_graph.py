"""The in-graph half of ``data.images``: decode encoded images inside a SavedModel with the
same rules as the Python reader, header sizes read before decoding, and a request's bad image
named by its index (data input, no paper section).

Conventions pinned here (tests/data/test_data_images.py, tests/reliability/test_images.py):
    * ``decode_image_tensor``: JPEG with ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``
      (what PIL decodes), everything else ``tf.io.decode_image(channels=3, dtype=uint8)``
      (16-bit samples keep their high byte; alpha dropped; EXIF orientation ignored).
    * ``header_size``: (H, W) from the headers only, never failing: JPEG's first SOF segment
      (markers walked by their lengths), PNG's IHDR, GIF's logical screen, BMP's info header,
      WebP's VP8 / VP8L / VP8X header; (-1, -1) for anything else.
    * ``check_image_batch``: for a (B,) string batch, an InvalidArgumentError naming the first
      index ``i`` as ``image_bytes[i]`` whose header is unreadable, whose H * W exceeds
      ``max_pixels`` (nothing decoded yet), or which does not decode. The decodability check
      decodes each image once more in a tf.data pipeline (``ignore_errors``: the graph has no
      other way to learn which image failed); that costs one extra decode per image.

Shape shorthand: B images in a request; H, W one image's size.
"""
import tensorflow as tf

from keras_maskrcnn.data.images import GRAPH_FORMATS

_HEAD = 32  # header bytes read by header_size


def _is(data, magic, offset=0):
    """() bool: ``data`` holds ``magic`` at ``offset`` (False when shorter)."""
    padded = data + b"\0" * (offset + len(magic))  # substr fails beyond the end
    return tf.equal(tf.strings.substr(padded, offset, len(magic)), magic)


def _uint(b, start, count, big_endian):
    """Unsigned integer of ``count`` bytes from a (32,) int64 byte vector."""
    parts = [b[start + i] for i in range(count)]
    if not big_endian:
        parts = parts[::-1]
    value = tf.constant(0, tf.int64)
    for p in parts:
        value = value * 256 + p
    return value


def _bytes(data):
    """() string -> (32,) int64: its first 32 bytes, zero-padded."""
    padded = tf.strings.substr(data + b"\0" * _HEAD, 0, _HEAD)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)  # (32,)


def _webp_size(b):
    """(H, W) of a RIFF/WEBP header: VP8X canvas, VP8L or VP8 (lossy) frame."""
    vp8x = (_uint(b, 27, 3, False) + 1, _uint(b, 24, 3, False) + 1)
    bits = _uint(b, 21, 4, False)  # VP8L: 14 bits width - 1, 14 bits height - 1
    vp8l = (tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1,
            tf.bitwise.bitwise_and(bits, 0x3FFF) + 1)
    vp8 = (tf.bitwise.bitwise_and(_uint(b, 28, 2, False), 0x3FFF),
           tf.bitwise.bitwise_and(_uint(b, 26, 2, False), 0x3FFF))
    return vp8x, vp8l, vp8


def _jpeg_size(data):
    """(H, W) from a JPEG's first SOF segment: markers walked from byte 2 by their lengths
    (nothing decoded; (-1, -1) when the walk leaves the data or finds no SOF)."""
    size = tf.cast(tf.strings.length(data), tf.int64)

    def segment(pos):  # (9,) int64 bytes at pos: FF, marker, length (2), precision, H, W
        return tf.cast(tf.io.decode_raw(tf.strings.substr(data + b"\0" * 9, pos, 9),
                                        tf.uint8), tf.int64)

    def is_sof(marker):  # SOF0..SOF15 but DHT (C4), JPG (C8), DAC (CC)
        return (marker >= 0xC0) & (marker <= 0xCF) & (marker != 0xC4) & (marker != 0xC8) \
            & (marker != 0xCC)

    def searching(pos, found):
        return tf.logical_not(found) & (pos + 9 <= size)

    def step(pos, found):
        b = segment(pos)
        valid = tf.equal(b[0], 0xFF)
        sof = valid & is_sof(b[1])
        standalone = (b[1] == 0x01) | ((b[1] >= 0xD0) & (b[1] <= 0xD7)) | (b[1] == 0xFF)
        length = tf.where(standalone, tf.constant(0, tf.int64), b[2] * 256 + b[3])
        next_pos = tf.where(b[1] == 0xFF, pos + 1, pos + 2 + length)  # FF fill bytes
        stop = sof | tf.logical_not(valid)
        return [tf.where(stop, pos, next_pos), stop]

    pos, _ = tf.while_loop(searching, step, [tf.constant(2, tf.int64), tf.constant(False)],
                           maximum_iterations=100_000)
    b = segment(pos)
    ok = (pos + 9 <= size) & tf.equal(b[0], 0xFF) & is_sof(b[1])
    return tf.where(ok, tf.stack([b[5] * 256 + b[6], b[7] * 256 + b[8]]),
                    tf.constant([-1, -1], tf.int64))


def header_size(data):
    """() string encoded image -> (2,) int64 (H, W) from its header; (-1, -1) when it is not a
    JPEG / PNG / GIF / BMP / WebP header or a JPEG whose markers lead to no SOF. Never
    raises (no decoding op), so a bad request is named by index before anything fails."""
    b = _bytes(data)
    png = tf.stack([_uint(b, 20, 4, True), _uint(b, 16, 4, True)])
    gif = tf.stack([_uint(b, 8, 2, False), _uint(b, 6, 2, False)])
    dib = _uint(b, 14, 4, False)
    bmp_height = _uint(b, 22, 4, False)
    bmp_height = tf.where(bmp_height >= 2 ** 31, 2 ** 32 - bmp_height, bmp_height)  # top-down
    bmp = tf.where(tf.equal(dib, 12), tf.stack([_uint(b, 20, 2, False), _uint(b, 18, 2, False)]),
                   tf.stack([bmp_height, _uint(b, 18, 4, False)]))
    vp8x, vp8l, vp8 = _webp_size(b)
    fourcc = tf.strings.substr(data + b"\0" * 16, 12, 4)
    webp = tf.where(tf.equal(fourcc, b"VP8X"), tf.stack(vp8x),
                    tf.where(tf.equal(fourcc, b"VP8L"), tf.stack(vp8l), tf.stack(vp8)))
    is_webp = _is(data, b"RIFF") & _is(data, b"WEBP", 8)
    unknown = tf.constant([-1, -1], tf.int64)

    return tf.case([(_is(data, b"\xff\xd8\xff"), lambda: _jpeg_size(data)),
                    (_is(data, b"\x89PNG\r\n\x1a\n"), lambda: png),
                    (_is(data, b"GIF8"), lambda: gif),
                    (_is(data, b"BM"), lambda: bmp),
                    (is_webp, lambda: webp)], default=lambda: unknown, exclusive=False)


def _webp_rgb(data):
    """WebP -> (H, W, 3): TF's WebP decoder refuses channels=3 for a file with alpha, so it
    decodes the stored channels (3 or 4) and the alpha is dropped here."""
    image = tf.io.decode_image(data, dtype=tf.uint8, expand_animations=False)
    return image[..., :3]


def decode_image_tensor(data):
    """() string -> (H, W, 3) uint8, as ``images.read_image`` decodes the same file."""
    webp = _is(data, b"RIFF") & _is(data, b"WEBP", 8)
    image = tf.case([(_is(data, b"\xff\xd8\xff"), lambda: tf.io.decode_jpeg(
                        data, channels=3, dct_method="INTEGER_ACCURATE")),
                     (webp, lambda: _webp_rgb(data))],
                    default=lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                                       expand_animations=False),
                    exclusive=False)
    return tf.ensure_shape(image, [None, None, 3])


def _surviving(image_bytes, fn):
    """(B,) bool: whether ``fn(image)`` runs without error, image by image (tf.data)."""
    n = tf.shape(image_bytes, out_type=tf.int64)[0]
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
    ds = ds.map(lambda i, data: (i, fn(data))).ignore_errors()
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False  # per request: cheap
    options.autotune.enabled = False
    ds = ds.with_options(options)
    return ds.reduce(tf.zeros([n], tf.bool), lambda ok, x: tf.tensor_scatter_nd_update(
        ok, x[0][None, None], [True]))


def _first(bad):
    """() int64: the first True index of (B,) bool, B when none (also for B = 0)."""
    n = tf.shape(bad, out_type=tf.int64)[0]
    return tf.reduce_min(tf.concat([tf.where(bad)[:, 0], n[None]], 0))


def _assert_none(bad, template, values):
    """Assert op: no element of (B,) ``bad`` is True, else ``template`` formatted with
    ``values`` as the InvalidArgumentError's message."""
    message = tf.strings.format(template, values, summarize=-1)
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])


def check_image_batch(image_bytes, max_pixels):
    """Asserts every image of a (B,) string batch is usable; names the first bad index.

    Returns:
        (B, 2) int64 header sizes (H, W); run the decoding under a control dependency on it.
    """
    sizes = tf.map_fn(header_size, image_bytes, fn_output_signature=tf.int64)  # (B, 2)
    sizes = tf.reshape(sizes, [-1, 2])  # B = 0: (0, 2)
    bad = tf.reduce_any(sizes <= 0, axis=1)
    assert_header = _assert_none(bad, "image_bytes[{}]: not a readable " + GRAPH_FORMATS
                                 + " image header", [_first(bad)])
    with tf.control_dependencies([assert_header]):
        pixels = tf.reduce_prod(sizes, axis=1)  # (B,)
    over = pixels > max_pixels
    i = _first(over)
    padded = tf.concat([sizes, [[0, 0]]], 0)  # index B (none over) stays gatherable
    assert_cap = _assert_none(over, "image_bytes[{}]: {}x{} (W x H) pixels exceed "
                              f"max_image_pixels {max_pixels} (input.max_image_pixels; "
                              "checked before decoding)",
                              [i, tf.gather(padded, i)[1], tf.gather(padded, i)[0]])
    with tf.control_dependencies([assert_cap]):
        decodable = _surviving(image_bytes, lambda d: tf.shape(decode_image_tensor(d)))
    undecodable = tf.logical_not(decodable)
    assert_decodes = _assert_none(undecodable, "image_bytes[{}]: cannot be decoded (corrupt "
                                  f"or truncated {GRAPH_FORMATS} data)", [_first(undecodable)])
    with tf.control_dependencies([assert_decodes]):
        return tf.identity(sizes)
