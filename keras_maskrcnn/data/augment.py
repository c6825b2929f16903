"""SSD-style training augmentation, as YOLACT trains (Bolya et al. 2019; reference code
``SSDAugmentation``): the transforms of SSD (Liu et al. 2016, sec. 2.2 "Data
augmentation" and sec. 3.6 "zoom out"), as per-example pure-TF transforms for
``tf.data.Dataset.map``. The reference's settings differ from the SSD paper's: min-IoU modes
without 0.5, crop sides from 0.3 (not 0.1) of the image, canvas up to 4x (not 16x).

Each transform takes an example dict in the pipeline's format (``coco.example_schema``):
image (H, W, 3) uint8 or float RGB, boxes (M, 4) float32 xyxy pixels, classes (M,), and when
present masks (M, H, W) uint8 0/1, keypoints (M, Kp, 3) [x, y, v], is_crowd (M,) (crowd rows
among the instances), crowd_boxes (C, 4) xyxy (crowd regions kept apart: ``pipeline``'s
``with_crowd``); other keys (image_id, ...) pass through. Randomness is stateless: every
draw is a function of the (2,) int ``seed`` (split per step with ``stateless_split``), so an
output is fixed by its seed.

Conventions pinned here (tests/data/test_data_augment.py checks them), following the reference
(dbolya/yolact ``SSDAugmentation``) unless said otherwise:
    * Order: float pixels, photometric distortion, expand, IoU-constrained crop, mirror,
      drop of small boxes. The image leaves as float32 RGB 0..255 of the augmented size;
      the pipeline's resize and padding follow.
    * Photometric: brightness (p 0.5, add U(-32, 32)), then with p 0.5 either contrast first
      or last around the HSV step: contrast (p 0.5, multiply by U(0.5, 1.5)); HSV step: to HSV,
      saturation (p 0.5, S x U(0.5, 1.5)), hue (p 0.5, H + U(-18, 18) degrees, wrapped to
      [0, 360)), back to RGB. The reference's channel swap ("lighting noise") is disabled
      there and is left out. Departure: the result is clipped to [0, 255] (the reference
      leaves over- and undershoots); TF's HSV gives S = 0 where V <= 0 (cv2 divides by |V|).
    * Expand (p 0.5): ratio r ~ U(1, max_ratio), canvas (floor(H r), floor(W r)) filled with
      the mean pixel (the reference's BGR mean in RGB order), the image at integer offset
      (floor(U(0, W r - W)), floor(U(0, H r - H))); boxes, masks, visible keypoints shift.
    * Crop: a mode among ``CROP_MODES`` uniformly (None: no crop, 1/6 of the time); then
      ``max_trials`` candidates w ~ U(0.3 W, W), h ~ U(0.3 H, H), rejected unless
      0.5 <= h / w <= 2; offset x ~ U between W - w and ``offset_low`` (the reference calls
      numpy's ``uniform(W - w)``, whose other end is 1.0; 0.0 is SSD's U(0, W - w)); the rect
      is floor(x), floor(y), floor(x + w), floor(y + h). A box is kept when its centre lies
      strictly inside the rect (crowd boxes too, ranked with the boxes as the reference's
      crowd rows), and a candidate needs a kept non-crowd box and the IoU rule
      (``IOU_RULES``): "none" = as the reference runs (its test, min IoU < m and inf < max
      IoU, never rejects; its comment: the fix halved the mAP early in training), "any" =
      some box has IoU >= m (Caffe SSD), "all" = every box has IoU >= m. The first valid
      candidate is used; none valid: no crop (the reference draws a new mode and tries
      again, unbounded). Kept boxes (and crowd boxes) are clipped to the rect; masks
      cropped; visible keypoints outside the crop become (0, 0, 0) (detectron2's rule).
    * Mirror: ``transforms.random_flip_example`` (p 0.5).
    * Small boxes: an instance is dropped unless its width > f W and height > f H, f = 4/550
      of the augmented image (config's stated intent; the reference compares its 550-pixel
      widths with 4/550, which equals f = 4/550**2); crowd boxes by the same rule (the
      reference discards its crowd rows with the others). The example may end without instances
      (the reference then loads another image): the pipeline filters on ``num_instances``.

Shape shorthand: M instances, C crowd regions, Kp keypoints per instance, H, W image size
before a step, T = max_trials crop candidates.
"""
import math

import tensorflow as tf

from keras_maskrcnn.data import transforms

MEAN_RGB = (123.68, 116.78, 103.94)  # the reference's BGR mean (103.94, 116.78, 123.68)
INSTANCE_KEYS = ("boxes", "classes", "masks", "keypoints", "is_crowd")
CROP_MODES = (None, 0.1, 0.3, 0.7, 0.9, -math.inf)  # min IoU per mode, None = no crop
IOU_RULES = ("none", "any", "all")


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _uniform(seed, low=0.0, high=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, low, high, dtype=tf.float32)


def _coin(seed, probability=0.5):
    return _uniform(seed) < probability


def _size(image):
    """(H, W) float32 of an (H, W, C) image."""
    return tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))


def num_instances(example):
    """() int32 M of an example (e.g. ``dataset.filter(lambda e: num_instances(e) > 0)``)."""
    return tf.shape(example["boxes"])[0]


def select_instances(example, keep):
    """Keeps the instances where ``keep`` (M,) bool is True, in every per-instance key."""
    out = dict(example)
    for key in INSTANCE_KEYS:
        if key in example:
            out[key] = tf.boolean_mask(example[key], keep)
    return out


# ---------------------------------------------------------------------------- photometric
def adjust_hsv(image, saturation=1.0, hue_delta=0.0):
    """(H, W, 3) float RGB 0..255 -> HSV, S x ``saturation``, H + ``hue_delta`` degrees
    wrapped to [0, 360), -> RGB (not clipped)."""
    hsv = tf.image.rgb_to_hsv(image / 255.0)
    h, s, v = tf.unstack(hsv, axis=-1)
    h = h + hue_delta / 360.0  # TF's hue unit is a full turn
    h = h - tf.floor(h)
    return tf.image.hsv_to_rgb(tf.stack([h, s * saturation, v], axis=-1)) * 255.0


def photometric_distort(example, seed, brightness_delta=32.0, contrast_range=(0.5, 1.5),
                        saturation_range=(0.5, 1.5), hue_delta=18.0):
    """Random brightness, contrast, saturation, hue (module docstring); geometry untouched.

    Returns the example with image float32 (H, W, 3) in [0, 255].
    """
    s = _split(seed, 9)
    image = tf.cast(example["image"], tf.float32)
    brightness = tf.where(_coin(s[0]), _uniform(s[1], -brightness_delta, brightness_delta), 0.)
    contrast = tf.where(_coin(s[2]), _uniform(s[3], *contrast_range), 1.0)
    saturation = tf.where(_coin(s[4]), _uniform(s[5], *saturation_range), 1.0)
    hue = tf.where(_coin(s[6]), _uniform(s[7], -hue_delta, hue_delta), 0.0)
    contrast_first = _coin(s[8])
    image = image + brightness
    image = image * tf.where(contrast_first, contrast, 1.0)
    image = adjust_hsv(image, saturation, hue)
    image = image * tf.where(contrast_first, 1.0, contrast)
    out = dict(example)
    out["image"] = tf.clip_by_value(image, 0.0, 255.0)
    return out


# --------------------------------------------------------------------------------- expand
def _shift_keypoints(keypoints, dx, dy):
    """(M, Kp, 3) visible keypoints moved by (dx, dy); v == 0 rows stay (0, 0, 0)."""
    keypoints = tf.cast(keypoints, tf.float32)
    moved = keypoints + tf.stack([dx, dy, 0.0])
    return tf.where((keypoints[..., 2:] > 0), moved, keypoints)


def place_in_canvas(example, canvas_size, offset, mean=MEAN_RGB):
    """Puts the image at ``offset`` (y0, x0) int32 in a (Hc, Wc) = ``canvas_size`` canvas
    filled with ``mean``; masks padded with 0, boxes and keypoints shifted."""
    image = tf.cast(example["image"], tf.float32)
    h, w = tf.unstack(tf.shape(image)[:2])
    y0, x0 = tf.unstack(offset)
    pads = [[y0, canvas_size[0] - h - y0], [x0, canvas_size[1] - w - x0]]
    inside = tf.pad(tf.ones([h, w, 1], tf.bool), pads + [[0, 0]])
    out = dict(example)
    out["image"] = tf.where(inside, tf.pad(image, pads + [[0, 0]]), tf.constant(mean, tf.float32))
    dx, dy = tf.cast(x0, tf.float32), tf.cast(y0, tf.float32)
    out["boxes"] = tf.cast(example["boxes"], tf.float32) + tf.stack([dx, dy, dx, dy])
    if "crowd_boxes" in example:
        out["crowd_boxes"] = tf.cast(example["crowd_boxes"], tf.float32) + tf.stack(
            [dx, dy, dx, dy])
    if "masks" in example:
        out["masks"] = tf.pad(example["masks"], [[0, 0]] + pads)
    if "keypoints" in example:
        out["keypoints"] = _shift_keypoints(example["keypoints"], dx, dy)
    return out


def expand(example, seed, max_ratio=4.0, mean=MEAN_RGB, probability=0.5):
    """With ``probability``: the image in a canvas up to ``max_ratio`` times its size."""
    s = _split(seed, 4)
    example = {k: tf.convert_to_tensor(v) for k, v in example.items()}
    example["image"] = tf.cast(example["image"], tf.float32)
    height, width = _size(example["image"])
    ratio = _uniform(s[1], 1.0, max_ratio)
    left = _uniform(s[2], 0.0, width * ratio - width)
    top = _uniform(s[3], 0.0, height * ratio - height)
    canvas = tf.cast(tf.floor(tf.stack([height * ratio, width * ratio])), tf.int32)
    offset = tf.cast(tf.floor(tf.stack([top, left])), tf.int32)
    offset = tf.minimum(offset, canvas - tf.shape(example["image"])[:2])  # float rounding
    return tf.cond(_coin(s[0], probability),
                   lambda: place_in_canvas(example, canvas, offset, mean), lambda: dict(example))


# ----------------------------------------------------------------------------------- crop
def _iou_with_rects(boxes, rects):
    """(M, 4) boxes x (T, 4) rects -> (T, M) IoU."""
    lt = tf.maximum(rects[:, None, :2], boxes[None, :, :2])
    rb = tf.minimum(rects[:, None, 2:], boxes[None, :, 2:])
    inter = tf.reduce_prod(tf.maximum(rb - lt, 0.0), axis=-1)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_r = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    return inter / (area_r[:, None] + area_b[None, :] - inter)


def _candidate_rects(seed, height, width, max_trials, min_scale, offset_low):
    """(T, 4) integer-valued float rects and (T,) bool aspect-ratio check."""
    s = _split(seed, 4)
    w = _uniform(s[0], min_scale * width, width, [max_trials])
    h = _uniform(s[1], min_scale * height, height, [max_trials])
    aspect_ok = (h / w >= 0.5) & (h / w <= 2.0)
    left = (width - w) + (offset_low - (width - w)) * _uniform(s[2], shape=[max_trials])
    top = (height - h) + (offset_low - (height - h)) * _uniform(s[3], shape=[max_trials])
    rects = tf.floor(tf.stack([left, top, tf.minimum(left + w, width),
                               tf.minimum(top + h, height)], axis=-1))  # min: float rounding
    return rects, aspect_ok


def sample_crop(boxes, height, width, seed, is_crowd=None, modes=CROP_MODES, iou_rule="none",
                max_trials=50, min_scale=0.3, offset_low=1.0):
    """Draws the crop of ``random_crop`` (module docstring).

    Args:
        boxes: (M, 4) xyxy; height, width: () image size; seed: (2,) int.
        is_crowd: (M,) bool/int or None; crowd boxes may be kept but cannot make a crop valid.
        modes: min IoU per mode, None = no crop; iou_rule: one of ``IOU_RULES``.

    Returns:
        rect (4,) int32 x1, y1, x2, y2 (the whole image when not cropping), keep (M,) bool
        (centre strictly inside the rect; all True when not cropping), cropped () bool.
    """
    if iou_rule not in IOU_RULES:
        raise ValueError(f"iou_rule must be one of {IOU_RULES}, got {iou_rule!r}")
    s = _split(seed, 2)
    boxes = tf.cast(boxes, tf.float32)
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    mode = tf.random.stateless_uniform([], s[0], 0, len(modes), dtype=tf.int32)
    no_crop = tf.gather([m is None for m in modes], mode)
    min_iou = tf.gather([0.0 if m is None else float(m) for m in modes], mode)
    rects, valid = _candidate_rects(s[1], height, width, max_trials, min_scale, offset_low)
    iou = _iou_with_rects(boxes, rects)  # (T, M)
    if iou_rule == "any":
        valid &= tf.reduce_max(iou, axis=1) >= min_iou
    elif iou_rule == "all":
        valid &= tf.reduce_min(iou, axis=1) >= min_iou
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    inside = tf.reduce_all((rects[:, None, :2] < centres) & (centres < rects[:, None, 2:]), -1)
    regular = tf.ones_like(inside[0]) if is_crowd is None else tf.logical_not(
        tf.cast(is_crowd, tf.bool))
    valid &= tf.reduce_any(inside & regular, axis=1)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    cropped = tf.logical_not(no_crop) & tf.reduce_any(valid)
    whole = tf.stack([0.0, 0.0, width, height])
    rect = tf.cast(tf.where(cropped, rects[first], whole), tf.int32)
    keep = tf.where(cropped, inside[first], tf.ones_like(inside[first]))
    return rect, keep, cropped


def _boxes_in_rect(boxes, rect):
    """(n, 4) xyxy boxes clipped to ``rect`` (4,) float, in the rect's coordinates."""
    boxes = tf.cast(boxes, tf.float32)
    boxes = tf.concat([tf.maximum(boxes[:, :2], rect[:2]), tf.minimum(boxes[:, 2:], rect[2:])],
                      1)
    return boxes - tf.concat([rect[:2], rect[:2]], 0)


def crop_example(example, rect, keep, crowd_keep=None):
    """Crops an example to ``rect`` (4,) int32 x1, y1, x2, y2 after keeping the instances
    ``keep`` (M,) bool (and the crowd boxes ``crowd_keep`` (C,) bool): boxes clipped to the
    rect, visible keypoints outside it zeroed."""
    out = select_instances(example, keep)
    x1, y1, x2, y2 = tf.unstack(rect)
    out["image"] = example["image"][y1:y2, x1:x2]
    r = tf.cast(rect, tf.float32)
    out["boxes"] = _boxes_in_rect(out["boxes"], r)
    if "crowd_boxes" in example:
        out["crowd_boxes"] = _boxes_in_rect(tf.boolean_mask(example["crowd_boxes"], crowd_keep),
                                            r)
    if "masks" in out:
        out["masks"] = out["masks"][:, y1:y2, x1:x2]
    if "keypoints" in out:
        kp = _shift_keypoints(out["keypoints"], -r[0], -r[1])
        xy = kp[..., :2]
        inside = tf.reduce_all((xy >= 0.0) & (xy <= (r[2:] - r[:2])), axis=-1, keepdims=True)
        out["keypoints"] = tf.where(inside & (kp[..., 2:] > 0), kp, 0.0)
    return out


def random_crop(example, seed, modes=CROP_MODES, iou_rule="none", max_trials=50,
                min_scale=0.3, offset_low=1.0):
    """``sample_crop`` + ``crop_example`` (no-op when no candidate is valid); crowd boxes
    enter ``sample_crop`` after the boxes, flagged crowd."""
    example = {k: tf.convert_to_tensor(v) for k, v in example.items()}
    height, width = _size(example["image"])
    boxes, is_crowd = tf.cast(example["boxes"], tf.float32), example.get("is_crowd")
    num_boxes = tf.shape(boxes)[0]
    if "crowd_boxes" in example:
        crowd = tf.cast(example["crowd_boxes"], tf.float32)
        rows = tf.zeros([num_boxes], tf.bool) if is_crowd is None else tf.cast(is_crowd, tf.bool)
        is_crowd = tf.concat([rows, tf.ones(tf.shape(crowd)[:1], tf.bool)], 0)  # (M + C,)
        boxes = tf.concat([boxes, crowd], 0)  # (M + C, 4): the reference's crowd rows last
    rect, keep, cropped = sample_crop(boxes, height, width, seed, is_crowd, modes, iou_rule,
                                      max_trials, min_scale, offset_low)
    return tf.cond(cropped,
                   lambda: crop_example(example, rect, keep[:num_boxes], keep[num_boxes:]),
                   lambda: dict(example))


# ---------------------------------------------------------------------- drop, composition
def drop_small_boxes(example, min_fraction=4 / 550):
    """Drops instances (and crowd boxes) whose box is not wider than ``min_fraction`` W and
    taller than ``min_fraction`` H of the example's image."""
    height, width = _size(example["image"])

    def large(boxes):
        boxes = tf.cast(boxes, tf.float32)
        return ((boxes[:, 2] - boxes[:, 0] > min_fraction * width)
                & (boxes[:, 3] - boxes[:, 1] > min_fraction * height))

    out = select_instances(example, large(example["boxes"]))
    if "crowd_boxes" in example:
        out["crowd_boxes"] = tf.boolean_mask(example["crowd_boxes"], large(example["crowd_boxes"]))
    return out


DEFAULT_SETTINGS = {
    "photometric": True,         # brightness / contrast / saturation / hue
    "expand": True,              # zoom out into a mean-filled canvas
    "expand_probability": 0.5,
    "expand_max_ratio": 4.0,
    "mean": MEAN_RGB,            # expand's fill, RGB 0..255
    "random_crop": True,         # IoU-constrained random crop
    "crop_iou_rule": "none",     # IOU_RULES; "none" is what the reference runs
    "crop_max_trials": 50,
    "crop_offset_low": 1.0,      # 1.0 as the reference's numpy call, 0.0 as SSD
    "mirror": True,              # horizontal flip
    "mirror_probability": 0.5,
    "min_box_fraction": 4 / 550,  # drop boxes not larger than this share of W / H; 0: off
}


def ssd_augment(example, seed, *, flip_indices=None, **settings):
    """The SSD / YOLACT augmentation chain of an example (module docstring).

    Args:
        example: example dict; seed: (2,) int stateless seed.
        flip_indices: keypoint permutation of a mirror (``pipeline.flip_indices_from_pairs``);
            required when the example has keypoints and the mirror is on.
        **settings: keys of ``DEFAULT_SETTINGS`` overriding the defaults.

    Returns:
        The augmented example; image float32 (H', W', 3) in 0..255.
    """
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown augmentation settings {unknown}; known: "
                         f"{sorted(DEFAULT_SETTINGS)}")
    c = {**DEFAULT_SETTINGS, **settings}
    if c["mirror"] and "keypoints" in example and flip_indices is None:
        raise ValueError("the example has keypoints: pass flip_indices for the mirror")
    s = _split(seed, 4)
    example = dict(example)
    example["image"] = tf.cast(example["image"], tf.float32)
    if c["photometric"]:
        example = photometric_distort(example, s[0])
    if c["expand"]:
        example = expand(example, s[1], c["expand_max_ratio"], tuple(c["mean"]),
                         c["expand_probability"])
    if c["random_crop"]:
        example = random_crop(example, s[2], iou_rule=c["crop_iou_rule"],
                              max_trials=c["crop_max_trials"], offset_low=c["crop_offset_low"])
    if c["mirror"]:
        example = transforms.random_flip_example(example, s[3], c["mirror_probability"],
                                                 flip_indices)
    if c["min_box_fraction"]:
        example = drop_small_boxes(example, c["min_box_fraction"])
    return example


def augment_fn_from_settings(settings=None, flip_indices=None):
    """A ``fn(example, seed) -> example`` for the pipeline's TF stage, from a settings dict
    (keys and defaults: ``DEFAULT_SETTINGS``; unknown keys raise ValueError here, once)."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown augmentation settings {unknown}; known: "
                         f"{sorted(DEFAULT_SETTINGS)}")
    if settings.get("crop_iou_rule", "none") not in IOU_RULES:
        raise ValueError(f"crop_iou_rule must be one of {IOU_RULES}, "
                         f"got {settings['crop_iou_rule']!r}")

    def augment(example, seed):
        return ssd_augment(example, seed, flip_indices=flip_indices, **settings)

    return augment
