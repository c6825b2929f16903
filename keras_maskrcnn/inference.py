"""Inference on raw images: resize and pad in the graph, run the model, map results back.

Shape shorthand: H0, W0 original image size; H, W resized; Hp, Wp padded; n detections kept;
Kp keypoints.

``detect`` runs one image at a time through a ``tf.function`` whose input signature has unknown
height and width, so a new image size does not retrace. Preprocessing is the model's
``preprocessor`` (``keras_maskrcnn.preprocessing``: torchvision's resize rule, bilinear without
antialias, zero padding; or detectron2's sizes and PIL-like pixels), and the mapping back is
the model's ``postprocessor`` (``keras_maskrcnn.postprocessing.Postprocessor.detections``:
boxes and keypoints scaled per axis by original / resized, masks pasted into the original
image or resized from prototype resolution, labels as dataset category ids), the same code as
every export. Keypoints are the predictor's coordinates: the COCO offset is applied by the
evaluation (``Postprocessor.coco_detections``).
"""
import numpy as np
import tensorflow as tf


def has_masks(model):
    """Whether ``model`` outputs masks (its postprocessor's ``mask_kind`` is set)."""
    return model.postprocessor.mask_kind is not None


def has_keypoints(model):
    return getattr(model, "keypoint_head", None) is not None


def mask_type(model):
    """"box" (Sm x Sm masks inside each box, Mask R-CNN), "image" (YOLACT) or None."""
    return model.postprocessor.mask_kind


def detection_function(model):
    """A traced ``(H0, W0, 3) uint8 -> dict`` function for ``model`` (cached on the model;
    ``model.category_ids = ...`` drops it)."""
    fn = getattr(model, "_detect_fn", None)
    if fn is not None:
        return fn
    preprocessor, postprocessor = model.preprocessor, model.postprocessor

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def detect_one(image):
        images, image_sizes = preprocessor(image[None])  # (1, Hp, Wp, 3), (1, 2)
        outputs = model({"images": images, "image_sizes": image_sizes}, training=False)
        return postprocessor.detections(outputs, image_sizes, tf.shape(image)[:2])

    model._detect_fn = detect_one
    return detect_one


def detect(model, images):
    """Detections for a list of (H, W, 3) uint8 RGB arrays of any sizes.

    Returns one dict per image: boxes (n, 4) xyxy float32 in original pixels, scores (n,),
    labels (n,) dataset category ids, and (for the heads the model has) masks (n, H, W) bool
    and keypoints (n, Kp, 3) [x, y, score] in original pixels (the predictor's coordinates).
    """
    fn = detection_function(model)
    results = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detect expects (H, W, 3) uint8 RGB images, got {image.dtype} "
                             f"array of shape {image.shape}")
        out = {k: v.numpy() for k, v in fn(tf.constant(image)).items()}
        out["labels"] = out["labels"].astype(np.int64)
        results.append(out)
    return results
