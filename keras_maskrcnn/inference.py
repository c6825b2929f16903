"""Inference on raw images: resize and pad in the graph, run the model, map results back.

Shape shorthand: H0, W0 original image size; H, W resized; Hp, Wp padded; n detections kept;
Kp keypoints.

``detect`` runs one image at a time through a ``tf.function`` whose input signature has unknown
height and width, so a new image size does not retrace. Preprocessing and the mapping back are
the model's ``preprocessor`` (``keras_maskrcnn.preprocessing``: torchvision's resize rule,
bilinear without antialias, zero padding; boxes and keypoints scaled per axis by original /
resized, masks pasted into the original image with torchvision's 1-pixel expansion; YOLACT's
image-sized masks resized to the original image, its boxes made integer as the reference's
postprocess), the same code as the SavedModel export. detectron2 conventions, where configured:
the preprocessor's ``resize_style`` (its sizes, PIL-like pixels, boxes clipped after scaling)
and the model's ``mask_paste`` (``ops.masks.paste_masks_detectron2``, on >= threshold).
"""
import numpy as np
import tensorflow as tf

from keras_maskrcnn import preprocessing


def has_masks(model):
    """Whether ``model`` outputs masks: image-sized ones (YOLACT) or a mask head's."""
    return mask_type(model) == "image" or getattr(model, "mask_head", None) is not None


def has_keypoints(model):
    return getattr(model, "keypoint_head", None) is not None


def mask_type(model):
    """"box" (Sm x Sm masks inside each box, Mask R-CNN) or "image" (YOLACT)."""
    return getattr(model, "mask_type", "box")


def mask_paste(model):
    """How ``model``'s box masks are pasted: "torchvision" or "detectron2" (``ops.masks``)."""
    return getattr(model, "mask_paste", "torchvision")


def postprocess(outputs, image_sizes, original_size, mask_threshold, mask_kind="box",
                paste="torchvision", clip=False):
    """Batch-of-one model outputs -> the first n detections in original-image pixels.

    ``mask_kind`` "box": masks pasted into their boxes (``paste``: "torchvision" or
    "detectron2"); "image": boxes made integer and clamped, masks resized from prototype
    resolution (``preprocessing`` module docstring). ``clip``: boxes clipped to the original
    image after scaling (detectron2). Keypoints stay in the predictor's coordinates: the
    model's ``keypoint_coordinate_offset`` is applied only to COCO results (``evaluation``).

    Returns a dict: boxes (n, 4), scores (n,), classes (n,) contiguous ids, and when present
    masks (n, H0, W0) bool and keypoints (n, Kp, 3) [x, y, score].
    """
    n = outputs["num_detections"][0]
    keys = [k for k in ("boxes", "scores", "classes", "masks", "keypoints") if k in outputs]
    kept = {k: outputs[k][:, :n] for k in keys}  # (1, n, ...)
    kept = preprocessing.to_original_pixels(kept, image_sizes, original_size[None], clip)
    if mask_kind == "image":
        kept["boxes"] = preprocessing.integer_boxes(kept["boxes"], original_size[None])
        if "masks" in kept:
            kept["masks"] = preprocessing.full_image_masks_from_image_masks(
                kept["masks"], original_size[None], mask_threshold)  # (1, n, H0, W0)
    elif "masks" in kept:
        kept["masks"] = preprocessing.full_image_masks(
            kept["masks"], kept["boxes"], original_size[None], mask_threshold,
            paste=paste)  # (1, n, H0, W0)
    return {k: v[0] for k, v in kept.items()}


def detection_function(model):
    """A traced ``(H0, W0, 3) uint8 -> dict`` function for ``model`` (cached on the model)."""
    fn = getattr(model, "_detect_fn", None)
    if fn is not None:
        return fn
    preprocessor, threshold, kind = model.preprocessor, model.mask_threshold, mask_type(model)
    paste, clip = mask_paste(model), preprocessor.detectron2_style

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def detect_one(image):
        images, image_sizes = preprocessor(image[None])  # (1, Hp, Wp, 3), (1, 2)
        outputs = model({"images": images, "image_sizes": image_sizes}, training=False)
        return postprocess(outputs, image_sizes, tf.shape(image)[:2], threshold, kind, paste,
                           clip)

    model._detect_fn = detect_one
    return detect_one


def detect(model, images):
    """Detections for a list of (H, W, 3) uint8 RGB arrays of any sizes.

    Returns one dict per image: boxes (n, 4) xyxy float32 in original pixels, scores (n,),
    labels (n,) dataset category ids, and (for the heads the model has) masks (n, H, W) bool
    and keypoints (n, Kp, 3) [x, y, score] in original pixels.
    """
    fn = detection_function(model)
    ids = model.category_ids
    results = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detect expects (H, W, 3) uint8 RGB images, got {image.dtype} "
                             f"array of shape {image.shape}")
        out = {k: v.numpy() for k, v in fn(tf.constant(image)).items()}
        classes = out.pop("classes")
        out["labels"] = classes if ids is None else np.asarray(ids, np.int64)[classes - 1]
        results.append(out)
    return results
