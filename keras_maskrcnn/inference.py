"""Inference on raw images: resize and pad in the graph, run the model, map results back.

Shape shorthand: H0, W0 original image size; H, W resized; Hp, Wp padded; n detections kept;
Kp keypoints.

``detect`` runs one image at a time through a ``tf.function`` whose input signature has unknown
height and width, so a new image size does not retrace. Preprocessing follows torchvision's
``GeneralizedRCNNTransform``: scale = min(min_size / short side, max_size / long side), output
size floor(side * scale), bilinear (half-pixel, no antialias), zero padding bottom/right to a
multiple of ``size_divisor``. Results are mapped back to original pixels with the per-axis
ratios original / resized (torchvision's ``resize_boxes`` / ``resize_keypoints``) and masks are
pasted into the original image (``ops.masks.paste_masks``, torchvision's 1-pixel expansion).
"""
import numpy as np
import tensorflow as tf

from keras_maskrcnn.ops.masks import paste_masks


def resized_size(height, width, min_size, max_size):
    """torchvision's resize rule: (H, W) int32 scalars for an image of (height, width)."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.minimum(min_size / tf.minimum(h, w), max_size / tf.maximum(h, w))
    return (tf.cast(tf.floor(h * scale), tf.int32), tf.cast(tf.floor(w * scale), tf.int32))


def preprocess(image, min_size, max_size, size_divisor):
    """(H0, W0, 3) uint8 -> images (1, Hp, Wp, 3) float32 in [0, 255], image_sizes (1, 2)."""
    shape = tf.shape(image)
    new_h, new_w = resized_size(shape[0], shape[1], min_size, max_size)
    resized = tf.image.resize(tf.cast(image, tf.float32)[None], tf.stack([new_h, new_w]),
                              method="bilinear", antialias=False)  # (1, H, W, 3)
    pad_h = (new_h + size_divisor - 1) // size_divisor * size_divisor - new_h
    pad_w = (new_w + size_divisor - 1) // size_divisor * size_divisor - new_w
    padded = tf.pad(resized, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])  # (1, Hp, Wp, 3)
    return padded, tf.stack([new_h, new_w])[None]


def postprocess(outputs, image_sizes, original_size, mask_threshold):
    """Batch-of-one model outputs -> the first n detections in original-image pixels.

    Returns a dict: boxes (n, 4), scores (n,), classes (n,) contiguous ids, and when present
    masks (n, H0, W0) bool and keypoints (n, Kp, 3) [x, y, score].
    """
    n = outputs["num_detections"][0]
    ratio = tf.cast(original_size, tf.float32) / tf.cast(image_sizes[0], tf.float32)  # (h, w)
    boxes = outputs["boxes"][0, :n] * tf.stack([ratio[1], ratio[0], ratio[1], ratio[0]])
    result = {"boxes": boxes, "scores": outputs["scores"][0, :n],
              "classes": outputs["classes"][0, :n]}
    if "masks" in outputs:
        pasted = paste_masks(outputs["masks"][:, :n], boxes[None], original_size[0],
                             original_size[1])  # (1, n, H0, W0) probabilities
        result["masks"] = pasted[0] > mask_threshold
    if "keypoints" in outputs:
        kp = outputs["keypoints"][0, :n]  # (n, Kp, 3) in resized pixels
        result["keypoints"] = kp * tf.stack([ratio[1], ratio[0], 1.0])
    return result


def detection_function(model):
    """A traced ``(H0, W0, 3) uint8 -> dict`` function for ``model`` (cached on the model)."""
    fn = getattr(model, "_detect_fn", None)
    if fn is not None:
        return fn
    settings = model.input_settings
    threshold = model.model_settings.mask_head.threshold

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def detect_one(image):
        images, image_sizes = preprocess(image, float(settings.min_size_test),
                                         float(settings.max_size), settings.size_divisor)
        outputs = model({"images": images, "image_sizes": image_sizes}, training=False)
        return postprocess(outputs, image_sizes, tf.shape(image)[:2], threshold)

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
