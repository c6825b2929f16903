"""YOLACT's anchor matcher and detection generator as parts that hold their settings (Bolya et
al. 2019, section 3: SSD-style matching; section 3.3: Fast NMS), over ``ops.dense_matching``
and ``ops.nms_fast``.

Conventions: ``ops.dense_matching`` (IoU >= pos positive, < neg background, crowd boxes
neutralise the anchors they cover, SSD weights (10, 10, 5, 5)) and ``ops.nms_fast`` (an anchor
enters NMS when its best foreground score passes, ``threshold_on="anchor"``). Both are
float32 geometry whatever the dtype policy (no input casts), without weights.

Shape shorthand: B batch; N anchors; M GT rows; K classes incl. background; D detections.
"""
import keras
import tensorflow as tf

from keras_maskrcnn.ops.boxes import decode_boxes
from keras_maskrcnn.ops.dense_matching import SSD_WEIGHTS, match_anchors
from keras_maskrcnn.ops.nms_fast import fast_nms


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class AnchorMatcher(keras.layers.Layer):
    """Training targets of a dense head: ``ops.dense_matching.match_anchors``.

    Args:
        pos_threshold, neg_threshold: IoU bounds of positives / background (0.5, 0.4).
        crowd_threshold: non-positive anchors covered more than this by a crowd box are
            neutral (0.7).

    Call:
        anchors (N, 4); gt_boxes (B, M, 4); gt_classes (B, M) int (padding <= 0); gt_is_crowd
        (B, M) bool or None.
    Returns:
        labels (B, N) int32 (-1 neutral, 0 background, class), matched_gt (B, N) int32,
        box_targets (B, N, 4) float32.
    """

    def __init__(self, pos_threshold=0.5, neg_threshold=0.4, crowd_threshold=0.7, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)  # geometry stays float32
        self.pos_threshold, self.neg_threshold = float(pos_threshold), float(neg_threshold)
        self.crowd_threshold = float(crowd_threshold)
        self.built = True  # no weights: built whether or not it was called
        if self.neg_threshold > self.pos_threshold:
            raise ValueError(f"neg_threshold {neg_threshold} > pos_threshold {pos_threshold}")

    def call(self, anchors, gt_boxes, gt_classes, gt_is_crowd=None):
        return match_anchors(anchors, gt_boxes, gt_classes, gt_is_crowd,
                             pos_threshold=self.pos_threshold,
                             neg_threshold=self.neg_threshold,
                             crowd_iou_threshold=self.crowd_threshold)

    def get_config(self):
        config = super().get_config()
        config.update({"pos_threshold": self.pos_threshold, "neg_threshold": self.neg_threshold,
                       "crowd_threshold": self.crowd_threshold})
        return config


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class DenseDetectionGenerator(keras.layers.Layer):
    """Dense predictions -> detections: decode (SSD weights, no clamp on exp), softmax,
    per-class Fast NMS (or standard NMS) on the foreground scores, top D.

    Args:
        score_threshold: an anchor enters when its best foreground score is above it (0.05).
        nms_threshold: IoU threshold (0.5); top_k: candidates per class (200).
        detections_per_image: D (100).
        method: "fast" (Fast NMS, paper section 3.3) or "standard" (greedy NMS).

    Call:
        box_deltas (B, N, 4), class_logits (B, N, K), anchors (N, 4).
    Returns:
        ``ops.nms_fast.fast_nms``' dict: boxes (B, D, 4), scores (B, D), classes (B, D) int32
        0-based foreground (-1 padding), indices (B, D) int32 into N (-1 padding),
        num_detections (B,).
    """

    def __init__(self, score_threshold=0.05, nms_threshold=0.5, top_k=200,
                 detections_per_image=100, method="fast", **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)  # geometry stays float32
        if method not in ("fast", "standard"):
            raise ValueError(f"method must be 'fast' or 'standard', got {method!r}")
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.top_k, self.detections_per_image = int(top_k), int(detections_per_image)
        self.method = method
        self.built = True  # no weights: built whether or not it was called

    def call(self, box_deltas, class_logits, anchors):
        boxes = decode_boxes(box_deltas, anchors[None], SSD_WEIGHTS,
                             clip=float("inf"))  # (B, N, 4) input pixels, no clamp on exp
        scores = tf.nn.softmax(class_logits, axis=-1)[..., 1:]  # (B, N, K-1)
        return fast_nms(boxes, scores, iou_threshold=self.nms_threshold,
                        score_threshold=self.score_threshold, top_k=self.top_k,
                        max_detections=self.detections_per_image, threshold_on="anchor",
                        method=self.method)

    def get_config(self):
        config = super().get_config()
        config.update({"score_threshold": self.score_threshold,
                       "nms_threshold": self.nms_threshold, "top_k": self.top_k,
                       "detections_per_image": self.detections_per_image,
                       "method": self.method})
        return config
