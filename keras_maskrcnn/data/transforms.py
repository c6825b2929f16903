"""Per-example geometric transforms in pure TensorFlow: resize, horizontal flip, padding.

Shape shorthand:
    M  GT instances of the example (before padding), Mp = max_instances after
    Kp keypoints per instance
    H, W  input image size; h, w after resizing; Hp, Wp after padding

Conventions pinned here (tests/data/test_data_transforms.py checks them, against torchvision's
``GeneralizedRCNNTransform`` / ``torch.nn.functional.interpolate`` where it has one):
    * Resize: ``keras_maskrcnn.preprocessing``'s shorter-side rule and bilinear image resize
      (torchvision's; the same code as ``detect`` and the export). Boxes and keypoints are
      scaled per axis by the actual ratios h / H and w / W (torchvision's ``resize_boxes`` / ``resize_keypoints``), so they stay
      aligned with the resized pixels.
    * Masks: ``"nearest"`` picks source pixel floor((i + 0.5) * H / h) (half-pixel centres,
      PyTorch's "nearest-exact": mask and box stay centred); ``"torchvision"`` picks
      floor(i * H / h) as torchvision's ``interpolate(mode="nearest")`` (up to one output pixel
      towards the top-left); ``"bilinear"`` resizes the 0/1 mask bilinearly and keeps >= 0.5.
    * Horizontal flip of an image of width w: x -> w - x for boxes (x1' = w - x2,
      x2' = w - x1) and keypoints (torchvision's reference ``RandomHorizontalFlip``), keypoints
      with visibility 0 are set to (0, 0, 0) and the keypoint axis is permuted by
      ``flip_indices`` (left <-> right). Flipping twice is the identity.
    * Padding is bottom/right with zeros (image, masks); GT rows are padded to max_instances
      with -1 (boxes, classes, keypoints); extra instances beyond max_instances are dropped.
    * ``crowd_boxes`` (C, 4) xyxy, when an example has them (``pipeline``'s ``with_crowd``),
      are resized and flipped exactly as ``boxes``.
"""
import tensorflow as tf

from keras_maskrcnn.preprocessing import resize_image, shorter_side_size

MASK_METHODS = ("nearest", "torchvision", "bilinear")


def resize_masks(masks, size, method="nearest"):
    """(M, H, W) 0/1 masks -> (M, h, w) uint8 with ``method`` in MASK_METHODS (see module)."""
    if method not in MASK_METHODS:
        raise ValueError(f"mask resize method must be one of {MASK_METHODS}, got {method!r}")
    stacked = tf.cast(masks, tf.uint8)[..., None]  # (M, H, W) -> (M, H, W, 1)
    if method == "nearest":  # nearest keeps uint8: no float copy of all the masks
        out = tf.image.resize(stacked, size, method="nearest")
    elif method == "torchvision":
        out = tf.compat.v1.image.resize_nearest_neighbor(stacked, size, align_corners=False,
                                                         half_pixel_centers=False)
    else:
        out = tf.image.resize(tf.cast(stacked, tf.float32), size, method="bilinear") >= 0.5
    return tf.cast(out[..., 0], tf.uint8)  # (M, h, w, 1) -> (M, h, w)


def _ratios(original_size, new_size):
    """(ratio_x, ratio_y) float32 = new / original per axis; sizes are (height, width)."""
    old = tf.cast(original_size, tf.float32)
    new = tf.cast(new_size, tf.float32)
    return new[1] / old[1], new[0] / old[0]


def resize_boxes(boxes, original_size, new_size):
    """(M, 4) xyxy boxes scaled by (w / W, h / H); sizes are (height, width)."""
    rx, ry = _ratios(original_size, new_size)
    return tf.cast(boxes, tf.float32) * tf.stack([rx, ry, rx, ry])


def resize_keypoints(keypoints, original_size, new_size):
    """(M, Kp, 3) [x, y, v] keypoints: x, y scaled by (w / W, h / H), v unchanged."""
    rx, ry = _ratios(original_size, new_size)
    return tf.cast(keypoints, tf.float32) * tf.stack([rx, ry, 1.0])


def flip_boxes(boxes, width):
    """(M, 4) xyxy boxes mirrored in an image of ``width``: (w - x2, y1, w - x1, y2)."""
    x1, y1, x2, y2 = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    width = tf.cast(width, tf.float32)
    return tf.stack([width - x2, y1, width - x1, y2], axis=-1)


def flip_keypoints(keypoints, width, flip_indices=None):
    """(M, Kp, 3) keypoints mirrored: x -> w - x, keypoint axis permuted by ``flip_indices``
    (a Python sequence of Kp ints or None), rows with v == 0 set to (0, 0, 0)."""
    keypoints = tf.cast(keypoints, tf.float32)
    if flip_indices is not None:
        keypoints = tf.gather(keypoints, list(flip_indices), axis=1)  # swap left/right
    x, y, v = tf.unstack(keypoints, axis=-1)
    flipped = tf.stack([tf.cast(width, tf.float32) - x, y, v], axis=-1)
    return tf.where((v > 0)[..., None], flipped, 0.0)


def flip_image(image):
    """(..., H, W, C) -> mirrored along W."""
    return tf.reverse(image, axis=[-2])


def flip_masks(masks):
    """(M, H, W) -> mirrored along W."""
    return tf.reverse(masks, axis=[-1])


def pad_image(image, height, width):
    """(h, w, C) -> (height, width, C), zeros at the bottom/right."""
    shape = tf.shape(image)
    return tf.pad(image, [[0, height - shape[0]], [0, width - shape[1]], [0, 0]])


def pad_masks(masks, height, width):
    """(M, h, w) -> (M, height, width), zeros at the bottom/right."""
    shape = tf.shape(masks)
    return tf.pad(masks, [[0, 0], [0, height - shape[1]], [0, width - shape[2]]])


def pad_instances(values, max_instances, pad_value=-1):
    """(M, ...) -> (max_instances, ...): first max_instances rows, then ``pad_value`` rows."""
    values = tf.convert_to_tensor(values)
    values = values[:max_instances]
    pad = max_instances - tf.shape(values)[0]
    paddings = [[0, pad]] + [[0, 0]] * (values.shape.rank - 1)
    out = tf.pad(values, paddings, constant_values=tf.cast(pad_value, values.dtype))
    return tf.ensure_shape(out, [max_instances] + values.shape[1:].as_list())


def limit_instances(values, max_instances, pad_value=-1):
    """(M, ...) -> (M', ...): the first min(M, max_instances) rows, at least one row.

    For batches padded per batch (``padded_batch`` pads the instance axis to the batch's
    largest count): an example without instances gets one ``pad_value`` row, so that a
    batch always has an instance axis of length >= 1.
    """
    values = tf.convert_to_tensor(values)[:max_instances]
    pad = tf.maximum(1 - tf.shape(values)[0], 0)
    paddings = [[0, pad]] + [[0, 0]] * (values.shape.rank - 1)
    return tf.pad(values, paddings, constant_values=tf.cast(pad_value, values.dtype))


def sample_min_size(seed, min_sizes, sampling="choice"):
    """Random short side for training scale jitter (stateless: a function of ``seed``).

    Args:
        seed: (2,) int seed for ``tf.random.stateless_uniform``.
        min_sizes: Python tuple of ints. "choice": one of them, uniformly (torchvision);
            "range": an integer uniform in [min_sizes[0], min_sizes[1]] (detectron2).

    Returns:
        () int32.
    """
    if sampling == "range":
        lo, hi = min_sizes
        return tf.random.stateless_uniform([], seed, lo, hi + 1, dtype=tf.int32)
    if sampling != "choice":
        raise ValueError(f"sampling must be 'choice' or 'range', got {sampling!r}")
    index = tf.random.stateless_uniform([], seed, 0, len(min_sizes), dtype=tf.int32)
    return tf.gather(tf.constant(min_sizes, tf.int32), index)  # pick one of the sizes


def resize_example(example, min_size, max_size, mask_method="nearest"):
    """Resizes an example dict (image (H, W, 3), boxes, optional masks / keypoints /
    crowd_boxes).

    Returns a new dict with the image float32 (h, w, 3), GT in resized pixels, and
    ``scale`` () float32 (the nominal factor; boxes use the exact per-axis ratios).
    """
    old_size = tf.shape(example["image"])[:2]
    new_h, new_w, scale = shorter_side_size(old_size[0], old_size[1], min_size, max_size)
    return resize_example_to(example, tf.stack([new_h, new_w]), scale, mask_method)


def resize_example_square(example, size, mask_method="nearest"):
    """``resize_example`` to a size x size square (YOLACT), aspect ratio not kept; ``scale``
    is the smaller of the two per-axis ratios."""
    old_size = tf.cast(tf.shape(example["image"])[:2], tf.float32)
    scale = tf.reduce_min(float(size) / old_size)
    return resize_example_to(example, tf.constant([size, size], tf.int32), scale, mask_method)


def resize_example_to(example, new_size, scale, mask_method="nearest"):
    """Resizes an example dict to ``new_size`` (2,) int32 (h, w); ``scale`` is stored."""
    out = dict(example)
    old_size = tf.shape(example["image"])[:2]
    out["image"] = resize_image(example["image"], new_size)
    out["boxes"] = resize_boxes(example["boxes"], old_size, new_size)
    if "crowd_boxes" in example:
        out["crowd_boxes"] = resize_boxes(example["crowd_boxes"], old_size, new_size)
    if "masks" in example:
        out["masks"] = resize_masks(example["masks"], new_size, mask_method)
    if "keypoints" in example:
        out["keypoints"] = resize_keypoints(example["keypoints"], old_size, new_size)
    out["scale"] = scale
    return out


def flip_example(example, flip_indices=None):
    """Horizontally flips an example dict (image, boxes, optional masks / keypoints /
    crowd_boxes)."""
    out = dict(example)
    width = tf.shape(example["image"])[1]
    out["image"] = flip_image(example["image"])
    out["boxes"] = flip_boxes(example["boxes"], width)
    if "crowd_boxes" in example:
        out["crowd_boxes"] = flip_boxes(example["crowd_boxes"], width)
    if "masks" in example:
        out["masks"] = flip_masks(example["masks"])
    if "keypoints" in example:
        out["keypoints"] = flip_keypoints(example["keypoints"], width, flip_indices)
    return out


def random_flip_example(example, seed, probability=0.5, flip_indices=None):
    """``flip_example`` with probability ``probability`` (stateless, a function of ``seed``)."""
    example = {k: tf.convert_to_tensor(v) for k, v in example.items()}
    do_flip = tf.random.stateless_uniform([], seed) < probability
    return tf.cond(do_flip, lambda: flip_example(example, flip_indices), lambda: dict(example))
