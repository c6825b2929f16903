"""Record-level helpers of ``tfrecord_reader`` (data input, no paper section): the parse spec,
image and mask decoding of one record, the orientation key read before decoding, the category
map (from a json or from every record) and the shards' intact prefixes
(``tfrecord_framing``). Conventions: ``tfrecord_reader``'s docstring.

Shape shorthand: M objects of a record, H, W image height and width, C mask crop side.
"""
import hashlib
import io
import logging

import numpy as np
import tensorflow as tf

from keras_maskrcnn.data import coco, coco_json, images, tfrecord_framing
from keras_maskrcnn.data.tfrecord_schema import BOX_KEYS

logger = logging.getLogger("keras_maskrcnn.data.tfrecord_reader")  # one logger for reading


def _image_id(source_id, encoded):
    """int(source_id) when decimal, else a 63-bit hash of it (of the image when empty)."""
    if source_id.isdigit():
        return int(source_id)
    digest = hashlib.sha256(source_id.encode() if source_id else encoded).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _decode_png_masks(pngs, height, width, frames=None, size=None):
    """PNG masks -> (M, H, W) uint8 0/1; with ``frames`` (M, 4) and ``size`` C: (M, C, C)
    crops, each mask sampled as soon as it is decoded."""
    from PIL import Image

    shape = (height, width) if frames is None else (size, size)
    masks = np.zeros((len(pngs),) + shape, np.uint8)
    for i, png in enumerate(pngs):
        with Image.open(io.BytesIO(png)) as im:
            mask = np.asarray(im)
        if mask.ndim == 3:  # an RGB(A) mask: its first channel
            mask = mask[..., 0]
        if mask.shape != (height, width):
            raise ValueError(f"mask {i} is {mask.shape[0]}x{mask.shape[1]}, expected "
                             f"{height}x{width}")
        mask = (mask > 0).astype(np.uint8)
        masks[i] = mask if frames is None else coco.sample_mask_crop(mask, frames[i], size)
    return masks


def _stored_crops(f, gt_mask_size, num_objects):
    """The record's image/object/mask_crop PNGs when they are ``gt_mask_size`` x ``gt_mask_size``,
    one per object; else None (then the full-size PNGs are cropped)."""
    crops = f.get("image/object/mask_crop", ())
    if gt_mask_size is None or int(f.get("image/object/mask_crop/size", 0)) != gt_mask_size \
            or len(crops) != num_objects:
        return None
    return crops


def _box_masks(boxes, height, width):
    """(M, H, W) uint8 masks filling the integer-rounded boxes (as CocoDataset)."""
    masks = np.zeros((len(boxes), height, width), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
        masks[i, y1:y2, x1:x2] = 1
    return masks


def _feature_spec(with_masks, num_keypoints, mask_crops=False):
    """tf.io.parse_single_example spec; every feature optional but image/encoded.
    ``mask_crops``: the stored crops too (image/object/mask_crop{,/size}; absent: (0,), 0)."""
    fixed, var = tf.io.FixedLenFeature, tf.io.VarLenFeature
    spec = {key: fixed((), tf.string, b"") for key in (
        "image/encoded", "image/source_id", "image/filename")}
    spec.update({"image/height": fixed((), tf.int64, -1), "image/width": fixed((), tf.int64, -1),
                 "image/object/class/label": var(tf.int64),
                 "image/object/is_crowd": var(tf.int64)})
    spec.update({key: var(tf.float32) for key in BOX_KEYS})
    if with_masks:
        spec["image/object/mask"] = var(tf.string)
    if with_masks and mask_crops:
        spec.update({"image/object/mask_crop": var(tf.string),
                     "image/object/mask_crop/size": fixed((), tf.int64, 0)})
    if num_keypoints:
        spec.update({"image/object/keypoint/x": var(tf.float32),
                     "image/object/keypoint/y": var(tf.float32),
                     "image/object/keypoint/visibility": var(tf.int64)})
    return spec


def _parse(serialized, spec):
    """Serialized tf.Example -> dict of dense tensors (lists: (n,), missing lists: (0,))."""
    parsed = tf.io.parse_single_example(serialized, spec)
    return {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
            for k, v in parsed.items()}


def _has_instances(serialized):
    """() bool: the record has an object that is not crowd and >= 1 pixel wide and high
    (the training filter of images without GT, before any image decoding)."""
    spec = {k: v for k, v in _feature_spec(False, 0).items() if "/object/" in k or k in (
        "image/height", "image/width")}  # not the image bytes
    f = _parse(serialized, spec)
    labels = f["image/object/class/label"]
    crowd = tf.concat([f["image/object/is_crowd"], tf.zeros_like(labels)], 0)
    crowd = crowd[:tf.size(labels)]  # is_crowd absent: zeros

    def at_least_a_pixel(size, lo, hi):  # the size may be absent (-1): then only hi > lo
        lo, hi = tf.clip_by_value(lo, 0.0, 1.0), tf.clip_by_value(hi, 0.0, 1.0)
        return tf.where(size > 0, (hi - lo) * tf.cast(size, tf.float32) >= 1.0, hi > lo)

    def any_instance():
        xmin, ymin, xmax, ymax = [f[k] for k in BOX_KEYS]
        wide = at_least_a_pixel(f["image/width"], xmin, xmax)
        high = at_least_a_pixel(f["image/height"], ymin, ymax)
        return tf.reduce_any((crowd == 0) & wide & high)

    consistent = tf.reduce_all(tf.stack([tf.size(f[k]) == tf.size(labels) for k in BOX_KEYS]))
    return tf.cond(consistent, any_instance, lambda: True)  # malformed: decoding skips it


def record_orientation(serialized):
    """() int64 window key of a serialized record before decoding: 0 landscape (h <= w),
    1 portrait (h > w), from image/height and image/width, else (absent) from the image
    file's header (PIL reads only the header). As ``pipeline``'s orientation of a decoded
    image: a record whose image decodes to another size is skipped when decoded."""
    size = {"image/height": tf.io.FixedLenFeature((), tf.int64, -1),
            "image/width": tf.io.FixedLenFeature((), tf.int64, -1)}
    f = tf.io.parse_single_example(serialized, size)  # not the image bytes
    h, w = f["image/height"], f["image/width"]

    def from_header():
        encoded = tf.io.parse_single_example(
            serialized, {"image/encoded": tf.io.FixedLenFeature((), tf.string, b"")})
        portrait = tf.numpy_function(_header_portrait, [encoded["image/encoded"]], tf.bool)
        return tf.ensure_shape(portrait, [])

    portrait = tf.cond((h > 0) & (w > 0), lambda: h > w, from_header)
    return tf.cast(portrait, tf.int64)


def _header_portrait(encoded):
    """Whether an encoded image is higher than wide, from its header (False when it cannot be
    read: the decoding skips it)."""
    encoded = encoded.item() if isinstance(encoded, np.ndarray) else encoded  # eager: 0-d
    try:
        height, width = images.image_size(encoded)
    except images.ImageError:  # unreadable: skipped when decoded
        return np.bool_(False)
    return np.bool_(height > width)


def _decode_image(encoded, height, width, max_pixels=images.DEFAULT_MAX_IMAGE_PIXELS):
    """(image (H, W, 3) uint8 RGB or None, reason) with ``images.read_image``, the COCO path's
    reader (same pixels); refused over ``max_pixels`` before decoding."""
    expected = (height, width) if height > 0 and width > 0 else None
    try:
        return images.read_image(encoded, max_pixels, expected, name="image/encoded"), None
    except images.ImageError as e:
        reason = str(e).removeprefix("image/encoded: ")
        return None, reason.replace("the annotation's", "the record's image/height x "
                                                        "image/width")


def _category_map_from_json(path):
    categories = coco_json.read_categories(path)
    with_kp = [c for c in categories if c.get("keypoints")]
    names = tuple(with_kp[0]["keypoints"]) if with_kp else ()
    skeleton = tuple((a - 1, b - 1) for a, b in with_kp[0].get("skeleton", ())) \
        if with_kp else ()
    return coco.CategoryMap.from_categories(categories), names, skeleton


def intact_records(files, counts):
    """Serialized records of ``files``, each read only up to its intact prefix
    (``counts[i]`` records; -1: the whole file), as one dataset, file after file."""
    pairs = tf.data.Dataset.from_tensor_slices((list(files), np.array(counts, np.int64)))
    return pairs.interleave(lambda path, n: tf.data.TFRecordDataset(path).take(n),
                            cycle_length=min(len(files), 8), block_length=1,
                            num_parallel_calls=tf.data.AUTOTUNE)


def scan_shards(files):
    """{file: its intact record count, -1 for a whole file}, each truncated or corrupt local
    shard named in a warning with the records kept and the bytes lost
    (``tfrecord_framing.scan_shard``)."""
    counts = {}
    for path in files:
        scan = tfrecord_framing.scan_shard(path) if tfrecord_framing.is_local(path) else None
        counts[path] = -1 if scan is None or scan.problem is None else scan.num_records
        if scan is not None and scan.problem is not None:
            logger.warning("TFRecord shard %s is damaged: %s; reading its %d intact records "
                           "and leaving out the last %d of its %d bytes", path, scan.problem,
                           scan.num_records, scan.lost_bytes, scan.file_bytes)
    return counts


def _category_map_from_records(files, counts):
    """CategoryMap of the labels seen in all records (names from class/text, else str(id))."""
    spec = {"image/object/class/label": tf.io.RaggedFeature(tf.int64),
            "image/object/class/text": tf.io.RaggedFeature(tf.string)}
    records = intact_records(files, [counts[f] for f in files])

    def flat(serialized):  # (values, row lengths) of labels and texts of 256 records
        parsed = tf.io.parse_example(serialized, spec)
        return [(parsed[k].values, parsed[k].row_lengths()) for k in sorted(spec)]

    batches = records.batch(256).map(flat, num_parallel_calls=tf.data.AUTOTUNE)
    names = {}
    for (labels, label_counts), (texts, text_counts) in batches.as_numpy_iterator():
        same = label_counts == text_counts  # records with a name per object
        texts = iter(np.split(texts, np.cumsum(text_counts)[:-1]))
        for ok, record in zip(same, np.split(labels, np.cumsum(label_counts)[:-1])):
            text = next(texts)
            for label, name in zip(record.tolist(), text if ok else [b""] * len(record)):
                if name or label not in names:
                    names[label] = name.decode("utf-8", "replace") or str(label)
    if not names:
        raise ValueError(f"no object labels in {len(files)} TFRecord files ({files[0]} ...): "
                         "give the annotation json (data.<split>.annotations) for the "
                         "categories")
    return coco.CategoryMap.from_categories([{"id": k, "name": v} for k, v in names.items()])
