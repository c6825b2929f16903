"""Detections from the box head's outputs: softmax, per-class decode, clip, NMS, top D.

Method: the inference step of He et al. 2017 (Mask R-CNN, §3.1 "Inference": the box branch
on the proposals, then non-maximum suppression and the 100 highest scoring detections), i.e.
Fast R-CNN's class-specific box offsets and per-class NMS (Girshick 2015, §2 and §3); the
0.05 score threshold and the minimum size are torchvision's ``postprocess_detections``.

Conventions pinned here (tests/layers/test_detection_generator.py checks each against torchvision):
    * Scores are ``softmax(class_logits)`` over K in float32; boxes are every class's deltas
      decoded against the RoI (``decode_boxes``, weights ``ROI_BOX_WEIGHTS`` (10, 10, 5, 5),
      dw/dh clamped at ``scale_clip``) and clipped to the image's (height, width) from
      ``image_sizes``.
    * The background column is dropped; candidates are flattened RoI-major, class-minor
      (candidate n = r * (K - 1) + (k - 1)), which fixes the order of equal scores.
    * A candidate is kept when ``score > score_threshold`` (strict), width and height
      ``>= min_size`` after clipping, and its RoI is valid; then class-aware greedy NMS
      (``ops.nms.batched_nms``, IoU > ``nms_threshold`` suppresses) and the first D survivors
      in decreasing score order (ties: lower candidate index first).
    * Outputs are padded to D: boxes 0, scores 0, classes 0, roi_index -1;
      ``num_detections`` counts the real rows, which come first.
    * Class-agnostic box heads give deltas (B, R, 1, 4): one box shared by all classes.

Shape shorthand:
    B  batch size
    R  RoIs per image (may be unknown; ``roi_valid`` flags the real ones)
    K  classes including background (column 0), static
    N  flattened candidates per image = R * (K - 1)
    D  ``detections_per_image``, the static number of output rows
"""
import tensorflow as tf

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops
from keras_maskrcnn.ops.matching import gather_or_pad


def decode_class_boxes(box_deltas, rois, image_sizes, num_classes,
                       box_weights=box_ops.ROI_BOX_WEIGHTS, scale_clip=box_ops.DEFAULT_DELTA_CLIP):
    """Decoded, clipped boxes of the foreground classes.

    Args:
        box_deltas: (B, R, K, 4) class-specific or (B, R, 1, 4) class-agnostic deltas.
        rois: (B, R, 4) xyxy. image_sizes: (B, 2) int (height, width).
        num_classes: python int K. box_weights, scale_clip: the box coder's.

    Returns:
        (B, R, K - 1, 4) float32 boxes of classes 1..K-1, clipped to [0, w] x [0, h].
    """
    box_deltas = tf.cast(box_deltas, tf.float32)
    rois = tf.cast(rois, tf.float32)
    boxes = box_ops.decode_boxes(box_deltas, rois[:, :, None, :], tuple(box_weights),
                                 scale_clip)  # rois (B, R, 4) -> (B, R, 1, 4); (B, R, K|1, 4)
    if box_deltas.shape[2] == 1:  # agnostic: one box for every class
        shape = tf.concat([tf.shape(boxes)[:2], [num_classes - 1, 4]], 0)
        boxes = tf.broadcast_to(boxes, shape)  # (B, R, 1, 4) -> (B, R, K - 1, 4)
    else:
        boxes = boxes[:, :, 1:, :]  # (B, R, K, 4) -> (B, R, K - 1, 4), drop background
    sizes = tf.cast(image_sizes, tf.float32)
    height = sizes[:, 0][:, None, None]  # (B,) -> (B, 1, 1)
    width = sizes[:, 1][:, None, None]  # (B,) -> (B, 1, 1)
    return box_ops.clip_boxes(boxes, height, width)


def generate_detections(class_logits, box_deltas, rois, roi_valid, image_sizes,
                        score_threshold=0.05, nms_threshold=0.5, detections_per_image=100,
                        min_size=1e-2, box_weights=box_ops.ROI_BOX_WEIGHTS,
                        scale_clip=box_ops.DEFAULT_DELTA_CLIP, nms_method="offset"):
    """torchvision ``postprocess_detections`` on padded batches (see the module docstring).

    Args:
        class_logits: (B, R, K) logits, K static. box_deltas: (B, R, K, 4) or (B, R, 1, 4).
        rois: (B, R, 4) xyxy. roi_valid: (B, R) bool. image_sizes: (B, 2) int (h, w).
        score_threshold, nms_threshold, min_size: python floats (torchvision's).
        detections_per_image: python int D. box_weights, scale_clip: the box coder's.
        nms_method: ``ops.nms.batched_nms`` method ("offset", "per_class", "torchvision_cpu").

    Returns:
        dict boxes (B, D, 4) float32, scores (B, D) float32, classes (B, D) int32 (1..K-1,
        0 padding), num_detections (B,) int32, roi_index (B, D) int32 (-1 padding).
    """
    num_classes = class_logits.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError(f"class_logits needs a static class axis K >= 2, got "
                         f"{class_logits.shape}")
    num_fg = num_classes - 1
    scores = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[:, :, 1:]  # (B, R, K-1)
    boxes = decode_class_boxes(box_deltas, rois, image_sizes, num_classes, box_weights,
                               scale_clip)  # (B, R, K - 1, 4)
    valid = tf.logical_and(tf.cast(roi_valid, tf.bool)[:, :, None],  # (B, R) -> (B, R, 1)
                           box_ops.small_box_mask(boxes, min_size))  # (B, R, K - 1)
    batch = tf.shape(scores)[0]
    boxes = tf.reshape(boxes, [batch, -1, 4])  # (B, R, K-1, 4) -> (B, N, 4), class-minor
    scores = tf.reshape(scores, [batch, -1])  # (B, R, K - 1) -> (B, N)
    valid = tf.reshape(valid, [batch, -1])  # (B, R, K - 1) -> (B, N)
    classes = tf.tile(tf.range(1, num_classes, dtype=tf.int32),
                      [tf.shape(scores)[1] // num_fg])  # (N,) = 1..K-1 repeated R times
    classes = tf.broadcast_to(classes[None], tf.shape(scores))  # (N,) -> (B, N)
    indices, num_detections = nms_ops.batched_nms(
        boxes, scores, classes, nms_threshold, detections_per_image, valid=valid,
        score_threshold=score_threshold, method=nms_method)  # (B, D) into N, (B,)
    return {
        "boxes": gather_or_pad(boxes, indices, 0.0),  # (B, D, 4)
        "scores": gather_or_pad(scores, indices, 0.0),  # (B, D)
        "classes": gather_or_pad(classes, indices, 0),  # (B, D)
        "num_detections": num_detections,
        "roi_index": tf.where(indices >= 0, indices // num_fg, -1),  # (B, D)
    }
