"""YOLACT's mask assembly (Bolya et al. 2019, section 3.3 "Mask Assembly"): instance masks as
a linear combination of k prototypes, cropped by a box at prototype resolution, and the
resizes between prototype and image resolution.

Conventions pinned here (tests/ops/test_prototype_masks.py, against NumPy definitions and
torch's ``F.interpolate``):
    * Mask logits = prototypes @ coefficients (per pixel, over k); masks = sigmoid(logits).
    * Crop (the reference's ``crop`` / ``sanitize_coordinates`` with ``cast=False``): with a
      box in prototype pixels (not rounded) and x1, x2 the min / max of its two x
      coordinates, keep the columns c with max(x1 - padding, 0) <= c < min(x2 + padding, W),
      likewise rows; zero elsewhere. padding = 1.
    * Resizes are bilinear with half-pixel centres and no antialiasing (torch's
      ``interpolate(mode="bilinear", align_corners=False)``), then thresholded with > 0.5:
      GT masks down to prototype / segmentation size, predicted masks up to the image.

Shape shorthand:
    B  batch size
    D  masks per image (detections, positive anchors or GT rows)
    M  GT masks per image
    Hp, Wp  prototype height and width (138 at 550)
    k  number of prototypes (32)
    H, W  image height and width
"""
import tensorflow as tf


def assemble_mask_logits(prototypes, coefficients):
    """Mask logits as the coefficient-weighted sum of the prototypes.

    Args:
        prototypes: (B, Hp, Wp, k) float.
        coefficients: (B, D, k) float.
    Returns:
        (B, D, Hp, Wp) logits in the prototypes' dtype (cast coefficients to it).
    """
    prototypes = tf.convert_to_tensor(prototypes)
    coefficients = tf.cast(coefficients, prototypes.dtype)
    return tf.einsum("bhwk,bdk->bdhw", prototypes, coefficients)


def assemble_masks(prototypes, coefficients):
    """sigmoid(prototypes @ coefficients): (B, Hp, Wp, k), (B, D, k) -> (B, D, Hp, Wp)."""
    return tf.sigmoid(assemble_mask_logits(prototypes, coefficients))


def crop_region(boxes, height, width, padding=1):
    """Where ``crop_masks`` keeps pixels.

    Args:
        boxes: (..., D, 4) float xyxy in prototype pixels (either corner order).
        height, width: Python ints or scalar int tensors, the mask size.
        padding: Python number, pixels added on each side before clamping to the mask.
    Returns:
        (..., D, height, width) bool.
    """
    boxes = tf.convert_to_tensor(boxes)
    x_a, y_a, x_b, y_b = tf.unstack(boxes, axis=-1)  # (..., D) each
    x1 = tf.maximum(tf.minimum(x_a, x_b) - padding, 0.0)
    x2 = tf.minimum(tf.maximum(x_a, x_b) + padding, tf.cast(width, boxes.dtype))
    y1 = tf.maximum(tf.minimum(y_a, y_b) - padding, 0.0)
    y2 = tf.minimum(tf.maximum(y_a, y_b) + padding, tf.cast(height, boxes.dtype))
    cols = tf.cast(tf.range(width), boxes.dtype)  # (W,)
    rows = tf.cast(tf.range(height), boxes.dtype)  # (H,)
    in_x = tf.logical_and(cols >= x1[..., None], cols < x2[..., None])  # (..., D, W)
    in_y = tf.logical_and(rows >= y1[..., None], rows < y2[..., None])  # (..., D, H)
    return tf.logical_and(in_y[..., :, None], in_x[..., None, :])  # (..., D, H, W)


def crop_masks(masks, boxes, padding=1):
    """Zero every mask outside its box (the reference's ``crop``).

    Args:
        masks: (..., D, Hp, Wp) float masks (probabilities).
        boxes: (..., D, 4) float xyxy in prototype pixels: relative coordinates times the
            prototype size, not rounded.
        padding: Python number (1).
    Returns:
        (..., D, Hp, Wp) masks, same dtype.
    """
    masks = tf.convert_to_tensor(masks)
    shape = tf.shape(masks)
    region = crop_region(tf.cast(boxes, tf.float32), shape[-2], shape[-1], padding)
    return masks * tf.cast(region, masks.dtype)


def _resize_channels(masks, size):
    """Bilinear half-pixel resize, no antialias, of (..., D, h, w) -> float32 (..., D, H, W)."""
    masks = tf.convert_to_tensor(masks)
    if masks.dtype == tf.bool:
        masks = tf.cast(masks, tf.uint8)
    rank = masks.shape.rank
    if rank == 3:
        return _resize_channels(masks[None], size)[0]
    if rank != 4:
        raise ValueError(f"masks must be (D, h, w) or (B, D, h, w), got rank {rank}")
    images = tf.transpose(masks, [0, 2, 3, 1])  # (B, D, h, w) -> (B, h, w, D): D as channels
    # one spare channel: the resize kernel rejects D = 0
    spare = tf.zeros(tf.concat([tf.shape(images)[:3], [1]], 0), images.dtype)  # (B, h, w, 1)
    images = tf.concat([images, spare], axis=-1)  # (B, h, w, D + 1)
    images = tf.image.resize(images, size, method="bilinear", antialias=False)[..., :-1]
    return tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])  # -> (B, D, H, W)


def downsample_gt_masks(masks, size):
    """Binarised GT masks at prototype / segmentation size (the reference's
    ``interpolate(bilinear, align_corners=False).gt(0.5)``).

    Args:
        masks: (B, M, H, W) or (M, H, W) 0/1 masks (any numeric dtype).
        size: (height, width) Python ints or int tensors.
    Returns:
        float32 0/1 masks of shape (B, M, height, width) (or (M, height, width)); no gradient.
    """
    masks = tf.stop_gradient(tf.convert_to_tensor(masks))
    if masks.shape.rank == 3:
        return downsample_gt_masks(masks[None], size)[0]

    def one_image(image_masks):  # (M, H, W) -> (M, h, w)
        return tf.cast(_resize_channels(image_masks, size) > 0.5, tf.float32)

    # one image at a time: only its float copy of the full-size masks is alive at once
    parallel = None if tf.executing_eagerly() else 2  # eagerly: one at a time, no warning
    return tf.map_fn(one_image, masks, fn_output_signature=tf.float32,
                     parallel_iterations=parallel)


def masks_to_image(masks, size, threshold=0.5):
    """Predicted masks up to the image and binarised (the reference's ``postprocess``).

    Args:
        masks: (D, Hp, Wp) or (B, D, Hp, Wp) float probabilities (already cropped).
        size: (height, width) of the output, e.g. the original image (this also undoes the
            square resize).
        threshold: a pixel is on when its resized value is > threshold (0.5).
    Returns:
        bool masks (D, height, width) (or (B, D, height, width)): resized value > threshold.
    """
    return _resize_channels(masks, size) > threshold
