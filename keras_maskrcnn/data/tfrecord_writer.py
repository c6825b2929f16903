"""COCO json + images -> TFRecords in the ``tfrecord_schema`` tf.Example schema (data input,
no paper section).

Conventions pinned here (tests/data/test_data_tfrecord.py checks them):
    * Writing (``write_tfrecords``, ``python -m keras_maskrcnn.data.tfrecord``): images in id
      order, image i to shard i % N (as Model Garden), files ``PREFIX-00000-of-0000N.tfrecord``.
      The json is read as ``coco.load_coco`` reads it (``coco_json``): annotations with a
      defect are not written and are listed in a summary printed first (``--strict``: the
      first one is an error naming the file, the annotation id and the field; nothing is
      written). An image whose header is unreadable or gives another size than the json is
      not written (``bad_images``, named in a warning). Boxes are clipped to the image; objects whose clipped box is under 1 pixel
      wide or high are not written (the COCO loader drops them too). Crowd regions ARE
      written (is_crowd 1). An annotation without segmentation gets its box as the PNG mask,
      as ``CocoDataset.instance_masks``. ``mask_crop_size`` C also writes each object's crop
      (the COCO path's ``instance_mask_crops`` of the same annotation, bit for bit).

Shape shorthand: M objects of an image (crowd included), Kp keypoints per object, H, W
image height and width.
"""
import hashlib
import io
import logging
import os

import numpy as np
import tensorflow as tf

from keras_maskrcnn.data import coco, coco_json, images
from keras_maskrcnn.data.tfrecord_schema import BOX_KEYS, shard_paths
from keras_maskrcnn.ops.masks import mask_crop_boxes

logger = logging.getLogger(__name__)


def encode_mask_png(mask):
    """(H, W) 0/1 mask -> PNG bytes (uint8, mode "L"), as Model Garden's encode_mask_as_png."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(mask, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _feature(values, kind):
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))
    if kind == "int":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(
            values, np.int64).ravel()))
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(
        values, np.float32).ravel()))


def _mask_crop_features(anns, boxes, size, height, width):
    """image/object/mask_crop{,/size}: the (C, C) crops of ``coco.segmentation_crop``."""
    frames = mask_crop_boxes(boxes)
    crops = [encode_mask_png(coco.segmentation_crop(a.get("segmentation") or None, frame, size,
                                                    height, width, box))
             for a, frame, box in zip(anns, frames, boxes)]
    return {"image/object/mask_crop": _feature(crops, "bytes"),
            "image/object/mask_crop/size": _feature([size], "int")}


def _object_features(image, anns, names, num_keypoints, keypoint_names, stats,
                     mask_crop_size=None):
    """Per-object features of one image's annotations (file order); updates ``stats``."""
    h, w = image["height"], image["width"]
    boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    stats["num_degenerate"] += int((~keep).sum())
    anns, boxes = [a for a, k in zip(anns, keep) if k], boxes[keep]
    crowd = [int(a.get("iscrowd", 0)) for a in anns]
    stats["num_objects"] += len(anns)
    stats["num_crowd"] += sum(crowd)
    masks = []
    for ann, box in zip(anns, boxes):
        if ann.get("segmentation"):
            mask = coco.decode_segmentation(ann["segmentation"], h, w)
        else:  # as CocoDataset.instance_masks: the (integer-rounded) box
            stats["num_box_masks"] += 1
            mask = np.zeros((h, w), np.uint8)
            x1, y1, x2, y2 = np.round(box).astype(int)
            mask[y1:y2, x1:x2] = 1
        masks.append(encode_mask_png(mask))
    normalised = boxes.astype(np.float64) / [w, h, w, h]
    features = {key: _feature(normalised[:, i], "float") for i, key in enumerate(BOX_KEYS)}
    features.update({
        "image/object/class/label": _feature([a["category_id"] for a in anns], "int"),
        "image/object/class/text": _feature(
            [names[a["category_id"]].encode("utf-8") for a in anns], "bytes"),
        "image/object/is_crowd": _feature(crowd, "int"),
        "image/object/area": _feature([a.get("area", (b[2] - b[0]) * (b[3] - b[1]))
                                       for a, b in zip(anns, boxes)], "float"),
        "image/object/mask": _feature(masks, "bytes")})
    if mask_crop_size:
        features.update(_mask_crop_features(anns, boxes, mask_crop_size, h, w))
    if num_keypoints:
        zeros = [0.0] * 3 * num_keypoints
        kps = [(not c and a.get("keypoints")) or zeros for a, c in zip(anns, crowd)]
        kps = np.array(kps, np.float64).reshape(-1, num_keypoints, 3)  # (M, 3Kp) -> (M, Kp, 3)
        features.update({
            "image/object/keypoint/x": _feature(kps[..., 0] / w, "float"),
            "image/object/keypoint/y": _feature(kps[..., 1] / h, "float"),
            "image/object/keypoint/visibility": _feature(kps[..., 2], "int"),
            "image/object/keypoint/num": _feature((kps[..., 2] > 0).sum(axis=1), "int")})
        if len(keypoint_names) == num_keypoints:
            features["image/object/keypoint/text"] = _feature(
                [n.encode("utf-8") for n in keypoint_names] * len(anns), "bytes")
    return features


def _image_features(image, encoded):
    ext = os.path.splitext(image["file_name"])[1].lower().lstrip(".")
    return {
        "image/encoded": _feature([encoded], "bytes"),
        "image/format": _feature([{"jpg": b"jpeg"}.get(ext, ext.encode())], "bytes"),
        "image/source_id": _feature([str(image["id"]).encode()], "bytes"),
        "image/height": _feature([image["height"]], "int"),
        "image/width": _feature([image["width"]], "int"),
        "image/filename": _feature([image["file_name"].encode("utf-8")], "bytes"),
        "image/key/sha256": _feature([hashlib.sha256(encoded).hexdigest().encode()], "bytes")}


def _header_problem(encoded, image):
    """None when the image bytes' header reads and gives the json's height x width, else
    the problem (nothing decoded: ``images.image_size``)."""
    try:
        size = images.image_size(encoded, name=image["file_name"])
    except images.ImageError as e:
        return str(e).removeprefix(f"{image['file_name']}: ")
    if size != (image["height"], image["width"]):
        return (f"its header says {size[0]}x{size[1]} (height x width), the json "
                f"{image['height']}x{image['width']}")
    return None


def write_tfrecords(annotation_file, image_dir, output_prefix, num_shards, num_keypoints=0,
                    progress=True, strict=False, mask_crop_size=None):
    """Converts a COCO json and its images to sharded TFRecords (schema in the module doc).

    Prints the annotation report's summary (``coco_json.AnnotationReport.summary``) first.

    Args:
        annotation_file: COCO instances / person_keypoints json (validated as ``load_coco``).
        image_dir: directory of the images' ``file_name``.
        output_prefix: files ``{output_prefix}-0000i-of-0000N.tfrecord`` (directory created).
        num_shards: N.
        num_keypoints: Kp > 0 writes the keypoint features.
        progress: show a tqdm progress bar.
        strict: False: annotations with a defect are not written (listed in the report);
            True: the first one raises ``coco_json.CocoFormatError`` before anything is written.
        mask_crop_size: C also writes image/object/mask_crop (C x C crops, read instead of the
            full-size PNGs by ``input.gt_mask_size`` C); None (default): not written.

    Returns:
        dict: files, num_images, num_objects, num_crowd, num_degenerate (not written),
        num_box_masks, missing_images (file names not found: not written), bad_images
        ((file name, reason) of images whose header is unreadable or gives another size than
        the json: not written), report (the
        ``coco_json.AnnotationReport``).
    """
    from tqdm import tqdm

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if mask_crop_size is not None and mask_crop_size < 1:
        raise ValueError(f"mask_crop_size must be >= 1, got {mask_crop_size}")
    parsed = coco_json.read_coco_json(os.fspath(annotation_file), num_keypoints, strict)
    print(parsed.report.summary(), flush=True)
    images = [parsed.images[i] for i in sorted(parsed.images)]
    per_image, categories = parsed.annotations, list(parsed.categories.values())
    names = {c["id"]: c["name"] for c in categories}
    with_kp = [c for c in categories if c.get("keypoints")]
    keypoint_names = tuple(with_kp[0]["keypoints"]) if with_kp else ()
    stats = dict(num_images=0, num_objects=0, num_crowd=0, num_degenerate=0, num_box_masks=0)
    missing, bad, paths = [], [], shard_paths(os.fspath(output_prefix), num_shards)
    os.makedirs(os.path.dirname(os.path.abspath(paths[0])), exist_ok=True)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for image in tqdm(images, desc=f"writing {output_prefix}", unit="image",
                          disable=not progress):
            try:
                with open(os.path.join(image_dir, image["file_name"]), "rb") as f:
                    encoded = f.read()
            except OSError as e:
                logger.warning("not writing image %s: %s", image["file_name"], e)
                missing.append(image["file_name"])
                continue
            problem = _header_problem(encoded, image)
            if problem:
                logger.warning("not writing image %s: %s", image["file_name"], problem)
                bad.append((image["file_name"], problem))
                continue
            features = _image_features(image, encoded)
            features.update(_object_features(image, per_image[image["id"]], names,
                                             num_keypoints, keypoint_names, stats,
                                             mask_crop_size))
            example = tf.train.Example(features=tf.train.Features(feature=features))
            writers[stats["num_images"] % num_shards].write(example.SerializeToString())
            stats["num_images"] += 1
    finally:
        for writer in writers:
            writer.close()
    if missing and not stats["num_images"]:
        raise ValueError(f"none of the {len(missing)} images is in {image_dir} (first: "
                         f"{missing[0]})")
    return dict(stats, files=paths, missing_images=missing, bad_images=bad,
                report=parsed.report)

