"""DetectionGenerator: box-head outputs -> final detections (``RoIHeads.postprocess_detections``).

Method: the inference step of He et al. 2017 (Mask R-CNN, §3.1 "Inference"); the tensor math
is ``ops.postprocess.generate_detections``, whose docstring pins the parity conventions
(softmax, per-class decode with ``ROI_BOX_WEIGHTS``, clip, strict score threshold, per-class
NMS, top D, padding). This layer holds the settings and checks the box-delta layout.

Conventions pinned here (tests/layers/test_detection_generator.py checks each against torchvision):
    * Class-agnostic box heads give deltas (B, R, 1, 4): one box shared by all classes; with
      ``class_agnostic_boxes=False`` the deltas must have K entries on axis 2.

Shape shorthand:
    B  batch size
    R  RoIs per image (may be unknown; ``roi_valid`` flags the real ones)
    K  classes including background (column 0), static
    D  ``detections_per_image``, the static number of output rows
"""
import keras

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops
from keras_maskrcnn.ops.postprocess import generate_detections


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class DetectionGenerator(keras.layers.Layer):
    """Softmax, per-class decode, clip, threshold, per-class NMS, top D (inference only).

    Args:
        score_threshold: keep candidates with score > this (0.05).
        nms_threshold: per-class NMS IoU threshold (0.5).
        detections_per_image: D, static number of output rows (100).
        min_size: minimum width and height after clipping (1e-2).
        box_weights: (wx, wy, ww, wh) of the box coder (``ROI_BOX_WEIGHTS``, 10, 10, 5, 5).
        scale_clip: dw/dh clamp before exp (``DEFAULT_DELTA_CLIP``, log(1000 / 16)).
        class_agnostic_boxes: the box head predicts one box per RoI, deltas (B, R, 1, 4).
        nms_method: ``ops.nms.batched_nms`` method; "offset" (default, fastest) equals
            torchvision's CPU path up to 1000 candidates, "torchvision_cpu" is bit-exact always.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call args:
        class_logits: (B, R, K). box_deltas: (B, R, K, 4) (or (B, R, 1, 4) when agnostic).
        rois: (B, R, 4) xyxy. roi_valid: (B, R) bool. image_sizes: (B, 2) int (height, width).

    Returns:
        dict boxes (B, D, 4), scores (B, D), classes (B, D) int32, num_detections (B,) int32,
        roi_index (B, D) int32 (see ``ops.postprocess.generate_detections``).
    """

    def __init__(self, score_threshold=0.05, nms_threshold=0.5, detections_per_image=100,
                 min_size=1e-2, box_weights=box_ops.ROI_BOX_WEIGHTS,
                 scale_clip=box_ops.DEFAULT_DELTA_CLIP, class_agnostic_boxes=False,
                 nms_method="offset", **kwargs):
        kwargs.pop("autocast", None)
        # autocast=False: geometry stays float32 under a mixed policy (inputs are cast here).
        super().__init__(autocast=False, **kwargs)
        if nms_method not in nms_ops.METHODS:
            raise ValueError(f"nms_method must be one of {nms_ops.METHODS}, got {nms_method!r}")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.detections_per_image = int(detections_per_image)
        self.min_size = float(min_size)
        self.box_weights = tuple(float(w) for w in box_weights)
        if len(self.box_weights) != 4:
            raise ValueError(f"box_weights must have 4 entries, got {box_weights}")
        self.scale_clip = float(scale_clip)
        self.class_agnostic_boxes = bool(class_agnostic_boxes)
        self.nms_method = nms_method

    def call(self, class_logits, box_deltas, rois, roi_valid, image_sizes):
        expected = 1 if self.class_agnostic_boxes else class_logits.shape[-1]
        if box_deltas.shape[2] is not None and expected is not None \
                and box_deltas.shape[2] != expected:
            raise ValueError(f"{self.name}: box_deltas {box_deltas.shape} does not match "
                             f"class_logits {class_logits.shape} (class_agnostic_boxes="
                             f"{self.class_agnostic_boxes})")
        return generate_detections(
            class_logits, box_deltas, rois, roi_valid, image_sizes,
            score_threshold=self.score_threshold, nms_threshold=self.nms_threshold,
            detections_per_image=self.detections_per_image, min_size=self.min_size,
            box_weights=self.box_weights, scale_clip=self.scale_clip,
            nms_method=self.nms_method)

    def get_config(self):
        config = super().get_config()
        config.update({
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "detections_per_image": self.detections_per_image,
            "min_size": self.min_size,
            "box_weights": list(self.box_weights),
            "scale_clip": self.scale_clip,
            "class_agnostic_boxes": self.class_agnostic_boxes,
            "nms_method": self.nms_method,
        })
        return config
