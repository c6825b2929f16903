"""Box geometry and the box coder: area, IoU, clipping, format conversion, delta encoding.

Method: the bounding-box regression parameterisation of Girshick 2015 (Fast R-CNN, §2.3,
after R-CNN's appendix C), used for anchors by Ren et al. 2015 (Faster R-CNN, §3.1.2) and for
RoIs by He et al. 2017 (Mask R-CNN, §3); the box-coder weights and the dw/dh clamp are
torchvision's (named constants below).

Conventions pinned here (tests/ops/test_boxes.py checks each one against torchvision):
    * Boxes are ``xyxy`` float32 absolute pixels. Width = x2 - x1, height = y2 - y1 (no +1).
    * COCO boxes are ``xywh`` = (x1, y1, width, height).
    * Deltas are ordered (dx, dy, dw, dh), exactly torchvision's ``BoxCoder``:
          dx = wx * (gx - ax) / aw      dy = wy * (gy - ay) / ah
          dw = ww * log(gw / aw)        dh = wh * log(gh / ah)
      with (ax, ay) the anchor centre x1 + 0.5 * aw. Decoding clamps dw/dh (after dividing
      by the weights) from above at ``clip`` = log(1000 / 16) before ``exp``.

Shape shorthand:
    B  batch size
    N  anchors / proposals per image (first box set)
    M  GT boxes per image (second box set)
    R  RoIs per image
    K  classes
    S  mask size
    ...  any number of leading (batch) dims; every function here accepts them
"""
import math

import tensorflow as tf

#: torchvision's ``bbox_xform_clip``: largest dw/dh fed to exp() when decoding.
DEFAULT_DELTA_CLIP = math.log(1000.0 / 16)
#: (wx, wy, ww, wh) of the RPN's box coder: unit weights (torchvision's ``rpn.box_coder``).
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
#: (wx, wy, ww, wh) of the box head's coder (torchvision's ``roi_heads.box_coder``).
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _split(boxes):
    """Split (..., 4) into four (..., 1) tensors (kept 4-d last so they broadcast and restack)."""
    return tf.split(boxes, 4, axis=-1)


def area(boxes):
    """Area of xyxy boxes.

    Args:
        boxes: (..., 4) float xyxy boxes.

    Returns:
        (...) areas, width * height with width = x2 - x1 (no +1).

    Convention: equals ``torchvision.ops.box_area`` for boxes with x2 >= x1 and y2 >= y1.
    Inverted sides (x2 < x1 or y2 < y1) count as 0 (torchvision multiplies the negative
    sides, which can give a positive area for a box inverted in both directions).
    """
    boxes = tf.convert_to_tensor(boxes)
    x1, y1, x2, y2 = _split(boxes)
    widths = tf.maximum(x2 - x1, 0.0)
    heights = tf.maximum(y2 - y1, 0.0)
    return tf.squeeze(widths * heights, axis=-1)  # (..., 1) -> (...)


def pairwise_iou(boxes1, boxes2):
    """Intersection over union of every box in ``boxes1`` with every box in ``boxes2``.

    Args:
        boxes1: (..., N, 4) xyxy boxes.
        boxes2: (..., M, 4) xyxy boxes; leading dims equal to (or broadcastable with) boxes1's.

    Returns:
        (..., N, M) IoU in [0, 1]. Equal to ``torchvision.ops.box_iou`` on valid boxes
        (x2 >= x1, y2 >= y1, union > 0). Where the union is 0 (two empty boxes) the IoU
        is 0, not NaN; inverted boxes are treated as empty (see ``area``).
    """
    boxes1 = tf.convert_to_tensor(boxes1)
    boxes2 = tf.convert_to_tensor(boxes2, dtype=boxes1.dtype)
    area1 = area(boxes1)[..., :, None]  # (..., N) -> (..., N, 1)
    area2 = area(boxes2)[..., None, :]  # (..., M) -> (..., 1, M)
    b1 = boxes1[..., :, None, :]  # (..., N, 4) -> (..., N, 1, 4)
    b2 = boxes2[..., None, :, :]  # (..., M, 4) -> (..., 1, M, 4)
    top_left = tf.maximum(b1[..., :2], b2[..., :2])  # (..., N, M, 2)
    bottom_right = tf.minimum(b1[..., 2:], b2[..., 2:])  # (..., N, M, 2)
    wh = tf.maximum(bottom_right - top_left, 0.0)  # (..., N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (..., N, M)
    union = area1 + area2 - inter
    return tf.math.divide_no_nan(inter, union)


def clip_boxes(boxes, height, width):
    """Clip boxes to the image: x to [0, width], y to [0, height].

    Args:
        boxes: (..., 4) xyxy boxes.
        height, width: Python numbers or tensors broadcastable to ``boxes[..., 0]``
            (e.g. shape (B, 1) for per-image sizes of (B, N, 4) boxes).

    Returns:
        (..., 4) clipped boxes, same as ``torchvision.ops.clip_boxes_to_image``.
    """
    boxes = tf.convert_to_tensor(boxes)
    height = tf.cast(height, boxes.dtype)[..., None]  # (...) -> (..., 1) to match _split
    width = tf.cast(width, boxes.dtype)[..., None]  # (...) -> (..., 1)
    x1, y1, x2, y2 = _split(boxes)
    x1 = tf.minimum(tf.maximum(x1, 0.0), width)
    x2 = tf.minimum(tf.maximum(x2, 0.0), width)
    y1 = tf.minimum(tf.maximum(y1, 0.0), height)
    y2 = tf.minimum(tf.maximum(y2, 0.0), height)
    return tf.concat([x1, y1, x2, y2], axis=-1)


def xywh_to_xyxy(boxes):
    """COCO (x1, y1, w, h) -> (x1, y1, x1 + w, y1 + h). Args/Returns: (..., 4)."""
    boxes = tf.convert_to_tensor(boxes)
    x1, y1, w, h = _split(boxes)
    return tf.concat([x1, y1, x1 + w, y1 + h], axis=-1)


def xyxy_to_xywh(boxes):
    """(x1, y1, x2, y2) -> COCO (x1, y1, x2 - x1, y2 - y1). Args/Returns: (..., 4)."""
    boxes = tf.convert_to_tensor(boxes)
    x1, y1, x2, y2 = _split(boxes)
    return tf.concat([x1, y1, x2 - x1, y2 - y1], axis=-1)


def _centres(boxes):
    """(..., 4) xyxy -> widths, heights, centre x, centre y, each (..., 1)."""
    x1, y1, x2, y2 = _split(boxes)
    widths = x2 - x1
    heights = y2 - y1
    return widths, heights, x1 + 0.5 * widths, y1 + 0.5 * heights


def encode_boxes(boxes, anchors, weights=RPN_BOX_WEIGHTS):
    """Deltas that move ``anchors`` onto ``boxes``.

    Args:
        boxes: (..., 4) target xyxy boxes (e.g. matched GT).
        anchors: (..., 4) reference xyxy boxes (anchors or proposals), broadcastable with
            ``boxes``; they must have positive width and height.
        weights: (wx, wy, ww, wh) Python floats; ``RPN_BOX_WEIGHTS`` (1, 1, 1, 1) for the
            RPN, ``ROI_BOX_WEIGHTS`` (10, 10, 5, 5) for the box head.

    Returns:
        (..., 4) deltas (dx, dy, dw, dh), equal to torchvision's
        ``BoxCoder(weights).encode_single(boxes, anchors)``. Zero-size targets give
        dw/dh = -inf, as in torchvision.
    """
    anchors = tf.convert_to_tensor(anchors)
    boxes = tf.convert_to_tensor(boxes, dtype=anchors.dtype)
    wx, wy, ww, wh = weights
    aw, ah, ax, ay = _centres(anchors)
    gw, gh, gx, gy = _centres(boxes)
    dx = wx * (gx - ax) / aw
    dy = wy * (gy - ay) / ah
    dw = ww * tf.math.log(gw / aw)
    dh = wh * tf.math.log(gh / ah)
    return tf.concat([dx, dy, dw, dh], axis=-1)


def decode_boxes(deltas, anchors, weights=RPN_BOX_WEIGHTS, clip=DEFAULT_DELTA_CLIP):
    """Apply deltas to anchors (the inverse of ``encode_boxes``).

    Args:
        deltas: (..., 4) (dx, dy, dw, dh). Class-specific deltas (R, K, 4) decode against
            anchors (R, 1, 4) by broadcasting.
        anchors: (..., 4) xyxy reference boxes, broadcastable with ``deltas``.
        weights: (wx, wy, ww, wh) Python floats, the ones used to encode.
        clip: dw/dh (after dividing by the weights) are clamped from above at this value
            before exp(); torchvision's bbox_xform_clip = log(1000 / 16). dx/dy are not
            clamped and nothing is clamped from below.

    Returns:
        (..., 4) xyxy boxes, equal to torchvision's ``BoxCoder.decode_single``:
        x1 = cx - 0.5 * w, x2 = cx + 0.5 * w (no -1 on the far corner). Not clipped to the
        image (use ``clip_boxes``).
    """
    anchors = tf.convert_to_tensor(anchors)
    deltas = tf.convert_to_tensor(deltas, dtype=anchors.dtype)
    wx, wy, ww, wh = weights
    aw, ah, ax, ay = _centres(anchors)
    dx, dy, dw, dh = _split(deltas)
    dx = dx / wx
    dy = dy / wy
    dw = tf.minimum(dw / ww, clip)
    dh = tf.minimum(dh / wh, clip)
    cx = dx * aw + ax
    cy = dy * ah + ay
    half_w = 0.5 * (tf.exp(dw) * aw)
    half_h = 0.5 * (tf.exp(dh) * ah)
    return tf.concat([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def small_box_mask(boxes, min_size, strict=False):
    """Which boxes are big enough to keep.

    Args:
        boxes: (..., 4) xyxy boxes.
        min_size: Python number or tensor broadcastable to ``boxes[..., 0]``.
        strict: compare with > (detectron2's ``Boxes.nonempty(threshold)``) instead of >=.

    Returns:
        (...) bool, True where width >= min_size and height >= min_size: the boxes
        ``torchvision.ops.remove_small_boxes`` keeps (as a mask instead of indices, so the
        shape stays static); with ``strict``, width > min_size and height > min_size.
    """
    boxes = tf.convert_to_tensor(boxes)
    min_size = tf.cast(min_size, boxes.dtype)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    if strict:
        return tf.logical_and(widths > min_size, heights > min_size)
    return tf.logical_and(widths >= min_size, heights >= min_size)
