"""The one contract from raw model outputs to user results, owned by the model.

Every path that turns a detector's padded inference outputs into results calls the model's
``postprocessor`` (a ``Postprocessor``): ``detect`` (``keras_maskrcnn.inference``), COCO
evaluation (``keras_maskrcnn.evaluation``), and the exports (SavedModel, ONNX, LiteRT:
``keras_maskrcnn.export``). It holds every setting of that mapping, and nothing else reads
them: mask kind and threshold, paste style, box clipping, the keypoint coordinate offset of
COCO results, and the dataset category ids and names of the contiguous classes.

Conventions pinned here (tests/test_postprocessing.py checks each):
    * Boxes and keypoints are scaled per axis from resized-input to original pixels
      (``preprocessing.to_original_pixels``); ``clip_boxes`` (detectron2's
      ``detector_postprocess``) clips boxes to the original image.
    * ``mask_kind`` "box" (Mask R-CNN: S x S probabilities inside each box), pasted with
      ``paste`` ("torchvision": 1-pixel expansion, on > threshold; "detectron2": pixel-centre
      sampling, on >= threshold); "image" (YOLACT: probabilities over the whole input at
      prototype resolution, resized to the original image, on > threshold), whose boxes are
      made integer as the reference's ``postprocess`` (``preprocessing.integer_boxes``);
      None: no masks.
    * Classes: contiguous 1..K-1 inside the model (0 = padding); results carry dataset
      category ids, ``category_ids[c - 1]`` (identity when None); padding stays 0.
    * ``keypoint_offset`` (detectron2's -0.5) is added to keypoint x, y only in COCO results
      (``coco_detections``): ``detect`` and the exports return the predictor's coordinates.
      Absent keypoints (score -inf) are left alone.

Shape shorthand: B images; D detections per image (static); n kept detections; H, W resized;
H0, W0 original; Hm, Wm largest (H0, W0) of a batch; S RoI mask size; Hp, Wp prototype size;
Kp keypoints.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_maskrcnn import preprocessing

MASK_KINDS = ("box", "image", None)
PASTE_STYLES = ("torchvision", "detectron2")


@dataclasses.dataclass(frozen=True)
class Postprocessor:
    """Settings of the mapping from model outputs to results (primitive fields; see module).

    Build one with the builders (``builders.build_postprocessor``); replace a field with
    ``dataclasses.replace`` (the model's ``category_ids`` / ``category_names`` setters do).
    """
    mask_kind: Optional[str] = "box"
    mask_threshold: float = 0.5
    paste: str = "torchvision"
    clip_boxes: bool = False
    keypoint_offset: float = 0.0
    category_ids: Optional[Tuple[int, ...]] = None
    category_names: Optional[Tuple[str, ...]] = None

    def __post_init__(self):
        if self.mask_kind not in MASK_KINDS:
            raise ValueError(f"mask_kind must be one of {MASK_KINDS}, got {self.mask_kind!r}")
        if self.paste not in PASTE_STYLES:
            raise ValueError(f"paste must be one of {PASTE_STYLES}, got {self.paste!r}")
        for name in ("category_ids", "category_names"):
            value = getattr(self, name)
            if value is not None:
                cast = int if name == "category_ids" else str
                object.__setattr__(self, name, tuple(cast(v) for v in value))
        ids, names = self.category_ids, self.category_names
        if ids is not None and names is not None and len(ids) != len(names):
            raise ValueError(f"category_names has {len(names)} names for {len(ids)} "
                             "category_ids")

    def check_num_classes(self, num_classes):
        """Raises ValueError unless ids / names have one entry per class 1..K-1."""
        for name in ("category_ids", "category_names"):
            value = getattr(self, name)
            if value is not None and len(value) != num_classes - 1:
                raise ValueError(f"{name} has {len(value)} entries; the model has "
                                 f"{num_classes - 1} classes besides the background")

    # ------------------------------------------------------------------------ categories
    def dataset_ids(self, classes):
        """Contiguous classes (any shape, int, 0 = padding) -> dataset category ids (int32,
        0 stays 0), in the graph."""
        classes = tf.cast(classes, tf.int32)
        if self.category_ids is None:
            return classes
        lookup = tf.constant((0,) + self.category_ids, tf.int32)  # (K,)
        return tf.gather(lookup, classes)

    def category_name(self, label):
        """The name of dataset id ``label`` (str), or str(label) without names."""
        if self.category_names is None:
            return str(label)
        ids = self.category_ids or tuple(range(1, len(self.category_names) + 1))
        return dict(zip(ids, self.category_names)).get(int(label), str(label))

    # ------------------------------------------------------------------------- boxes, keypoints
    def to_original(self, outputs, image_sizes, original_sizes):
        """Boxes and keypoints of batched outputs in original pixels (other keys unchanged).

        Args:
            outputs: dict boxes (B, D, 4), optionally keypoints (B, D, Kp, 3), in resized-input
                pixels. image_sizes: (B, 2) int resized (H, W); original_sizes: (B, 2) (H0, W0).

        Returns:
            a new dict: boxes (B, D, 4) scaled (clipped, or made integer for image masks),
            keypoints (B, D, Kp, 3) scaled.
        """
        result = preprocessing.to_original_pixels(outputs, image_sizes, original_sizes,
                                                  self.clip_boxes)
        if self.mask_kind == "image":
            result["boxes"] = preprocessing.integer_boxes(result["boxes"], original_sizes)
        return result

    def coco_keypoints(self, keypoints):
        """(n, Kp, 3) numpy keypoints of ``detect`` -> COCO results' coordinates: x, y plus
        ``keypoint_offset`` where the score is finite (absent ones untouched)."""
        keypoints = np.array(keypoints, np.float64)
        present = np.isfinite(keypoints[..., 2])  # (n, Kp)
        keypoints[..., :2] += np.where(present, self.keypoint_offset, 0.0)[..., None]
        return keypoints

    def coco_detections(self, detections):
        """A ``detect`` result dict as COCO results see it (``evaluation``): keypoints
        shifted by ``keypoint_offset`` (``coco_keypoints``); other fields as given."""
        if "keypoints" not in detections or not self.keypoint_offset:
            return detections
        return dict(detections, keypoints=self.coco_keypoints(detections["keypoints"]))

    # ---------------------------------------------------------------------------------- masks
    def paste_masks(self, masks, boxes, original_sizes, num_detections=None):
        """Model masks -> bool masks on a common (Hm, Wm) canvas of original pixels.

        Args:
            masks: (B, D, S, S) box masks or (B, D, Hp, Wp) image masks, probabilities.
            boxes: (B, D, 4) original pixels (``to_original``). original_sizes: (B, 2) int32.
            num_detections: (B,) int32 or None (every row is a detection).

        Returns:
            (B, D, Hm, Wm) bool (False past ``num_detections`` and beyond each image).
        """
        if self.mask_kind == "image":
            return preprocessing.full_image_masks_from_image_masks(
                masks, original_sizes, self.mask_threshold, num_detections)
        return preprocessing.full_image_masks(masks, boxes, original_sizes, self.mask_threshold,
                                              num_detections, self.paste)

    # -------------------------------------------------------------------------------- results
    def detections(self, outputs, image_sizes, original_size):
        """Batch-of-one outputs -> the first n detections of ``detect`` (in the graph).

        Args:
            outputs: the model's inference dict for one image (B = 1).
            image_sizes: (1, 2) resized (H, W); original_size: (2,) int32 (H0, W0).

        Returns:
            dict boxes (n, 4) original pixels, scores (n,), labels (n,) int32 dataset ids, and
            when present masks (n, H0, W0) bool, keypoints (n, Kp, 3) [x, y, score].
        """
        n = outputs["num_detections"][0]
        keys = [k for k in ("boxes", "scores", "classes", "masks", "keypoints") if k in outputs]
        kept = {k: outputs[k][:, :n] for k in keys}  # (1, n, ...)
        sizes = tf.cast(original_size, tf.int32)[None]  # (1, 2)
        kept = self.to_original(kept, image_sizes, sizes)
        if "masks" in kept and self.mask_kind is not None:
            kept["masks"] = self.paste_masks(kept["masks"], kept["boxes"], sizes)
        kept["labels"] = self.dataset_ids(kept.pop("classes"))
        return {k: v[0] for k, v in kept.items()}

    def serving_outputs(self, outputs, image_sizes, original_sizes, full_masks=False):
        """Batched outputs -> the exports' outputs, padding rows zeroed (``export`` docstring).

        Args:
            outputs: boxes (B, D, 4), scores (B, D), classes (B, D) contiguous,
                num_detections (B,), optional masks, keypoints (B, D, Kp, 3); input pixels.
            image_sizes: (B, 2) int32 resized (H, W); original_sizes: (B, 2) int32 (H0, W0).
            full_masks: also ``full_masks`` (B, D, Hm, Wm) uint8 pasted masks.

        Returns:
            dict boxes (B, D, 4), scores (B, D), classes (B, D) int32 dataset ids,
            num_detections (B,) int32, original_sizes (B, 2) int32, and as present masks
            (B, D, ...) float32 (the model's kind), keypoints (B, D, Kp, 3), full_masks.
        """
        num = tf.cast(outputs["num_detections"], tf.int32)
        valid = tf.range(tf.shape(outputs["scores"])[1])[None] < num[:, None]  # (B, D)
        original_sizes = tf.cast(original_sizes, tf.int32)
        scaled = self.to_original(outputs, image_sizes, original_sizes)

        def keep(x):  # zero the padding rows of a (B, D, ...) tensor
            shape = tf.concat([tf.shape(valid), tf.ones_like(tf.shape(x)[2:])], 0)
            return tf.where(tf.reshape(valid, shape), x, tf.zeros_like(x))

        result = {"boxes": keep(scaled["boxes"]), "scores": keep(outputs["scores"]),
                  "classes": keep(self.dataset_ids(outputs["classes"])),
                  "num_detections": num, "original_sizes": original_sizes}
        if "masks" in outputs:
            result["masks"] = keep(tf.cast(outputs["masks"], tf.float32))
        if "keypoints" in outputs:
            result["keypoints"] = keep(scaled["keypoints"])
        if full_masks:
            result["full_masks"] = tf.cast(self.paste_masks(
                result["masks"], result["boxes"], original_sizes, num), tf.uint8)
        return result
