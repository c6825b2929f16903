"""Pure tensor functions (no Keras layers, no state, no config). NHWC, xyxy pixel boxes.

Each submodule pins its conventions in its docstring and is tested against torchvision:
``boxes``, ``anchors``, ``matching``, ``roi_ops`` (RoIAlign), ``nms``, ``masks``, ``keypoints``.
"""
from keras_maskrcnn.ops.anchors import (cell_anchors, fpn_feature_sizes, grid_anchors, multilevel_anchors,
                                       yolact_anchors)
from keras_maskrcnn.ops.dense_matching import hard_negative_mask, match_anchors
from keras_maskrcnn.ops.boxes import (area, clip_boxes, decode_boxes, encode_boxes, pairwise_iou,
                                      small_box_mask, xywh_to_xyxy, xyxy_to_xywh)
from keras_maskrcnn.ops.nms_fast import fast_nms, standard_nms
from keras_maskrcnn.ops.keypoints import heatmaps_to_keypoints, keypoints_to_heatmap
from keras_maskrcnn.ops.masks import paste_masks, project_masks_on_boxes
from keras_maskrcnn.ops.matching import match_boxes, sample_balanced
from keras_maskrcnn.ops.nms import batched_nms
from keras_maskrcnn.ops.prototype_masks import (assemble_mask_logits, assemble_masks, crop_masks,
                                                downsample_gt_masks, masks_to_image)
from keras_maskrcnn.ops.roi_ops import (assign_fpn_levels, multilevel_roi_align, roi_align,
                                        roi_align_indexed)

__all__ = [
    "area", "assign_fpn_levels", "batched_nms", "cell_anchors", "clip_boxes", "decode_boxes",
    "encode_boxes", "fpn_feature_sizes", "grid_anchors", "heatmaps_to_keypoints",
    "keypoints_to_heatmap", "match_boxes", "multilevel_anchors", "multilevel_roi_align",
    "pairwise_iou", "paste_masks", "project_masks_on_boxes", "roi_align", "roi_align_indexed",
    "sample_balanced", "small_box_mask", "xywh_to_xyxy", "xyxy_to_xywh",
    "fast_nms", "standard_nms", "yolact_anchors", "match_anchors", "hard_negative_mask",
    "assemble_mask_logits", "assemble_masks", "crop_masks", "downsample_gt_masks",
    "masks_to_image",
]
