"""The method as pure tensor functions (no Keras layers, no state, no config). NHWC, xyxy boxes.

One module per step of the papers (He et al. 2017 Mask R-CNN; Ren et al. 2015 Faster R-CNN;
Lin et al. 2017 FPN; Girshick 2015 Fast R-CNN), each opening with the section it implements
and pinning its conventions against torchvision:
    ``boxes``        box coder, IoU, clipping (Fast R-CNN §2.3, Faster R-CNN §3.1.2)
    ``anchors``      anchors per level and their order (Faster R-CNN §3.1.1, FPN §4.1)
    ``matching``     IoU matcher, balanced sampler, padded gathers (Faster R-CNN §3.1.2-3.1.3)
    ``proposals``    top-k per level, decode, clip, NMS (Faster R-CNN §3.1, §3.3; FPN §4.1)
    ``targets``      anchor and RoI labels, sampling, box targets (Mask R-CNN §3.1)
    ``roi_align``    RoIAlign and FPN level assignment (Mask R-CNN §3; FPN §4.2)
    ``roi_align_adaptive``  RoIAlign with adaptive sampling (detectron2's ROIAlignV2)
    ``roi_bins``     RoIAlign's bin geometry shared by both samplers
    ``nms``          batched, class-aware NMS (Faster R-CNN §3.3)
    ``postprocess``  detections from the box head (Mask R-CNN §3.1 "Inference")
    ``masks``        mask targets and pasting (Mask R-CNN §3, §3.1)
    ``keypoints``    keypoint targets and decoding (Mask R-CNN §5)
    ``dense_matching``, ``nms_fast``, ``prototype_masks``  YOLACT (Bolya et al. 2019): anchor
                     matching and hard negatives, Fast NMS (§3.3), mask assembly and crop (§3.2)

The functions ``roi_align`` and ``roi_align_adaptive`` are not re-exported here: each name is
its module's (``from keras_maskrcnn.ops.roi_align import roi_align``).
"""
from keras_maskrcnn.ops.anchors import (cell_anchors, feature_keys, fpn_feature_sizes,
                                        grid_anchors, level_sizes, multilevel_anchors,
                                        yolact_anchors)
from keras_maskrcnn.ops.boxes import (DEFAULT_DELTA_CLIP, ROI_BOX_WEIGHTS, RPN_BOX_WEIGHTS, area,
                                      clip_boxes, decode_boxes, encode_boxes, pairwise_iou,
                                      small_box_mask, xywh_to_xyxy, xyxy_to_xywh)
from keras_maskrcnn.ops.dense_matching import hard_negative_mask, match_anchors
from keras_maskrcnn.ops.keypoints import heatmaps_to_keypoints, keypoints_to_heatmap
from keras_maskrcnn.ops.masks import paste_masks, project_masks_on_boxes
from keras_maskrcnn.ops.matching import gather_or_pad, match_boxes, sample_balanced
from keras_maskrcnn.ops.nms import batched_nms
from keras_maskrcnn.ops.nms_fast import fast_nms, standard_nms
from keras_maskrcnn.ops.postprocess import decode_class_boxes, generate_detections
from keras_maskrcnn.ops.proposals import generate_proposals, top_k_per_level
from keras_maskrcnn.ops.prototype_masks import (assemble_mask_logits, assemble_masks, crop_masks,
                                                downsample_gt_masks, masks_to_image)
from keras_maskrcnn.ops.roi_align import assign_fpn_levels, multilevel_roi_align, roi_align_indexed
from keras_maskrcnn.ops.targets import (assign_anchor_targets, foreground_slots, label_candidates,
                                        replica_seed, rpn_targets, sample_rois,
                                        scatter_sampled_labels, used_gt_rows)

__all__ = [
    "DEFAULT_DELTA_CLIP", "ROI_BOX_WEIGHTS", "RPN_BOX_WEIGHTS", "area", "assign_anchor_targets",
    "assign_fpn_levels", "batched_nms", "cell_anchors", "clip_boxes", "decode_boxes",
    "decode_class_boxes", "encode_boxes", "feature_keys", "foreground_slots",
    "fpn_feature_sizes", "gather_or_pad", "generate_detections", "generate_proposals",
    "grid_anchors", "heatmaps_to_keypoints", "keypoints_to_heatmap", "label_candidates",
    "level_sizes", "match_boxes", "multilevel_anchors", "multilevel_roi_align", "pairwise_iou",
    "paste_masks", "project_masks_on_boxes", "replica_seed", "roi_align_indexed",
    "rpn_targets", "sample_balanced", "sample_rois", "scatter_sampled_labels", "small_box_mask",
    "top_k_per_level", "used_gt_rows", "xywh_to_xyxy", "xyxy_to_xywh",
    # YOLACT (Bolya et al. 2019)
    "yolact_anchors", "match_anchors", "hard_negative_mask", "fast_nms", "standard_nms",
    "assemble_mask_logits", "assemble_masks", "crop_masks", "downsample_gt_masks",
    "masks_to_image",
]
