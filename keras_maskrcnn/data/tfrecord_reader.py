"""TFRecords of the ``tfrecord_schema`` tf.Example schema -> the pipeline's examples (data
input, no paper section).

Conventions pinned here (tests/data/test_data_tfrecord.py checks them):
    * Reading (``load_tfrecords``; ``TFRecordSource.record_dataset`` then ``decode_stage``,
      which ``pipeline.build_dataset`` puts together) yields the examples of the COCO path's
      Python stage: boxes x * W, y * H (float32 xyxy pixels), crowd regions and
      boxes under 1 pixel left out (``stats.num_crowd``, ``stats.num_degenerate``, counted on
      the first pass), labels mapped to 1..K, masks PNG -> (M', H, W) uint8 (pixel > 0), or
      with ``gt_mask_size`` C the record's stored crops when they are C x C (no full-size PNG
      inflated), else each PNG decoded and sampled into its (C, C) crop
      (``coco.sample_mask_crop``; no (M', H, W) array), a
      record without masks gets box masks (``stats.num_box_masks``), one without keypoints
      gets v = 0; asked ``with_crowd``, the crowd regions' boxes (those of >= 1 pixel) as
      ``crowd_boxes`` (C, 4), as the COCO path. Images are decoded with PIL, as the COCO path
      (same pixels): a record whose
      image does not decode, or decodes to another size than image/height x image/width, is
      skipped, counted in ``stats.skipped_images`` and named in a warning; the pipeline goes on.
    * Category map: records carry only per-object ids and names, not the category list. The
      reader takes it from an annotation json's ``categories`` when given (recommended: a
      category absent from a split cannot shift the contiguous ids), else from the labels seen
      in all the records (one extra pass; names from image/object/class/text, else str(id);
      which categories have keypoints is then unknown: every class is taken to have them).
    * image_ids: image/source_id when it is a decimal integer (COCO), else a 63-bit hash of it
      (of the image bytes when empty, as Model Garden regenerates one).
    * Order: shards are read round-robin (evaluation: all at once, so records written by this
      writer or Model Garden's come back in id order); training shuffles shards and records.
    * Several input pipelines (multi-worker training): each reads a disjoint share, whole
      files when there are at least as many files as pipelines, else every N-th record of
      each file (``TFRecordSource.record_dataset``).

Shape shorthand: M objects of a record, M' after the reader's filtering, Kp keypoints per
object, H, W image height and width, C mask crop side.
"""
import logging
import os

import numpy as np
import tensorflow as tf

from keras_maskrcnn.data import coco, images
from keras_maskrcnn.data.tfrecord_records import (
    _image_id, _decode_png_masks, _stored_crops, _box_masks, _feature_spec,
    _parse, _has_instances, _decode_image, _category_map_from_json, scan_shards,
    _category_map_from_records)
from keras_maskrcnn.data.tfrecord_schema import BOX_KEYS
from keras_maskrcnn.ops.masks import mask_crop_boxes

logger = logging.getLogger(__name__)
_MAX_FAILURES_IN_A_ROW = 1000  # then the records are taken to be unreadable altogether


class TFRecordSource:
    """Sharded TFRecords, read by ``pipeline.build_dataset`` (the ``CocoDataset`` counterpart).

    Attributes:
        file_pattern: the glob(s) given; files: the matching files, sorted.
        annotation_file: the json the categories came from (None: from the records).
        image_dir: None (the images are inside the records).
        categories: ``coco.CategoryMap``; keypoint_names, skeleton: from the json, else ().
        num_keypoints: Kp read (0: none). stats: ``coco.LoadStats`` (filled while reading).
        report: None, as ``CocoDataset.report`` for a source without one: annotations with a
            defect were left out, and listed, when the records were written.
    """

    def __init__(self, file_pattern, annotation_file=None, num_keypoints=0):
        patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) \
            else list(file_pattern)
        self.file_pattern = file_pattern
        self.files = sorted({f for p in patterns for f in tf.io.gfile.glob(os.fspath(p))})
        if not self.files:
            raise FileNotFoundError(f"no TFRecord file matches {file_pattern!r}")
        self.record_counts = scan_shards(self.files)  # damaged shards: intact prefix
        self.annotation_file = os.fspath(annotation_file) if annotation_file else None
        self.image_dir = None
        self.num_keypoints = num_keypoints
        self.keypoint_names, self.skeleton = (), ()
        if self.annotation_file:
            self.categories, self.keypoint_names, self.skeleton = _category_map_from_json(
                self.annotation_file)
        else:
            self.categories = _category_map_from_records(self.files, self.record_counts)
            logger.info("%s: categories from the labels of the records: %s", file_pattern,
                        dict(zip(self.categories.dataset_ids, self.categories.names)))
        self.stats = coco.LoadStats()
        self.report = None
        self._skipped_ids, self._counted_ids = set(), set()
        self._failures_in_a_row = 0

    def skip(self, image_id, name, reason):
        """Counts a record that cannot be used, names it in a warning (once); returns None."""
        with self.stats.lock:
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= _MAX_FAILURES_IN_A_ROW:
                raise RuntimeError(f"{self.file_pattern}: {_MAX_FAILURES_IN_A_ROW} records in "
                                   f"a row are unreadable (last: {name}: {reason})")
            if image_id in self._skipped_ids:
                return None
            self._skipped_ids.add(image_id)
            self.stats.skipped_images.append((name, reason))
        logger.warning("skipping record %s (image id %d): %s", name, image_id, reason)
        return None

    def _count_once(self, image_id, **counts):
        """Adds ``counts`` to ``stats`` the first time an image is read (not every epoch)."""
        with self.stats.lock:
            self._failures_in_a_row = 0
            if image_id in self._counted_ids:
                return
            self._counted_ids.add(image_id)
            for key, value in counts.items():
                setattr(self.stats, key, getattr(self.stats, key) + int(value))

    @staticmethod
    def _objects(f, size):
        """(boxes (M, 4) float32 pixels, labels, crowd) of a parsed record, or a reason."""
        labels = f["image/object/class/label"]
        m, (h, w) = len(labels), size
        lengths = {k: len(f[k]) for k in BOX_KEYS + ("image/object/is_crowd",)}
        if any(n != m for k, n in lengths.items() if k != "image/object/is_crowd") \
                or lengths["image/object/is_crowd"] not in (0, m):
            return f"object features of different lengths: labels {m}, {lengths}"
        crowd = f["image/object/is_crowd"] if len(f["image/object/is_crowd"]) else np.zeros(m)
        boxes = np.stack([f[k].astype(np.float64) for k in BOX_KEYS], 1) * [w, h, w, h]
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)  # normalised -> pixels
        return boxes, labels, crowd.astype(bool)

    def decode_record(self, f, max_instances=None, with_masks=True, gt_mask_size=None,
                      with_crowd=False, max_pixels=images.DEFAULT_MAX_IMAGE_PIXELS):
        """A parsed record (numpy values of ``_feature_spec``) -> the pipeline's example dict
        (image, boxes, classes, image_id, masks, keypoints, crowd_boxes as
        ``CocoDataset.load_example``; ``gt_mask_size`` C: (M, C, C) mask crops), or None after
        ``skip`` (also for an image over ``max_pixels``, refused from its header)."""
        source_id = f["image/source_id"].decode("utf-8", "replace")
        image_id = _image_id(source_id, f["image/encoded"])
        name = f["image/filename"].decode("utf-8", "replace") or f"source_id {source_id!r}"
        image, reason = _decode_image(f["image/encoded"], int(f["image/height"]),
                                      int(f["image/width"]), max_pixels)
        if image is None:
            return self.skip(image_id, name, reason)
        size = image.shape[:2]
        objects = self._objects(f, size)
        if isinstance(objects, str):
            return self.skip(image_id, name, objects)
        boxes, labels, crowd = objects
        # under 1 pixel, or NaN coordinates (no comparison holds): left out, as degenerate
        degenerate = ~((boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1))
        keep = np.flatnonzero(~crowd & ~degenerate)
        stored = _stored_crops(f, gt_mask_size, len(labels)) if with_masks else None
        no_masks = with_masks and stored is None and len(f["image/object/mask"]) == 0
        truncated = max_instances is not None and len(keep) > max_instances
        kept = keep[:max_instances]
        try:
            classes = self.categories.to_contiguous(labels[kept]).astype(np.int32)
        except KeyError as e:
            raise ValueError(f"record {name}: label {e} is not in the category map (from "
                             f"{self.annotation_file or 'the records'})") from None
        example = {"image": image, "boxes": boxes[kept], "classes": classes,
                   "image_id": image_id}
        if with_masks:
            masks = self._masks(f, stored, kept, boxes[kept], size, gt_mask_size, no_masks)
            if isinstance(masks, str):
                return self.skip(image_id, name, masks)
            example["masks"] = masks
        if self.num_keypoints:
            example["keypoints"] = self._keypoints(f, name, size, len(labels))[kept]
            if not np.isfinite(example["keypoints"]).all():
                return self.skip(image_id, name, "non-finite keypoint coordinates")
        if with_crowd:
            example["crowd_boxes"] = boxes[crowd & ~degenerate]
        self._count_once(image_id, num_crowd=crowd.sum(),
                         num_degenerate=(~crowd & degenerate).sum(),
                         num_box_masks=len(keep) if no_masks else 0,
                         num_truncated_images=truncated)
        return example

    @staticmethod
    def _masks(f, stored, kept, boxes, size, gt_mask_size, no_masks):
        """(M', H, W) masks or (M', C, C) crops of the kept objects, or a reason to skip."""
        pngs = f["image/object/mask"]
        frames = None if gt_mask_size is None else mask_crop_boxes(boxes)
        if no_masks and frames is not None:
            return np.stack([coco.segmentation_crop(None, fr, gt_mask_size, *size, box=b)
                             for fr, b in zip(frames, boxes)]).reshape(
                                 -1, gt_mask_size, gt_mask_size)
        if no_masks:
            return _box_masks(boxes, *size)
        if stored is None and len(pngs) != len(f["image/object/class/label"]):
            return f"{len(pngs)} masks for {len(f['image/object/class/label'])} objects"
        try:
            if stored is not None:  # written by the writer's mask_crop_size: as they are
                return _decode_png_masks(stored[kept], gt_mask_size, gt_mask_size)
            return _decode_png_masks(pngs[kept], *size, frames, gt_mask_size)
        except Exception as e:  # noqa: BLE001 - a corrupt PNG: skip the record
            return f"mask: {type(e).__name__}: {e}"

    def _keypoints(self, f, name, size, m):
        """(M, Kp, 3) float32 keypoints in pixels (zeros when the record has none)."""
        kp, (h, w) = self.num_keypoints, size
        x, y, v = (f[f"image/object/keypoint/{k}"] for k in ("x", "y", "visibility"))
        if len(x) == 0:
            return np.zeros((m, kp, 3), np.float32)
        if not len(x) == len(y) == len(v) == m * kp:
            raise ValueError(f"record {name}: {len(x)} keypoint values for {m} objects, "
                             f"expected {m} x {kp} (the num_keypoints asked for)")
        kps = np.stack([x.astype(np.float64) * w, y.astype(np.float64) * h, v], axis=-1)
        return kps.reshape(m, kp, 3).astype(np.float32)  # (M * Kp, 3) -> (M, Kp, 3)

    def decode_stage(self, max_instances, with_masks, gt_mask_size=None, with_crowd=False,
                     max_pixels=images.DEFAULT_MAX_IMAGE_PIXELS):
        """tf.data map function: serialized record -> the pipeline's Python-stage dict."""
        kp = self.num_keypoints
        spec = _feature_spec(with_masks, kp, mask_crops=gt_mask_size is not None)
        keys = sorted(spec)
        names, dtypes, shapes, empty = coco.example_schema(kp, with_masks, gt_mask_size,
                                                           with_crowd)

        def decode(*values):
            values = [v.item() if np.ndim(v) == 0 and isinstance(v, np.ndarray) else v
                      for v in values]  # eager numpy_function passes 0-d arrays
            example = self.decode_record(dict(zip(keys, values)), max_instances, with_masks,
                                         gt_mask_size, with_crowd, max_pixels)
            out = example if example is not None else empty
            return [np.asarray(out[n], dtypes[n].as_numpy_dtype) for n in names] \
                + [np.bool_(example is not None)]

        def stage(serialized):
            parsed = _parse(serialized, spec)
            values = tf.numpy_function(decode, [parsed[k] for k in keys],
                                       [dtypes[n] for n in names] + [tf.bool])
            example = {n: tf.ensure_shape(v, shapes[n]) for n, v in zip(names, values)}
            example["valid"] = tf.ensure_shape(values[-1], [])
            return example

        return stage

    def record_dataset(self, training, *, shuffle_buffer=0, seed=0, filter_empty_images=True,
                       max_images=None, num_parallel_calls=None, num_shards=1, shard_index=0):
        """This worker's serialized records, before any decoding (one pass, not repeated).

        Evaluation: shards round-robin (id order for files of this writer). Training: records
        without usable GT dropped (``filter_empty_images``, on the parsed objects), files and
        records shuffled when ``shuffle_buffer`` > 0 (a buffer of that many records; files not
        shuffled with ``max_images``, which keeps the first records).

        ``num_shards`` > 1 (``pipeline.build_dataset``: one input pipeline per worker) reads
        only share ``shard_index``: file-level (``files[shard_index::num_shards]``) when there
        are at least as many files as shards, else (and with ``max_images``) index-level:
        every file is read but only the records ``shard_index`` mod ``num_shards`` of each
        file (of the first ``max_images``) are kept, before any decoding. Shares are disjoint,
        their union is every record, and a worker's share is the same in every epoch.
        """
        parallel = num_parallel_calls or tf.data.AUTOTUNE
        shuffle = training and shuffle_buffer > 0
        by_file = num_shards > 1 and max_images is None and len(self.files) >= num_shards
        by_record = num_shards > 1 and not by_file
        if by_record:
            logger.warning("%s: %d file(s) for %d input pipelines%s: each reads every file and "
                           "decodes 1 record in %d (write at least %d files to read disjoint "
                           "files)", self.file_pattern, len(self.files), num_shards,
                           " and max_images" if max_images is not None else "", num_shards,
                           num_shards)
        paths = self.files[shard_index::num_shards] if by_file else self.files
        counts = np.array([self.record_counts[p] for p in paths], np.int64)
        files = tf.data.Dataset.from_tensor_slices((paths, counts))
        if shuffle and max_images is None:
            files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        per_file = by_record and max_images is None  # the same records of each file, every epoch

        def read(path, count):  # a damaged shard: its intact prefix only (-1: all)
            file_records = tf.data.TFRecordDataset(path).take(count)
            return file_records.shard(num_shards, shard_index) if per_file else file_records
        cycle = min(len(paths), 16) if shuffle else len(paths)
        records = files.interleave(read, cycle_length=cycle, block_length=1,
                                   num_parallel_calls=parallel, deterministic=True)
        if training and filter_empty_images:
            records = records.filter(_has_instances)
        if max_images is not None:
            records = records.take(max_images)
            if by_record:
                records = records.shard(num_shards, shard_index)
        if shuffle:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return records


def load_tfrecords(file_pattern, annotation_file=None, num_keypoints=0) -> TFRecordSource:
    """Opens sharded TFRecords for ``pipeline.build_dataset``.

    Args:
        file_pattern: a glob (``tf.io.gfile.glob``: local, gs://, ...) or a list of globs.
        annotation_file: a json with COCO ``categories`` (e.g. the instances json the records
            were written from): the category map. None: the labels seen in all the records
            (one extra pass over them; a category missing from the split is then missing from
            the map and shifts the contiguous ids).
        num_keypoints: Kp > 0 reads image/object/keypoint/* (records without them: v = 0).

    Returns:
        ``TFRecordSource``.
    """
    return TFRecordSource(file_pattern, annotation_file, num_keypoints)

