"""Beyond issue 20's list, the same class of fault in the TFRecord reader: a record written by
another tool with NaN box coordinates or NaN keypoints. Before: a NaN box passed the
under-1-pixel filter (NaN < 1 is False) and reached the losses; now such boxes are left out
like degenerate ones, and a record with non-finite keypoints is skipped and named."""
import io

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_maskrcnn.data import tfrecord


def _record(boxes, keypoints=None):
    """A 40 x 50 record in the Model Garden schema (normalised boxes, labels 1)."""
    png = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(png, format="PNG")
    boxes = np.asarray(boxes, np.float32) / [50, 40, 50, 40]
    floats = {f"image/object/bbox/{k}": boxes[:, i] for i, k in
              enumerate(("xmin", "ymin", "xmax", "ymax"))}
    if keypoints is not None:
        kps = np.asarray(keypoints, np.float32).reshape(-1, 3)
        floats.update({"image/object/keypoint/x": kps[:, 0] / 50,
                       "image/object/keypoint/y": kps[:, 1] / 40})
    feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=v))
               for k, v in floats.items()}
    feature["image/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[png.getvalue()]))
    feature["image/filename"] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[b"nan.png"]))
    feature["image/object/class/label"] = tf.train.Feature(int64_list=tf.train.Int64List(
        value=[1] * len(boxes)))
    if keypoints is not None:
        feature["image/object/keypoint/visibility"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[2] * len(kps)))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _decode(tmp_path, record, num_keypoints=0):
    path = str(tmp_path / "r.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(record)
    source = tfrecord.load_tfrecords(path, num_keypoints=num_keypoints)
    serialized = next(iter(source.record_dataset(training=False)))
    return source, source.decode_stage(None, with_masks=False)(serialized)


def test_nan_boxes_are_left_out_as_degenerate(tmp_path):
    source, example = _decode(tmp_path, _record([[5, 5, 20, 20], [np.nan, 5, 30, 30]]))
    assert bool(example["valid"])
    np.testing.assert_array_equal(example["boxes"].numpy(), [[5, 5, 20, 20]])
    assert source.stats.num_degenerate == 1


def test_nan_keypoints_skip_the_record_by_name(tmp_path, caplog):
    kps = [[10, 10, 2], [np.nan, 12, 2]]
    source, example = _decode(tmp_path, _record([[5, 5, 20, 20]], kps), num_keypoints=2)
    assert not bool(example["valid"])
    assert source.stats.skipped_images == [("nan.png", "non-finite keypoint coordinates")]
    assert "skipping record nan.png" in caplog.text
