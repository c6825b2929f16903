"""COCO instances / person_keypoints JSON -> per-image ground truth (numpy, Python side).

Shape shorthand:
    M  GT instances of one image (crowd regions and degenerate boxes removed)
    Kp keypoints per instance
    H, W  original image height and width

Conventions pinned here (tests/data/test_data_coco.py checks them):
    * Category ids: the dataset's ids sorted ascending map to contiguous ids 1..K (0 is the
      background inside the model); ``CategoryMap`` maps both ways and records which
      categories declare keypoints (a non-empty ``keypoints`` list, e.g. only "person").
    * Boxes: COCO ``bbox`` [x, y, w, h] -> xyxy float32, clipped to the image (as torchvision's
      reference ``ConvertCocoPolysToMask``); boxes with width or height < 1 pixel after that are
      dropped and counted in ``stats.num_degenerate``.
    * ``iscrowd=1`` regions are left out of the GT (torchvision and detectron2 ignore them in
      training; COCOeval reads them from the JSON itself); counted in ``stats.num_crowd``.
      Their boxes (clipped, under 1 pixel dropped, as above) are kept apart in
      ``ImageRecord.crowd_boxes`` and given only to who asks (``with_crowd``: YOLACT's
      matching makes anchors they cover neutral).
    * Images without (remaining) annotations stay in the dataset as negatives.
    * Masks: polygons, compressed RLE (``counts`` a string) and uncompressed RLE (``counts`` a
      list) are decoded with pycocotools. An annotation without a ``segmentation`` key gets
      its box as the mask (``stats.num_box_masks``). Full masks are (M, H, W); cropped masks
      (``gt_mask_size`` C) are (M, C, C) crops of the frames ``ops.masks.mask_crop_boxes`` gives
      (``segmentation_crop``): polygons are rasterised in the crop frame (no full-image mask),
      RLE is decoded and sampled at the crop pixel centres; the parts of a crop outside the
      image are 0, as the full mask is there.
    * Keypoints: (M, Kp, 3) float32 [x, y, v] as written in the file (no +0.5 shift, as
      torchvision); annotations without ``keypoints`` get zeros (v = 0).
    * Reading and validation are ``coco_json``'s: file-level problems raise
      ``coco_json.CocoFormatError``; an annotation with a defect (a box of size <= 0 or
      outside the image, a polygon of < 3 points, an empty segmentation, an unknown image or
      category, a malformed field) is left out and listed in ``CocoDataset.report`` (lenient,
      the default), or raises naming the file, the annotation id and the field (``strict``).
"""
import dataclasses
import functools
import logging
import os
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils

from keras_maskrcnn.data import coco_json, images
from keras_maskrcnn.ops.masks import mask_crop_boxes

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids <-> contiguous ids 1..K (0 = background).

    ``dataset_ids[i]`` is the dataset id of contiguous id ``i + 1``; ``names`` likewise.
    ``keypoint_ids``: dataset ids of the categories whose COCO ``keypoints`` list is non-empty
    (metadata: not compared, the mapping is ids and names).
    """

    dataset_ids: Tuple[int, ...]
    names: Tuple[str, ...]
    keypoint_ids: Tuple[int, ...] = dataclasses.field(default=(), compare=False)

    @classmethod
    def from_categories(cls, categories):
        """From COCO ``categories`` dicts (any order): sorted by dataset id."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in ordered), tuple(c["name"] for c in ordered),
                   tuple(c["id"] for c in ordered if c.get("keypoints")))

    @property
    def keypoint_category_ids(self) -> Optional[Tuple[int, ...]]:
        """``keypoint_ids`` when only some categories have keypoints (the value of
        ``model.keypoint_head.category_ids``), else None (all of them, or none declared)."""
        if self.keypoint_ids and len(self.keypoint_ids) < len(self.dataset_ids):
            return self.keypoint_ids
        return None

    @property
    def num_classes(self) -> int:
        """Number of classes INCLUDING background (K + 1), as ``model.num_classes``."""
        return len(self.dataset_ids) + 1

    @functools.cached_property
    def _lookup(self) -> Dict[int, int]:
        return {d: i + 1 for i, d in enumerate(self.dataset_ids)}

    def to_contiguous(self, dataset_ids):
        """Dataset ids (int or array) -> contiguous ids 1..K. Raises KeyError if unknown."""
        if isinstance(dataset_ids, int) or np.ndim(dataset_ids) == 0:
            return self._lookup[int(dataset_ids)]
        ids = np.asarray(dataset_ids)
        out = np.array([self._lookup[int(d)] for d in ids.ravel()], np.int32).reshape(ids.shape)
        return out

    def to_dataset(self, contiguous_ids):
        """Contiguous ids 1..K (int or array) -> dataset ids. Raises IndexError if not in 1..K."""
        ids = np.asarray(contiguous_ids)
        if ids.size and (ids.min() < 1 or ids.max() > len(self.dataset_ids)):
            raise IndexError(f"contiguous ids must be in 1..{len(self.dataset_ids)}, got "
                             f"{ids.min()}..{ids.max()}")
        out = np.asarray(self.dataset_ids, np.int64)[ids - 1]  # gather: contiguous -> dataset
        return int(out) if np.ndim(contiguous_ids) == 0 else out

    def name(self, contiguous_id: int) -> str:
        return self.names[contiguous_id - 1]


@dataclasses.dataclass
class LoadStats:
    """Counts of what the loader (and the pipeline reading images) dropped or changed."""

    num_crowd: int = 0
    num_degenerate: int = 0
    num_box_masks: int = 0
    num_truncated_images: int = 0  # images with more than max_instances GT (extra dropped)
    skipped_images: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False,
                                             compare=False)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_images)


@dataclasses.dataclass
class ImageRecord:
    """One image: metadata and its GT in original pixels (M may be 0)."""

    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray  # (M, 4) float32 xyxy
    classes: np.ndarray  # (M,) int32 contiguous 1..K
    segmentations: list  # M raw COCO segmentations (None: use the box)
    keypoints: Optional[np.ndarray]  # (M, Kp, 3) float32, None when Kp = 0
    crowd_boxes: Optional[np.ndarray] = None  # (C, 4) float32 xyxy of the crowd regions


def decode_segmentation(segmentation, height, width):
    """A COCO segmentation (polygon list, RLE dict with string or list counts) -> mask.

    Args:
        segmentation: as in the JSON.
        height, width: image size.

    Returns:
        (H, W) uint8 0/1 mask (polygons are unioned).
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed -> compressed
    else:
        rle = dict(segmentation, counts=segmentation["counts"].encode("ascii"))
    return mask_utils.decode(rle)


def _crop_centres(frame, size, height, width):
    """Crop pixel centres of a frame (4,) xyxy in image pixels: x (C,), y (C,) continuous
    coordinates, and the (C, C) bool mask of centres inside the image."""
    x1, y1, x2, y2 = (float(v) for v in frame)
    steps = (np.arange(size) + 0.5) / size
    xs, ys = x1 + steps * (x2 - x1), y1 + steps * (y2 - y1)
    inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    return xs, ys, inside


def sample_mask_crop(mask, frame, size):
    """(H, W) 0/1 mask -> (C, C) uint8 crop of ``frame``: the pixel under each crop pixel
    centre (nearest), 0 outside the image."""
    height, width = mask.shape
    xs, ys, inside = _crop_centres(frame, size, height, width)
    cols = np.clip(np.floor(xs).astype(np.int64), 0, width - 1)
    rows = np.clip(np.floor(ys).astype(np.int64), 0, height - 1)
    return (mask[rows[:, None], cols[None, :]] * inside).astype(np.uint8)


def _raster_axis(start, end, size, limit):
    """One axis of the grid a polygon is rasterised on for a crop of [start, end]: image
    pixels (an integer-aligned window) when a crop pixel is smaller than an image pixel, so
    the crop repeats the full mask's pixels; else the crop's own pixels.

    Returns (origin, scale, length, index): raster coordinate = (x - origin) * scale over
    ``length`` cells, and the (C,) raster cell under each crop pixel centre.
    """
    centres = start + (np.arange(size) + 0.5) / size * (end - start)
    if end - start <= size:
        first = max(int(np.floor(start)), 0)
        last = min(int(np.ceil(end)), limit)
        index = np.clip(np.floor(centres).astype(np.int64) - first, 0, max(last - first, 1) - 1)
        return float(first), 1.0, max(last - first, 1), index
    return start, size / (end - start), size, np.arange(size)


def segmentation_crop(segmentation, frame, size, height, width, box=None):
    """A COCO segmentation rasterised in a crop frame (module docstring).

    Polygons are rasterised on a small grid of their own (``_raster_axis``: the crop's pixels,
    or an integer-aligned window of image pixels on an axis where the crop is finer than the
    image), never on the full image.

    Args:
        segmentation: as in the JSON, or None: the integer-rounded ``box`` fills the mask (as
            ``CocoDataset.instance_masks``).
        frame: (4,) xyxy crop region in image pixels; size: C.
        height, width: image size.

    Returns:
        (C, C) uint8 0/1.
    """
    xs, ys, inside = _crop_centres(frame, size, height, width)
    if segmentation is None:
        x1, y1, x2, y2 = np.round(box).astype(int)
        crop = ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
    elif isinstance(segmentation, list):  # polygons: moved onto the crop's grid
        polygons = [np.asarray(p, np.float64).reshape(-1, 2) for p in segmentation
                    if len(p) >= 6]
        if not polygons:
            return np.zeros((size, size), np.uint8)
        x0, sx, nx, cols = _raster_axis(float(frame[0]), float(frame[2]), size, width)
        y0, sy, ny, rows = _raster_axis(float(frame[1]), float(frame[3]), size, height)
        moved = [((p - [x0, y0]) * [sx, sy]).ravel().tolist() for p in polygons]
        raster = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(moved, ny, nx)))
        crop = raster[rows[:, None], cols[None, :]]
    else:  # RLE: no polygon to move; decode and sample
        return sample_mask_crop(decode_segmentation(segmentation, height, width), frame, size)
    return (crop * inside).astype(np.uint8)


# ----------------------------------------------------------------------------- loading
def _clipped_boxes(anns, image):
    """(boxes (n, 4) float32 xyxy clipped to the image, keep (n,) bool: >= 1 pixel each way)."""
    boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    limits = [image["width"], image["height"]] * 2
    boxes = np.clip(boxes, 0, limits).astype(np.float32)
    return boxes, (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)


def _image_gt(anns, image, categories, num_keypoints, stats):
    """Non-crowd, non-degenerate GT of one image as (boxes, classes, segmentations, kps,
    crowd boxes (C, 4): the crowd regions' boxes, degenerate ones dropped)."""
    kept = [a for a in anns if not a.get("iscrowd", 0)]
    stats.num_crowd += len(anns) - len(kept)
    crowd_boxes, crowd_keep = _clipped_boxes([a for a in anns if a.get("iscrowd", 0)], image)
    boxes, keep = _clipped_boxes(kept, image)
    stats.num_degenerate += int((~keep).sum())
    kept = [a for a, k in zip(kept, keep) if k]
    segms = [a.get("segmentation") or None for a in kept]
    stats.num_box_masks += sum(s is None for s in segms)
    classes = np.array([categories.to_contiguous(a["category_id"]) for a in kept], np.int32)
    kps = None
    if num_keypoints:
        kps = [a.get("keypoints") or [0.0] * 3 * num_keypoints for a in kept]
        kps = np.array(kps, np.float32).reshape(-1, num_keypoints, 3)  # (M, 3Kp) -> (M, Kp, 3)
    return boxes[keep], classes, segms, kps, crowd_boxes[crowd_keep]


class CocoDataset:
    """A loaded, validated COCO annotation file (annotations with a defect left out, listed in
    ``report``; ``strict``: an error instead).

    Attributes:
        annotation_file, image_dir: where it came from.
        images: list of ``ImageRecord``, sorted by image id.
        categories: ``CategoryMap``.
        keypoint_names, skeleton: from the first category that has them (0-based skeleton),
            else empty tuples.
        num_keypoints: Kp requested at load (0: no keypoints).
        stats: ``LoadStats`` (updated by the pipeline as it skips unreadable images).
        report: ``coco_json.AnnotationReport``: the annotations left out for a defect (the
            caller prints ``report.summary()`` once, where its run starts).
    """

    def __init__(self, annotation_file, image_dir, num_keypoints=0, strict=False):
        self.annotation_file, self.image_dir = annotation_file, image_dir
        self.num_keypoints = num_keypoints
        self.stats = LoadStats()
        self._skipped_ids = set()
        parsed = coco_json.read_coco_json(annotation_file, num_keypoints, strict)
        self.report = parsed.report
        image_table, category_table = parsed.images, parsed.categories
        self.categories = CategoryMap.from_categories(category_table.values())
        self.images = []
        for image_id in sorted(image_table):
            image = image_table[image_id]
            gt = _image_gt(parsed.annotations[image_id], image, self.categories,
                           num_keypoints, self.stats)
            path = os.path.join(image_dir, image["file_name"])
            self.images.append(ImageRecord(image_id, path, image["height"], image["width"], *gt))
        with_kp = [c for c in category_table.values() if c.get("keypoints")]
        self.keypoint_names = tuple(with_kp[0]["keypoints"]) if with_kp else ()
        self.skeleton = tuple((a - 1, b - 1) for a, b in with_kp[0].get("skeleton", ())) \
            if with_kp else ()
        s = self.stats
        if s.num_crowd or s.num_degenerate or s.num_box_masks:
            logger.info("%s: %d images; left out %d crowd regions and %d boxes smaller than "
                        "1 pixel; %d annotations without segmentation use their box",
                        annotation_file, len(self.images), s.num_crowd, s.num_degenerate,
                        s.num_box_masks)

    def __len__(self):
        return len(self.images)

    def num_instances(self) -> np.ndarray:
        """(num images,) int: GT instances per image (crowd and degenerate excluded)."""
        return np.array([len(r.classes) for r in self.images], np.int64)

    def instance_masks(self, record: ImageRecord, count: Optional[int] = None):
        """(M, H, W) uint8 masks of the first ``count`` (default all) instances of an image."""
        segms = record.segmentations[:count]
        masks = np.zeros((len(segms), record.height, record.width), np.uint8)
        for i, segm in enumerate(segms):
            if segm is None:  # no segmentation: fill the (integer-rounded) box
                x1, y1, x2, y2 = np.round(record.boxes[i]).astype(int)
                masks[i, y1:y2, x1:x2] = 1
            else:
                masks[i] = decode_segmentation(segm, record.height, record.width)
        return masks

    def instance_mask_crops(self, record: ImageRecord, size: int, count: Optional[int] = None):
        """(M, C, C) uint8 crops (``segmentation_crop``) of the first ``count`` instances."""
        segms = record.segmentations[:count]
        frames = mask_crop_boxes(record.boxes[:len(segms)])
        crops = np.zeros((len(segms), size, size), np.uint8)
        for i, segm in enumerate(segms):
            crops[i] = segmentation_crop(segm, frames[i], size, record.height, record.width,
                                         record.boxes[i])
        return crops

    def skip(self, record: ImageRecord, reason: str):
        """Counts an image the pipeline could not use and names it in a warning (once: later
        epochs skip it silently)."""
        with self.stats.lock:
            if record.image_id in self._skipped_ids:
                return
            self._skipped_ids.add(record.image_id)
            self.stats.skipped_images.append((record.path, reason))
        logger.warning("skipping image %s (id %d): %s", record.path, record.image_id, reason)

    def load_example(self, index: int, max_instances: Optional[int] = None,
                     with_masks: bool = True, gt_mask_size: Optional[int] = None,
                     with_crowd: bool = False,
                     max_pixels: Optional[int] = images.DEFAULT_MAX_IMAGE_PIXELS):
        """Reads image ``index`` and its GT. Returns None (after ``skip``) if unreadable or
        over ``max_pixels`` (``images.read_image``; ``input.max_image_pixels``).

        Returns:
            dict: image (H, W, 3) uint8 RGB, boxes (M, 4) float32 xyxy, classes (M,) int32,
            masks (M, H, W) uint8, or (M, C, C) crops when ``gt_mask_size`` is C (absent when
            ``with_masks`` is False), keypoints (M, Kp, 3) float32 (when Kp > 0), crowd_boxes
            (C, 4) float32 xyxy (only when ``with_crowd``), image_id int; M <= max_instances
            (the first ones in file order are kept, counted in ``stats.num_truncated_images``).
        """
        record = self.images[index]
        if record.image_id in self._skipped_ids:
            return None
        image = read_image(record, self.skip, max_pixels)
        if image is None:
            return None
        count = len(record.classes)
        if max_instances is not None and count > max_instances:
            with self.stats.lock:
                self.stats.num_truncated_images += 1
            count = max_instances
        example = {"image": image, "boxes": record.boxes[:count],
                   "classes": record.classes[:count], "image_id": record.image_id}
        if with_masks:
            try:
                example["masks"] = self.instance_masks(record, count) if gt_mask_size is None \
                    else self.instance_mask_crops(record, gt_mask_size, count)
            except Exception as e:  # noqa: BLE001 - e.g. a corrupt compressed RLE string
                self.skip(record, f"cannot decode a segmentation: {type(e).__name__}: {e}")
                return None
        if self.num_keypoints:
            example["keypoints"] = record.keypoints[:count]
        if with_crowd:
            example["crowd_boxes"] = record.crowd_boxes
        return example


def read_image(record: ImageRecord, on_error, max_pixels=images.DEFAULT_MAX_IMAGE_PIXELS):
    """Decodes an image file to (H, W, 3) uint8 RGB with ``images.read_image`` (the one
    reader); calls ``on_error(record, reason)`` and returns None when it is missing,
    unreadable, truncated, over ``max_pixels`` (checked from the header, before decoding) or
    of another size than the annotation file says."""
    try:  # PIL decodes with the GIL released: fine in tf.data threads
        return images.read_image(record.path, max_pixels, (record.height, record.width))
    except images.ImageError as e:
        on_error(record, str(e).removeprefix(f"{record.path}: "))
        return None


def example_schema(num_keypoints, with_masks, gt_mask_size=None, with_crowd=False):
    """The Python decoding stage's output: (names, tf dtypes, shapes, stand-in when skipped).

    Shared by the COCO and TFRecord readers so both feed the pipeline the same structure.
    ``gt_mask_size`` C: masks are (M, C, C) crops; None: (M, H, W) full masks.
    """
    kp = num_keypoints
    names = ["image", "boxes", "classes", "image_id"] + ["masks"] * with_masks \
        + ["keypoints"] * bool(kp) + ["crowd_boxes"] * with_crowd
    dtypes = {"image": tf.uint8, "boxes": tf.float32, "classes": tf.int32,
              "image_id": tf.int64, "masks": tf.uint8, "keypoints": tf.float32,
              "crowd_boxes": tf.float32}
    shapes = {"image": [None, None, 3], "boxes": [None, 4], "classes": [None],
              "image_id": [], "masks": [None, gt_mask_size, gt_mask_size],
              "keypoints": [None, kp, 3], "crowd_boxes": [None, 4]}
    crop = gt_mask_size or 1
    empty = {"image": np.zeros((1, 1, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
             "classes": np.zeros((0,), np.int32), "image_id": np.int64(-1),
             "masks": np.zeros((0, crop, crop), np.uint8), "keypoints": np.zeros((0, kp, 3),
                                                                              np.float32),
             "crowd_boxes": np.zeros((0, 4), np.float32)}
    return names, dtypes, shapes, empty


def load_coco(annotation_file, image_dir, num_keypoints=0, strict=False) -> CocoDataset:
    """Loads and validates a COCO instances / person_keypoints JSON.

    Args:
        annotation_file: path of the JSON.
        image_dir: directory the images' ``file_name`` are relative to.
        num_keypoints: Kp; > 0 reads and checks the annotations' ``keypoints`` (3 * Kp numbers).
        strict: False (default): annotations with a defect are left out and listed in the
            dataset's ``report``; True: the first one raises ``coco_json.CocoFormatError``
            ("<file>: annotation <id>: <field>: <problem>"), as ``data.strict: true``.

    Returns:
        ``CocoDataset``. Raises ``coco_json.CocoFormatError`` naming the file and field on
        file-level problems (malformed JSON, missing sections, bad image or category records).
    """
    return CocoDataset(os.fspath(annotation_file), os.fspath(image_dir), num_keypoints, strict)
