"""Draw detections and ground truth onto images: numpy blending plus Pillow lines and text.

Shape shorthand:
    H, W  image height and width
    n     instances (detections or GT rows)
    Kp    keypoints per instance

No TensorFlow here: inputs are numpy arrays (anything ``np.asarray`` accepts, eager tensors
included) and the output is a new (H, W, 3) uint8 array; the input image is never modified.

Conventions pinned here (tests/test_visualize.py checks them):
    * Images are (H, W, 3) RGB, uint8 or float in [0, 255] (clipped and rounded).
    * Boxes are xyxy pixels (width = x2 - x1, no +1), as ``model.detect`` returns them. A box
      outline covers the pixel rows / columns round(x1)..round(x2), drawn ``line_width``
      pixels inwards.
    * Colours: the instances kept (score >= ``score_threshold``), sorted by descending score,
      take ``PALETTE`` colours in order: the top detection is always ``PALETTE[0]``.
    * Masks are (n, H, W) bool, 0/1 or probabilities (drawn where > 0.5): blended as
      ``(1 - alpha) * image + alpha * colour`` (alpha 0.5), then a contour of the mask's
      boundary pixels (inside the mask, ``contour_width`` thick) in the full colour. Lower
      scores are drawn first, so the highest-scoring instance ends up on top.
    * Keypoints are (n, Kp, 3) [x, y, score]; a keypoint is drawn when score >
      ``keypoint_threshold``: predicted scores are heatmap logits (torchvision's
      ``keypoints_scores``, or detectron2's probabilities; default threshold 0.05 as
      detectron2's visualizer), GT visibilities v are 0/1/2 (drawn when v > 0). A skeleton
      edge (a, b), 0-based, is drawn when both ends are. Detections of a class without
      keypoints have score -inf (``model.keypoint_head.category_ids``): never drawn.
    * ``class_names`` maps a label to its name: a mapping {label: name}, or a sequence indexed
      by the label (torchvision style: entry 0 is the background). Labels without a name are
      written "class N".
    * Drawing order: masks and contours, boxes, skeleton lines, keypoint dots, labels (a
      filled box in the instance colour with "name score" above the box, or just inside its
      top when there is no room above).
"""
import os
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Kelly's colours of maximum contrast (grey and white left out): (R, G, B).
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (0, 0, 0), (255, 255, 255))
MASK_ALPHA = 0.5


def color_for(index):
    """RGB colour of the ``index``-th instance drawn (cycles through ``PALETTE``)."""
    return PALETTE[int(index) % len(PALETTE)]


def class_name(label, class_names=None):
    """The name of ``label``: ``class_names`` (mapping or label-indexed sequence), else
    "class N"."""
    label = int(label)
    name = None
    if isinstance(class_names, Mapping):
        name = class_names.get(label)
    elif class_names is not None and 0 <= label < len(class_names):
        name = class_names[label]
    return f"class {label}" if name is None else str(name)


def format_label(label, score=None, class_names=None):
    """The text drawn over a box: "name 0.93", or "name" when ``score`` is None."""
    name = class_name(label, class_names)
    return name if score is None else f"{name} {float(score):.2f}"


def as_uint8_image(image):
    """(H, W, 3) uint8 copy of ``image`` (uint8, or float in [0, 255]: clipped, rounded)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.copy()
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise ValueError(f"expected a uint8 or float image, got dtype {image.dtype}")
    return np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)


def _style(height, width):
    """(line_width, keypoint radius, font) scaled to the image size."""
    side = min(height, width)
    line_width = max(1, int(round(side / 250)))
    try:
        font = ImageFont.load_default(size=max(10, int(round(side / 40))))
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    return line_width, line_width + 2, font


def _mask_boundary(mask, width):
    """(H, W) bool: pixels of ``mask`` within ``width`` 4-neighbour steps of its outside."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)  # (H + 2, W + 2); outside = False
        inner = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1]
                 & padded[1:-1, :-2] & padded[1:-1, 2:])  # erosion by a 4-neighbour cross
    return mask & ~inner


def _blend_masks(canvas, masks, colors, alpha, contour_width):
    """Blends each mask into ``canvas`` ((H, W, 3) float64, in place), last index on top."""
    for mask, color in zip(masks, colors):
        color = np.asarray(color, np.float64)
        canvas[mask] = (1.0 - alpha) * canvas[mask] + alpha * color  # (P, 3) masked pixels
        canvas[_mask_boundary(mask, contour_width)] = color


def _text_color(color):
    """Black or white, whichever reads better on ``color``."""
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _draw_label(draw, text, box, color, font, size):
    """A filled label box with ``text`` above ``box`` (inside its top if no room above)."""
    height, width = size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    label_w, label_h = right - left + 2 * pad, bottom - top + 2 * pad
    x1, y1 = int(round(box[0])), int(round(box[1]))
    x = min(max(x1, 0), max(width - label_w, 0))
    y = y1 - label_h if y1 - label_h >= 0 else max(y1, 0)
    y = min(y, max(height - label_h, 0))
    draw.rectangle([x, y, x + label_w - 1, y + label_h - 1], fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def _draw_keypoints(draw, keypoints, colors, skeleton, names, threshold, style):
    """Skeleton lines, then dots (white rim, instance colour), then optional names."""
    line_width, radius, font = style
    for points, color in zip(keypoints, colors):
        visible = points[:, 2] > threshold  # (Kp,)
        for a, b in skeleton or ():
            if visible[a] and visible[b]:
                draw.line([tuple(points[a, :2]), tuple(points[b, :2])], fill=color,
                          width=line_width)
        for k in np.flatnonzero(visible):
            x, y = points[k, 0], points[k, 1]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color,
                         outline=(255, 255, 255))
            if names is not None:
                draw.text((x + radius + 1, y - radius), str(names[k]), fill=(255, 255, 255),
                          font=font, stroke_width=1, stroke_fill=(0, 0, 0))


def _instance_arrays(n, height, width, masks, keypoints):
    """Checks and converts the optional per-instance arrays; None stays None."""
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (n, height, width):
            raise ValueError(f"masks must be (n, H, W) = {(n, height, width)} (pasted into the "
                             f"image, as model.detect returns them), got {masks.shape}")
        masks = masks > 0.5 if masks.dtype != bool else masks
    if keypoints is not None:
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
            raise ValueError(f"keypoints must be (n, Kp, 3) with n = {n}, got "
                             f"{keypoints.shape}")
    return masks, keypoints


def draw_instances(image, boxes, labels, scores=None, masks=None, keypoints=None,
                   class_names=None, keypoint_skeleton=None, keypoint_names=None,
                   keypoint_threshold=0.05, alpha=MASK_ALPHA):
    """Draws every given instance, instance i in ``color_for(i)``, drawn last-to-first.

    Args:
        image: (H, W, 3) uint8 (or float in [0, 255]) RGB.
        boxes: (n, 4) xyxy pixels.
        labels: (n,) int labels, named through ``class_names``.
        scores: (n,) floats written after the name, or None (ground truth).
        masks: (n, H, W) bool / probabilities, or None.
        keypoints: (n, Kp, 3) [x, y, score or visibility], or None.
        class_names: mapping label -> name, or a label-indexed sequence; None = "class N".
        keypoint_skeleton: 0-based (a, b) index pairs to join with lines, or None.
        keypoint_names: Kp names written next to the dots, or None (no keypoint text).
        keypoint_threshold: a keypoint is drawn when its third value is above this.
        alpha: mask opacity in [0, 1].

    Returns:
        (H, W, 3) uint8, a new array.
    """
    out = as_uint8_image(image)
    height, width = out.shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)  # (n, 4); (0,) for empty input
    labels = np.asarray(labels).reshape(-1)  # (n,)
    n = len(boxes)
    if len(labels) != n or (scores is not None and len(np.asarray(scores)) != n):
        raise ValueError(f"boxes ({n}), labels ({len(labels)}) and scores must have one row "
                         "per instance")
    masks, keypoints = _instance_arrays(n, height, width, masks, keypoints)
    if n == 0:
        return out
    style = _style(height, width)
    colors = [color_for(i) for i in range(n)]
    order = np.arange(n)[::-1]  # draw the last instance first: instance 0 ends up on top
    if masks is not None:
        canvas = out.astype(np.float64)
        _blend_masks(canvas, masks[order], [colors[i] for i in order], alpha, style[0])
        out = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    for i in order:
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colors[i], width=style[0])
    if keypoints is not None:
        _draw_keypoints(draw, keypoints[order], [colors[i] for i in order], keypoint_skeleton,
                        keypoint_names, keypoint_threshold, style)
    for i in order:
        text = format_label(labels[i], None if scores is None else np.asarray(scores)[i],
                            class_names)
        _draw_label(draw, text, boxes[i], colors[i], style[2], (height, width))
    return np.asarray(pil, np.uint8).copy()


def draw_detections(image, result, class_names=None, keypoint_skeleton=None,
                    keypoint_names=None, score_threshold=0.5, keypoint_threshold=0.05,
                    alpha=MASK_ALPHA):
    """Draws one image's detections (a dict of ``model.detect``) onto a copy of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB, the image passed to ``model.detect``.
        result: dict with boxes (n, 4) xyxy original pixels, scores (n,), labels (n,) (or
            classes), and optionally masks (n, H, W) and keypoints (n, Kp, 3) [x, y, score].
        class_names: mapping label -> name, or a label-indexed sequence; None = "class N".
        keypoint_skeleton: 0-based (a, b) edges (``config.model.keypoint_head.skeleton``).
        keypoint_names: Kp names written next to the keypoints, or None (dots only).
        score_threshold: detections with score >= this are drawn.
        keypoint_threshold: keypoints with score (heatmap logit) > this are drawn.
        alpha: mask opacity.

    Returns:
        (H, W, 3) uint8. Kept detections are sorted by descending score, the best one gets
        ``PALETTE[0]`` and is drawn on top.
    """
    scores = np.asarray(result["scores"], np.float64).reshape(-1)  # (n,)
    labels = result["labels"] if "labels" in result else result["classes"]
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]  # (n_kept,) best first

    def take(key):
        return None if result.get(key) is None else np.asarray(result[key])[keep]

    return draw_instances(
        image, np.asarray(result["boxes"]).reshape(-1, 4)[keep], np.asarray(labels)[keep],
        scores[keep], take("masks"), take("keypoints"), class_names, keypoint_skeleton,
        keypoint_names, keypoint_threshold, alpha)


def draw_ground_truth(image, boxes, labels, masks=None, keypoints=None, class_names=None,
                      keypoint_skeleton=None, keypoint_names=None, alpha=MASK_ALPHA):
    """Draws ground truth (e.g. one element of the data pipeline) onto a copy of ``image``.

    Args:
        image: (H, W, 3) uint8 or float32 0..255 RGB (a padded pipeline image is fine).
        boxes: (M, 4) xyxy pixels; rows whose label is <= 0 are padding and skipped.
        labels: (M,) int labels (the pipeline's contiguous ``gt_classes``, -1 = padding).
        masks: (M, H, W) 0/1 masks (``gt_masks``), or None.
        keypoints: (M, Kp, 3) [x, y, v]; keypoints with v > 0 are drawn.
        class_names, keypoint_skeleton, keypoint_names, alpha: as ``draw_detections``.

    Returns:
        (H, W, 3) uint8; labels are names only (no score), colours in row order.
    """
    labels = np.asarray(labels).reshape(-1)  # (M,)
    keep = np.flatnonzero(labels > 0)  # (m,) valid rows

    def take(values):
        return None if values is None else np.asarray(values)[keep]

    return draw_instances(image, np.asarray(boxes).reshape(-1, 4)[keep], labels[keep], None,
                          take(masks), take(keypoints), class_names, keypoint_skeleton,
                          keypoint_names, 0.0, alpha)


def save_png(image, path):
    """Writes an (H, W, 3) uint8 image as PNG (parent directories created); returns path."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"save_png expects an (H, W, 3) uint8 image, got {image.dtype} "
                         f"{image.shape}")
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path
