"""TFRecords in the TF Object Detection API / Model Garden tf.Example schema: the keys
(the writer is ``tfrecord_writer``, the reader ``tfrecord_reader``; data input, no paper
section).

Shape shorthand:
    M  objects of a record (crowd included when written), M' after the reader's filtering
    Kp keypoints per object
    H, W  image height and width

Schema (``FEATURE_KEYS``; the key names and conventions of Model Garden's
``official/vision/data/create_coco_tf_record.py`` / ``tfrecord_lib.py`` read by its
``tf_example_decoder.py``, plus the TF Object Detection API's keypoint keys), one tf.Example per
image::

    image/encoded            the image file's bytes, unchanged
    image/format             b"jpeg" / b"png" (from the file name)
    image/source_id          str(image id), e.g. b"139"
    image/height, image/width, image/filename, image/key/sha256
    image/object/bbox/{xmin,ymin,xmax,ymax}   float, NORMALISED: x / W, y / H, in [0, 1]
    image/object/class/label  int64 dataset category id (not contiguous; as Model Garden)
    image/object/class/text   category name, utf-8
    image/object/is_crowd     int64 0/1      image/object/area   float (the annotation's)
    image/object/mask         one PNG per object: (H, W) uint8 0/1, mode "L"
    image/object/keypoint/{x,y}  float x / W, y / H, flattened over objects (M * Kp)
    image/object/keypoint/visibility  int64 (M * Kp); keypoint/num (visible per object) and
                              keypoint/text (names, M * Kp) as the Object Detection API writes
    image/object/mask_crop   not in FEATURE_KEYS: this package's own, written only with
                              ``mask_crop_size`` C (off by default): one PNG per object, its
                              (C, C) uint8 0/1 crop (``coco.segmentation_crop`` in the frame
                              ``ops.masks.mask_crop_boxes`` gives the written box); Model
                              Garden's decoder parses only the keys it names, not these
    image/object/mask_crop/size  int64 C (with the crops)
"""
FEATURE_KEYS = (
    "image/encoded", "image/format", "image/source_id", "image/height", "image/width",
    "image/filename", "image/key/sha256",
    "image/object/bbox/xmin", "image/object/bbox/ymin", "image/object/bbox/xmax",
    "image/object/bbox/ymax", "image/object/class/label", "image/object/class/text",
    "image/object/is_crowd", "image/object/area", "image/object/mask",
    "image/object/keypoint/x", "image/object/keypoint/y", "image/object/keypoint/visibility",
    "image/object/keypoint/num", "image/object/keypoint/text")
BOX_KEYS = tuple(f"image/object/bbox/{k}" for k in ("xmin", "ymin", "xmax", "ymax"))


def shard_paths(prefix, num_shards):
    """The files ``write_tfrecords`` writes: PREFIX-00000-of-0000N.tfrecord ..."""
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]

