"""Instance masks: GT masks -> per-RoI mask targets, and RoI masks -> full-image masks.

Method: He et al. 2017 (Mask R-CNN, §3 "Mask Representation": an m x m mask per RoI, pooled
with RoIAlign; §3.1 "Training": the target is the intersection of the RoI and its matched GT
mask; §3.1 "Inference": the m x m mask is resized to the box and binarised at 0.5).

Conventions pinned here (tests/ops/test_masks.py checks each against torchvision's
``roi_heads.project_masks_on_boxes`` and ``paste_masks_in_image``):
    * Boxes are xyxy float32 absolute pixels; width = x2 - x1 (no +1).
    * Targets are RoIAlign of the matched GT mask over the RoI (spatial scale 1); torchvision
      uses an adaptive sampling ratio there, we use a fixed one by default (static shapes) and
      the adaptive one with ``sampling_ratio=0``, see ``project_masks_on_boxes``.
    * Pasting follows torchvision exactly: the S x S mask is padded by ``padding`` zero pixels,
      the box is scaled by (S + 2 * padding) / S about its centre and truncated to integers
      (towards zero), the padded mask is resized bilinearly (``align_corners=False``) to the
      integer box size (x2 - x1 + 1) x (y2 - y1 + 1) and written into pixels x1..x2, y1..y2
      (inclusive) that lie in the image; zero elsewhere.
    * ``paste_masks_detectron2`` follows detectron2's ``paste_masks_in_image`` (its
      ``_do_paste_mask``): the unpadded S x S mask is sampled bilinearly (``grid_sample``,
      ``align_corners=False``, zeros outside the mask) at every image pixel centre (x + 0.5,
      y + 0.5) mapped into the float box, no expansion and no integer rounding; its masks are
      on where the probability is >= the threshold (torchvision's: >).

Shape shorthand:
    B  batch size
    R  RoIs (or detections) per image
    M  GT instances per image (padded)
    H, W  image height and width (the padded model input)
    S  mask size (28 for the mask head's targets and outputs)
"""
import tensorflow as tf

from keras_maskrcnn.ops.roi_align import roi_align_indexed

PASTE_MODES = ("torchvision", "detectron2")  # model.mask_head.paste choices

def project_masks_on_boxes(gt_masks, boxes, matched_gt, mask_size, sampling_ratio=2,
                           aligned=False):
    """Mask targets: RoIAlign of each RoI's matched GT mask over the RoI.

    Args:
        gt_masks: (B, M, H, W) binary full-image GT masks (uint8, bool or float), padded
            instances included.
        boxes: (B, R, 4) float xyxy RoIs in image pixels.
        matched_gt: (B, R) int32 index in [0, M) of the GT each RoI is matched to; negative
            values (background / ignored RoIs) are clamped to 0 and their targets are
            meaningless (the loss ignores them).
        mask_size: Python int S.
        sampling_ratio: Python int G > 0, sample points per bin and axis; 0: adaptive
            (ceil(roi_side / S) per bin and axis: torchvision's targets with aligned False,
            detectron2's ``BitMasks.crop_and_resize`` with aligned True), masks read as float32.
        aligned: half-pixel RoIAlign offset; torchvision uses False.

    Returns:
        (B, R, S, S) float32 soft targets in [0, 1].

    Convention: ``ops.roi_align.roi_align`` semantics with spatial scale 1, i.e.
    torchvision's ``roi_heads.project_masks_on_boxes`` except that torchvision samples
    adaptively (ceil(roi_side / S) points per bin and axis); a fixed G keeps shapes static, so
    soft targets differ slightly along mask edges (tests/ops/test_masks.py bounds the difference).
    Memory: the B * M masks are sampled in place as single-channel images (RoI -> its mask via
    box indices, in the masks' own dtype when crop_and_resize takes it), never gathered per
    RoI; only (B * R, S * G, S * G) samples are materialised.
    """
    gt_masks = tf.convert_to_tensor(gt_masks)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    if gt_masks.shape[1] == 0:  # no GT slot at all: nothing to sample (box indices invalid)
        return tf.zeros(tf.concat([tf.shape(boxes)[:2], [mask_size, mask_size]], 0))
    if gt_masks.dtype == tf.bool:
        gt_masks = tf.cast(gt_masks, tf.uint8)
    shape = tf.shape(gt_masks)
    num_gt = shape[1]
    images = tf.reshape(gt_masks, tf.concat([[-1], shape[2:]], 0))  # (B * M, H, W)
    images = images[..., None]  # (B * M, H, W, 1): one single-channel map per GT
    flat_boxes = tf.reshape(boxes, [-1, 4])  # (B, R, 4) -> (B * R, 4)
    batch = tf.range(tf.shape(boxes)[0], dtype=tf.int32)[:, None]  # (B, 1)
    matched = tf.maximum(tf.cast(matched_gt, tf.int32), 0)  # (B, R), negatives -> 0
    box_indices = tf.reshape(batch * num_gt + matched, [-1])  # (B * R,) index into B * M
    targets = roi_align_indexed(images, flat_boxes, box_indices, mask_size, 1.0,
                                sampling_ratio, aligned)  # (B * R, S, S, 1) float32
    out_shape = tf.concat([tf.shape(boxes)[:2], [mask_size, mask_size]], 0)
    targets = tf.reshape(targets, out_shape)  # (B * R, S, S, 1) -> (B, R, S, S)
    targets.set_shape(boxes.shape[:2].concatenate([mask_size, mask_size]))
    return targets


def _expanded_int_boxes(boxes, scale):
    """torchvision's ``expand_boxes`` then ``.to(int64)``: (..., 4) float -> 4 x (...) int32.

    The scale is applied as a float32 (PyTorch multiplies a float32 tensor by a Python float
    in float32) and the cast truncates towards zero, like PyTorch's.
    """
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)  # each (...)
    scale = tf.constant(scale, tf.float32)
    w_half = (x2 - x1) * 0.5 * scale
    h_half = (y2 - y1) * 0.5 * scale
    x_c = (x2 + x1) * 0.5
    y_c = (y2 + y1) * 0.5
    corners = (x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half)
    return [tf.cast(c, tf.int32) for c in corners]  # float -> int truncates towards zero


def bilinear_paste_matrix(start, end, in_size, out_size):
    """Interpolation matrix placing a length-``in_size`` signal into pixels start..end.

    Args:
        start, end: (...) int32 first and last (inclusive) output pixel of each box side.
        in_size: Python int, length of the signal (the padded mask side).
        out_size: int scalar (Python or tensor), number of output pixels (image side).

    Returns:
        (..., out_size, in_size) float32 A such that ``A @ v`` is v resized with PyTorch's
        bilinear ``F.interpolate(..., size=n, align_corners=False)`` to n = max(end - start
        + 1, 1) pixels and written at out[start:start + n], zero outside [start, end]:
        source x = max((in / n) * (j + 0.5) - 0.5, 0), taps floor(x) and floor(x) + 1 (the
        latter clamped to in - 1), weights 1 - frac and frac.
    """
    length = tf.maximum(end - start + 1, 1)[..., None]  # (...) -> (..., 1)
    scale = float(in_size) / tf.cast(length, tf.float32)  # PyTorch's float(in) / out
    pixels = tf.range(out_size, dtype=tf.int32)  # (out,)
    offset = pixels - start[..., None]  # (..., out) index into the resized mask
    inside = (offset >= 0) & (pixels <= end[..., None])  # (..., out)
    offset = tf.clip_by_value(offset, 0, tf.maximum(length - 1, 0))
    real = tf.maximum(scale * (tf.cast(offset, tf.float32) + 0.5) - 0.5, 0.0)
    index = tf.minimum(tf.floor(real), in_size - 1.0)  # (..., out)
    frac = tf.clip_by_value(real - index, 0.0, 1.0)
    index = tf.cast(index, tf.int32)
    index1 = tf.minimum(index + 1, in_size - 1)  # PyTorch: +1 unless already the last
    weights = (tf.one_hot(index, in_size) * (1.0 - frac)[..., None]
               + tf.one_hot(index1, in_size) * frac[..., None])  # (..., out, in)
    return weights * tf.cast(inside, tf.float32)[..., None]  # zero outside the box


def paste_masks(masks, boxes, image_height, image_width, padding=1):
    """Paste per-box mask probabilities into full-image masks.

    Args:
        masks: (B, R, S, S) float mask probabilities (e.g. sigmoid of the class's logits);
            S must be static.
        boxes: (B, R, 4) float xyxy boxes in pixels of the (image_height, image_width) image.
        image_height, image_width: Python ints or int32 scalars.
        padding: Python int, zero pixels added around the mask before pasting (torchvision: 1).

    Returns:
        (B, R, image_height, image_width) float32 probabilities; threshold at 0.5 for binary
        masks. Equal (up to float rounding) to torchvision's
        ``paste_masks_in_image(masks[:, None], boxes, (H, W), padding)[:, 0]`` per image.
        Boxes entirely outside the image give all-zero masks (torchvision raises there).

    Computed as separable bilinear interpolation, out = Ay @ mask @ Ax^T, with per-box
    interpolation matrices Ay (H x S') and Ax (W x S'), S' = S + 2 * padding; no per-box loop.
    """
    masks = tf.convert_to_tensor(masks, dtype=tf.float32)
    boxes = tf.convert_to_tensor(boxes, dtype=tf.float32)
    size = masks.shape[-1]
    padded_size = size + 2 * padding
    pads = [[0, 0], [0, 0], [padding, padding], [padding, padding]]
    masks = tf.pad(masks, pads)  # (B, R, S, S) -> (B, R, S', S')
    x1, y1, x2, y2 = _expanded_int_boxes(boxes, padded_size / size)  # each (B, R)
    ay = bilinear_paste_matrix(y1, y2, padded_size, image_height)  # (B, R, H, S')
    ax = bilinear_paste_matrix(x1, x2, padded_size, image_width)  # (B, R, W, S')
    # Horizontal pass first, then vertical: PyTorch's summation nesting.
    rows = tf.matmul(masks, ax, transpose_b=True)  # (B, R, S', S') @ (B, R, S', W)
    pasted = tf.matmul(ay, rows)  # (B, R, H, S') @ (B, R, S', W) -> (B, R, H, W)
    static_hw = [tf.get_static_value(v) for v in (image_height, image_width)]  # None if dynamic
    pasted.set_shape(boxes.shape[:2].concatenate([None if v is None else int(v)
                                                  for v in static_hw]))
    return pasted


def grid_sample_matrix(start, end, in_size, out_size):
    """Interpolation matrix of ``grid_sample`` at the pixel centres of a float box side.

    Args:
        start, end: (...) float32 box edges (x1, x2 or y1, y2) in image pixels.
        in_size: Python int, the mask side S.  out_size: int scalar, the image side.

    Returns:
        (..., out_size, in_size) float32 A with ``A @ v`` = v sampled as PyTorch's
        ``grid_sample(align_corners=False, padding_mode="zeros")`` at g = (j + 0.5 - start) /
        (end - start) * 2 - 1, i.e. mask coordinate u = ((g + 1) * S - 1) / 2: weight
        (floor(u) + 1 - u) on row floor(u) and (u - floor(u)) on the next, rows outside
        [0, S) dropped. Zero for boxes with end <= start (detectron2 never pastes those).
    """
    length = end - start
    valid = length > 0.0
    safe = tf.where(valid, length, 1.0)[..., None]  # (..., 1)
    centres = tf.range(out_size, dtype=tf.float32) + 0.5  # (out,)
    grid = (centres - start[..., None]) / safe * 2.0 - 1.0  # (..., out) detectron2's order
    u = ((grid + 1.0) * in_size - 1.0) / 2.0  # grid_sample's unnormalisation
    u = tf.clip_by_value(u, -2.0, in_size + 1.0)  # beyond: no tap inside (keeps int32 safe)
    low = tf.floor(u)
    index = tf.cast(low, tf.int32)
    weights = (tf.one_hot(index, in_size) * (low + 1.0 - u)[..., None]
               + tf.one_hot(index + 1, in_size) * (u - low)[..., None])  # out-of-range: 0
    return weights * tf.cast(valid, tf.float32)[..., None, None]


def paste_masks_detectron2(masks, boxes, image_height, image_width):
    """Paste per-box mask probabilities into full-image masks the detectron2 way.

    Args:
        masks: (B, R, S, S) float mask probabilities; S must be static.
        boxes: (B, R, 4) float xyxy boxes in pixels of the (image_height, image_width) image.
        image_height, image_width: Python ints or int32 scalars.

    Returns:
        (B, R, image_height, image_width) float32 probabilities: detectron2's
        ``_do_paste_mask`` (module docstring); binarise with >= threshold. Separable, as
        ``paste_masks``: out = Ay @ mask @ Ax^T with ``grid_sample_matrix`` rows.
    """
    masks = tf.convert_to_tensor(masks, dtype=tf.float32)
    boxes = tf.convert_to_tensor(boxes, dtype=tf.float32)
    size = masks.shape[-1]
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)  # each (B, R)
    ay = grid_sample_matrix(y1, y2, size, image_height)  # (B, R, H, S)
    ax = grid_sample_matrix(x1, x2, size, image_width)  # (B, R, W, S)
    pasted = tf.matmul(ay, tf.matmul(masks, ax, transpose_b=True))  # (B, R, H, W)
    static_hw = [tf.get_static_value(v) for v in (image_height, image_width)]  # None if dynamic
    pasted.set_shape(boxes.shape[:2].concatenate([None if v is None else int(v)
                                                  for v in static_hw]))
    return pasted


def paste_and_threshold(masks, boxes, image_height, image_width, threshold,
                        paste="torchvision"):
    """Pasted bool masks (B, R, H, W): ``paste_masks`` > threshold ("torchvision") or
    ``paste_masks_detectron2`` >= threshold ("detectron2")."""
    if paste == "torchvision":
        return paste_masks(masks, boxes, image_height, image_width) > threshold
    if paste == "detectron2":
        return paste_masks_detectron2(masks, boxes, image_height, image_width) >= threshold
    raise ValueError(f"paste must be one of {PASTE_MODES}, got {paste!r}")
