"""The hyper-parameter tables of Mask R-CNN (He et al. 2017, section 3.1 "Implementation
Details"), FPN (Lin et al. 2017, section 4) and Faster R-CNN (Ren et al. 2015, section 3.1), as
frozen dataclasses: one section per table, one line per hyper-parameter.

Each field reads ``name: type = param(default, rule, meaning, source)``: ``rule`` is checked on
every value (``fields.py``), ``source`` says where the default comes from: ``paper`` (the papers
above), ``torchvision`` (``maskrcnn_resnet50_fpn``, the parity target; tests/config/test_config.py
compares), ``Detectron`` (Detectron / detectron2 settings) or ``ours``. Cross-field rules live in
each section's ``validate()``.

Conventions pinned here:
- ``model.num_classes`` INCLUDES background (torchvision style): COCO contiguous = 81.
- Learning rate: ``train.learning_rate = base_learning_rate * batch_size / reference_batch_size``
  (linear scaling rule; the paper's 0.02 is for a global batch of 16). Step counts are not scaled.
- Anchor aspect ratio = h / w; ``anchors.sizes`` has one size per pyramid level min..max_level.
- Data paths are relative to the working directory.
- ``model.architecture: yolact`` (Bolya et al. 2019, "YOLACT") reads ``model.yolact``,
  ``model.backbone`` and ``model.fpn.channels``; its FPN (C3..C5 -> P3..P7), prototype net and
  prediction head are fixed by the architecture, and the Mask R-CNN sections are ignored.
  Source ``YOLACT``: the paper or its reference code (``yolact_base_config``).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal, Optional, Tuple

from .fields import (DETECTRON, OURS, PAPER, TORCHVISION, YOLACT, Section, at_least, check,
                     in_range, non_empty, non_negative, param, positive, require, section, unit)

TV = TORCHVISION
ARCHITECTURES = ("mask_rcnn", "yolact")  # model.architecture choices
RESIZE_POLICIES = ("shorter_side", "fixed_square")  # input.resize choices (preprocessing.py)
ACCEL_MODES = ("auto", "on", "off")  # model.accel choices

_COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
_COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# COCO person skeleton (the annotation file's 1-based "skeleton", made 0-based).
_COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
_SCALE_CLIP = math.log(1000.0 / 16)  # torchvision BoxCoder bbox_xform_clip


def _check_matcher(obj):
    """Shared by the RPN and RoI heads: the background threshold lies below the foreground's."""
    require(obj.bg_iou_threshold <= obj.fg_iou_threshold, "bg_iou_threshold",
            f"must be <= fg_iou_threshold ({obj.fg_iou_threshold}), got {obj.bg_iou_threshold}")


# ----------------------------------------------------------------------------- model sections
@dataclasses.dataclass(frozen=True)
class BackboneConfig(Section):
    """ResNet / ResNeXt (Mask R-CNN section 3, "Network Architecture")."""

    name: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d",
                  "resnext101_32x8d", "resnext101_64x4d"] = param(
        "resnet50", None, "torchvision's model names: ResNet depth (v1.5: stride in the 3x3 "
        "conv) or ResNeXt depth_{groups}x{width_per_group}d (3x3 convs in `groups` groups, "
        "width int(planes * width_per_group / 64) * groups; detectron2's X101-FPN weights are "
        "32x8d)", PAPER)
    width_multiplier: float = param(
        1.0, in_range(0, 8, lo_open=True), "scales every channel count; < 1 for tiny test "
        "models", OURS)
    freeze_at: int = param(2, in_range(0, 5), "0 nothing frozen, 1 stem, 2 stem+res2, ..., 5 "
                           "all (torchvision trainable_layers=3)", DETECTRON)
    norm: Literal["frozen_bn"] = param("frozen_bn", None, "BatchNorm with frozen statistics "
                                       "and affine parameters", DETECTRON)
    stride_in_1x1: bool = param(
        False, None, "bottleneck stride on the first 1x1 conv (MSRA ResNet, detectron2's "
        "RESNETS.STRIDE_IN_1X1: true for its R50/R101 weights, false for X101) instead of the "
        "3x3 (torchvision v1.5); basic blocks ignore it", TV)
    bn_eps: float = param(
        1e-5, non_negative, "epsilon of every FrozenBatchNorm: torchvision's FrozenBatchNorm2d "
        "default 1e-5, but its V1 COCO detection weights (maskrcnn/fasterrcnn/keypointrcnn_"
        "resnet50_fpn COCO_V1) are run with 0 (overwrite_eps(model, 0.0) after loading); "
        "detectron2 uses 1e-5", TV)
    weights: Optional[str] = param(None, None, "backbone weights file (e.g. converted "
                                   "ImageNet); null = random")
    variant: Literal["fpn", "c4"] = param(
        "fpn", None, "fpn: C2..C5 -> FPN, RoIs pooled from P2..P5 (model.fpn, model.roi_align "
        "levels, model.box_head's MLP). c4: Mask R-CNN's ResNet-C4 (section 3; detectron2 "
        "Res5ROIHeads): res2..res4 only (stride 16, no FPN), the RPN on C4 with every "
        "anchors.sizes x aspect_ratios at each location, RoIAlign on C4 to box_head.pool_size "
        "= mask_head.pool_size (14), the res5 stage as a head shared by the box path (mean "
        "over 7x7, then the box predictor; box_head.num_fc / fc_dim unused) and the mask path "
        "(mask_head convs, if any, then its 2x2 deconv: masks of mask_head.pool_size, 14); "
        "no keypoint head", PAPER)

    def validate(self):
        # ResNeXt: the narrowest bottleneck (planes 64, scaled) keeps >= 1 channel per group.
        match = re.fullmatch(r"resnext\d+_(\d+)x(\d+)d", self.name)
        if match:
            planes = max(1, int(round(64 * self.width_multiplier)))
            require(planes * int(match.group(2)) >= 64, "width_multiplier",
                    f"{self.width_multiplier} leaves res2 of {self.name} less than one channel "
                    f"per group (int({planes} * {match.group(2)} / 64) = 0)")


@dataclasses.dataclass(frozen=True)
class FPNConfig(Section):
    """Feature Pyramid Network (FPN section 3 and 4.1)."""

    channels: int = param(256, positive, "channels d of every pyramid level", PAPER)
    min_level: int = param(2, in_range(2, 5), "finest output P{min_level}, from backbone "
                           "C{min_level}", PAPER)
    max_level: int = param(6, in_range(5, 6), "6 adds P6 = max_pool(P5, kernel 1, stride 2); "
                           "5 = no extra level", PAPER)

    @property
    def levels(self) -> Tuple[str, ...]:
        """Pyramid level names, finest first: ("P2", ..., "P6")."""
        return tuple(f"P{i}" for i in range(self.min_level, self.max_level + 1))


@dataclasses.dataclass(frozen=True)
class AnchorConfig(Section):
    """Anchors (FPN section 4.1: one scale per level, three aspect ratios)."""

    sizes: Tuple[float, ...] = param((32.0, 64.0, 128.0, 256.0, 512.0), (non_empty, positive),
                                     "sqrt(area) of the anchors, one per level", PAPER)
    aspect_ratios: Tuple[float, ...] = param((0.5, 1.0, 2.0), (non_empty, positive),
                                             "h / w, the same on every level", PAPER)
    rounded: bool = param(True, None, "cell-anchor corners rounded to integers (torchvision); "
                          "false: unrounded (detectron2's DefaultAnchorGenerator)", TV)
    nominal_strides: bool = param(False, None, "stride of level Pl is 2**l (detectron2); false: "
                                  "padded input size // feature size per axis (torchvision: "
                                  "61, not 64, for a 13-row P6 of an 800-row input)", TV)


@dataclasses.dataclass(frozen=True)
class RPNConfig(Section):
    """Region Proposal Network (Faster R-CNN section 3.1; FPN section 4.1)."""

    num_convs: int = param(1, at_least(1), "shared 3x3 conv + ReLU layers before the 1x1 "
                           "predictors", PAPER)
    pre_nms_top_n_train: int = param(2000, positive, "proposals kept per level and image "
                                     "before NMS, training", TV)
    pre_nms_top_n_test: int = param(1000, positive, "the same, inference", TV)
    post_nms_top_n_train: int = param(2000, positive, "proposals kept per image after NMS "
                                      "over all levels, training", TV)
    post_nms_top_n_test: int = param(1000, positive, "the same, inference", TV)
    nms_threshold: float = param(0.7, unit, "IoU threshold of the proposal NMS", PAPER)
    min_size: float = param(1e-3, non_negative, "proposals with a side smaller than this "
                            "(pixels) are removed", TV)
    score_threshold: float = param(0.0, unit, "on sigmoid(objectness)", TV)
    proposal_filter: Literal["torchvision", "detectron2"] = param(
        "torchvision", None, "detectron2: sides > min_size (use min_size 0), NMS ranked by "
        "logits, no score threshold; torchvision: sides >= min_size, sigmoid scores", TV)
    fg_iou_threshold: float = param(0.7, unit, "anchors with IoU >= this are positive", PAPER)
    bg_iou_threshold: float = param(0.3, unit, "anchors with IoU < this are negative", PAPER)
    allow_low_quality_matches: bool = param(True, None, "each GT's best anchors are positive "
                                            "too", PAPER)
    batch_size_per_image: int = param(256, positive, "sampled anchors per image for the loss",
                                      PAPER)
    positive_fraction: float = param(0.5, unit, "at most this fraction of them positive", PAPER)
    box_weights: Tuple[float, float, float, float] = param(
        (1.0, 1.0, 1.0, 1.0), positive, "(wx, wy, ww, wh) of the box coder", TV)
    scale_clip: float = param(_SCALE_CLIP, positive, "dw, dh clipped at this before exp when "
                              "decoding: log(1000 / 16)", DETECTRON)
    smooth_l1_beta: float = param(1.0 / 9, non_negative, "smooth L1 transition point of the "
                                  "box loss", TV)

    def validate(self):
        _check_matcher(self)


@dataclasses.dataclass(frozen=True)
class RoIAlignConfig(Section):
    """RoIAlign (Mask R-CNN section 3) and the FPN level of a RoI (FPN section 4.2, eq. 1)."""

    aligned: bool = param(True, None, "half-pixel shift (detectron2 too); torchvision's "
                          "models use False", PAPER)
    sampling_ratio: int = param(2, non_negative, "samples per bin side; 0 = adaptive, "
                                "ceil(roi side / output side) per bin and RoI (detectron2)", TV)
    level_mapping: Literal["torchvision", "detectron2"] = param(
        "torchvision", None, "torchvision: floor(k0 + log2(sqrt(area) / 224) + 1e-6); "
        "detectron2: floor(k0 + log2(sqrt(area) / 224 + 1e-8))", TV)
    canonical_size: float = param(224.0, positive, "level = floor(canonical_level + "
                                  "log2(sqrt(area) / canonical_size))", PAPER)
    canonical_level: int = param(4, None, "k0: the level of a canonical_size RoI", PAPER)
    min_level: int = param(2, None, "RoIs are pooled from P{min_level}..P{max_level}", PAPER)
    max_level: int = param(5, None, "see min_level", PAPER)

    def validate(self):
        require(self.min_level <= self.max_level, "max_level",
                f"must be >= min_level ({self.min_level}), got {self.max_level}")
        check(self, "canonical_level", in_range(self.min_level, self.max_level))


@dataclasses.dataclass(frozen=True)
class RoIHeadsConfig(Section):
    """RoI sampling and detection post-processing (Mask R-CNN section 3.1)."""

    fg_iou_threshold: float = param(0.5, unit, "RoIs with IoU >= this are positive", PAPER)
    bg_iou_threshold: float = param(0.5, unit, "RoIs with IoU < this are negative", PAPER)
    allow_low_quality_matches: bool = param(False, None, "each GT's best RoIs are positive "
                                            "too", TV)
    batch_size_per_image: int = param(512, positive, "sampled RoIs per image (64 for C4)",
                                      PAPER)
    positive_fraction: float = param(0.25, unit, "positives:negatives 1:3", PAPER)
    add_gt_as_proposals: bool = param(True, None, "GT boxes join the proposals in training", TV)
    box_weights: Tuple[float, float, float, float] = param(
        (10.0, 10.0, 5.0, 5.0), positive, "(wx, wy, ww, wh) of the box coder", DETECTRON)
    scale_clip: float = param(_SCALE_CLIP, positive, "dw, dh clip: log(1000 / 16)", DETECTRON)
    smooth_l1_beta: float = param(1.0 / 9, non_negative, "smooth L1 transition point of the "
                                  "box loss", TV)
    score_threshold: float = param(0.05, unit, "inference: detections below are dropped", TV)
    nms_threshold: float = param(0.5, unit, "inference: per-class NMS IoU threshold", TV)
    min_size: float = param(1e-2, non_negative, "inference: detections with a side smaller "
                            "than this are dropped", TV)
    detections_per_image: int = param(100, positive, "inference: top detections kept", PAPER)

    def validate(self):
        _check_matcher(self)


@dataclasses.dataclass(frozen=True)
class BoxHeadConfig(Section):
    """Box head: 2-fc MLP on 7x7 RoIAlign features (FPN section 4.2)."""

    pool_size: int = param(7, positive, "RoIAlign output side", PAPER)
    num_fc: int = param(2, positive, "hidden fully connected layers", PAPER)
    fc_dim: int = param(1024, positive, "their width", PAPER)


@dataclasses.dataclass(frozen=True)
class MaskHeadConfig(Section):
    """Mask head (Mask R-CNN section 3 and Figure 4, right: FPN head)."""

    enabled: bool = param(True, None, "false: Faster R-CNN")
    pool_size: int = param(14, positive, "RoIAlign output; predicted masks are 2 * pool_size "
                           "(28)", PAPER)
    num_convs: int = param(4, non_negative, "3x3 convs before the 2x2 stride-2 deconv", PAPER)
    conv_dim: int = param(256, positive, "their channels", PAPER)
    class_agnostic: bool = param(False, None, "true: one mask channel instead of num_classes",
                                 PAPER)
    threshold: float = param(0.5, unit, "binarisation of pasted masks", PAPER)
    paste: Literal["torchvision", "detectron2"] = param(
        "torchvision", None, "torchvision: 1-pixel padded mask resized to the integer box, on "
        "> threshold; detectron2: sampled at pixel centres in the float box, on >= threshold",
        TV)

    @property
    def mask_size(self) -> int:
        """2 * pool_size, the FPN head's; the model reads ``ModelConfig.mask_size`` (C4: the
        pool size)."""
        return 2 * self.pool_size


@dataclasses.dataclass(frozen=True)
class KeypointHeadConfig(Section):
    """Keypoint head (Mask R-CNN section 5, "Implementation Details")."""

    enabled: bool = param(False, None, "true: Keypoint R-CNN")
    pool_size: int = param(14, positive, "RoIAlign output; heatmaps are 4 * pool_size (56)",
                           PAPER)
    num_keypoints: int = param(17, positive, "keypoints per instance (COCO person: 17)", PAPER)
    num_convs: int = param(8, positive, "3x3 convs before the deconv", PAPER)
    conv_dim: int = param(512, positive, "their channels", PAPER)
    keypoint_names: Tuple[str, ...] = param(_COCO_KEYPOINT_NAMES, None, "one per keypoint "
                                            "(COCO order)", TV)
    flip_pairs: Tuple[Tuple[int, int], ...] = param(_COCO_FLIP_PAIRS, None, "swapped by a "
                                                    "horizontal flip (left/right)", TV)
    skeleton: Tuple[Tuple[int, int], ...] = param(_COCO_SKELETON, None, "0-based edges, for "
                                                  "drawing only")
    score: Literal["logit", "detectron2"] = param(
        "logit", None, "keypoint score: the resized heatmap's logit at the peak (torchvision) "
        "or detectron2's softmax there normalised over the heatmap", TV)
    coordinate_offset: float = param(
        0.0, None, "added to predicted x and y in original pixels in COCO results only "
        "(detect and the exports return the predictor's); -0.5 for detectron2 models, whose "
        "COCO evaluator subtracts half a pixel", TV)
    category_ids: Optional[Tuple[int, ...]] = param(
        None, None, "dataset category ids (as model.category_ids) of the classes with "
        "keypoints; null = those whose COCO category has a non-empty keypoints list when only "
        "some have one (filled in at training), else every class", OURS)

    def validate(self):
        k = self.num_keypoints
        require(len(self.keypoint_names) == k, "keypoint_names",
                f"has {len(self.keypoint_names)} names, num_keypoints is {k}")
        require(len(set(self.keypoint_names)) == k, "keypoint_names", "names must be unique")
        for name in ("flip_pairs", "skeleton"):
            for i, (a, b) in enumerate(getattr(self, name)):
                require(0 <= a < k and 0 <= b < k and a != b, f"{name}[{i}]",
                        f"needs two different indices in [0, {k - 1}], got {(a, b)}")
        flat = [i for pair in self.flip_pairs for i in pair]
        require(len(set(flat)) == len(flat), "flip_pairs", "an index appears in two pairs")
        if self.category_ids is not None:
            require(len(self.category_ids) > 0 and len(set(self.category_ids)) == len(
                self.category_ids), "category_ids", "must be non-empty and unique (null: "
                "every class)")

    @property
    def heatmap_size(self) -> int:
        return 4 * self.pool_size

    @property
    def flip_indices(self) -> Tuple[int, ...]:
        """Permutation applied to the keypoint axis by a horizontal flip."""
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return tuple(perm)


@dataclasses.dataclass(frozen=True)
class LossWeightsConfig(Section):
    """Multi-task loss L = L_cls + L_box + L_mask (Mask R-CNN section 3), one weight a term."""

    rpn_objectness: float = param(1.0, non_negative, "RPN objectness BCE", PAPER)
    rpn_box: float = param(1.0, non_negative, "RPN box smooth L1", PAPER)
    box_classification: float = param(1.0, non_negative, "L_cls", PAPER)
    box_regression: float = param(1.0, non_negative, "L_box", PAPER)
    mask: float = param(1.0, non_negative, "L_mask", PAPER)
    keypoint: float = param(1.0, non_negative, "keypoint softmax cross entropy", PAPER)


@dataclasses.dataclass(frozen=True)
class YolactConfig(Section):
    """YOLACT (Bolya et al. 2019, sections 3 and 4): prototypes, anchors, matching, losses and
    Fast NMS; read only with ``model.architecture: yolact``."""

    num_prototypes: int = param(32, positive, "k prototype masks (and coefficients per "
                                "anchor)", YOLACT)
    anchor_scales: Tuple[float, ...] = param(
        (24.0, 48.0, 96.0, 192.0, 384.0), (non_empty, positive), "anchor side per level "
        "P3..P7, in pixels of a 550 input (scaled by the input size / 550)", YOLACT)
    aspect_ratios: Tuple[float, ...] = param((1.0, 0.5, 2.0), (non_empty, positive),
                                             "w / h, the same on every level", YOLACT)
    square_anchors: bool = param(True, None, "ratio r gives a square of side s * sqrt(r) (the "
                                 "released v1 weights); false: w = s sqrt(r), h = s / sqrt(r)",
                                 YOLACT)
    pos_threshold: float = param(0.5, unit, "anchors with IoU >= this are positive", YOLACT)
    neg_threshold: float = param(0.4, unit, "anchors with IoU < this are background", YOLACT)
    crowd_threshold: float = param(0.7, unit, "non-positive anchors covered more than this "
                                   "(intersection / anchor area) by a crowd box are ignored",
                                   YOLACT)
    negpos_ratio: int = param(3, positive, "hard negatives per positive (class loss)", YOLACT)
    max_masks: int = param(100, positive, "masks trained per image, at most", YOLACT)
    box_loss_weight: float = param(1.5, non_negative, "smooth L1 box loss", YOLACT)
    class_loss_weight: float = param(1.0, non_negative, "class confidence loss", YOLACT)
    mask_loss_weight: float = param(6.125, non_negative, "prototype mask BCE", YOLACT)
    semantic_loss_weight: float = param(1.0, non_negative, "semantic segmentation BCE on P3",
                                        YOLACT)
    score_threshold: float = param(0.05, unit, "inference: anchors whose best foreground score "
                                   "is not above this are dropped", YOLACT)
    nms_threshold: float = param(0.5, unit, "inference: NMS IoU threshold", YOLACT)
    top_k: int = param(200, positive, "inference: candidates per class entering NMS", YOLACT)
    detections_per_image: int = param(100, positive, "inference: top detections kept", YOLACT)
    fast_nms: bool = param(True, None, "Fast NMS (paper section 3.3); false: standard greedy "
                           "NMS on the same candidates", YOLACT)
    mask_threshold: float = param(0.5, unit, "binarisation of masks resized to the image",
                                  YOLACT)

    def validate(self):
        require(self.neg_threshold <= self.pos_threshold, "neg_threshold",
                f"must be <= pos_threshold ({self.pos_threshold}), got {self.neg_threshold}")
        require(len(self.anchor_scales) == 5, "anchor_scales",
                f"needs one scale per level P3..P7 (5), got {len(self.anchor_scales)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The detector: meta-architecture, class count and one section per part."""

    num_classes: int = param(81, at_least(2), "INCLUDING background (id 0); COCO: 80 "
                             "contiguous ids + background = 81", OURS)
    backbone: BackboneConfig = section(BackboneConfig)
    fpn: FPNConfig = section(FPNConfig)
    anchors: AnchorConfig = section(AnchorConfig)
    rpn: RPNConfig = section(RPNConfig)
    roi_align: RoIAlignConfig = section(RoIAlignConfig)
    roi_heads: RoIHeadsConfig = section(RoIHeadsConfig)
    box_head: BoxHeadConfig = section(BoxHeadConfig)
    mask_head: MaskHeadConfig = section(MaskHeadConfig)
    keypoint_head: KeypointHeadConfig = section(KeypointHeadConfig)
    loss_weights: LossWeightsConfig = section(LossWeightsConfig)
    yolact: YolactConfig = section(YolactConfig)
    dtype_policy: Literal["float32", "mixed_bfloat16", "mixed_float16"] = param(
        "float32", None, "Keras dtype policy of the model's layers", OURS)
    weights: Optional[str] = param(None, None, "whole-model weights to start from; null = none")
    architecture: Literal[ARCHITECTURES] = param(
        "mask_rcnn", None, "meta-architecture builders.build_model assembles", OURS)
    accel: Literal[ACCEL_MODES] = param(
        "auto", None, "CPU-acceleration kernels (keras_maskrcnn/accel): auto = on when "
        "TensorFlow sees no GPU or TPU", OURS, from_bool=("off", "on"))
    category_ids: Optional[Tuple[int, ...]] = param(
        None, None, "dataset category id of each contiguous class 1..K-1 (detect labels, "
        "export, evaluation); null = the contiguous ids (converted YOLACT COCO weights set the "
        "80 COCO ids)", OURS)

    def validate(self):
        if self.category_ids is not None:
            require(len(self.category_ids) == self.num_classes - 1, "category_ids",
                    f"needs num_classes - 1 = {self.num_classes - 1} ids, got "
                    f"{len(self.category_ids)}")
        kp_ids = self.keypoint_head.category_ids
        if kp_ids is not None and self.category_ids is not None:
            require(set(kp_ids) <= set(self.category_ids), "keypoint_head.category_ids",
                    f"{sorted(set(kp_ids) - set(self.category_ids))} not in category_ids")
        if self.backbone.variant == "c4":
            self._validate_c4()
        else:
            self._validate_fpn_levels()

    def _validate_fpn_levels(self):
        """backbone.variant fpn: one anchor size per level, RoIs pooled from FPN levels."""
        num_levels = self.fpn.max_level - self.fpn.min_level + 1
        require(len(self.anchors.sizes) == num_levels, "anchors.sizes",
                f"needs one size per FPN level P{self.fpn.min_level}..P{self.fpn.max_level} "
                f"({num_levels}), got {len(self.anchors.sizes)}")
        for name in ("min_level", "max_level"):
            level = getattr(self.roi_align, name)
            require(self.fpn.min_level <= level <= self.fpn.max_level, f"roi_align.{name}",
                    f"P{level} is not an FPN level ({', '.join(self.fpn.levels)})")

    def _validate_c4(self):
        """backbone.variant c4: one shared 14x14 pooling, res5 halves it (mask size = pool)."""
        require(not self.keypoint_head.enabled, "keypoint_head.enabled",
                "backbone.variant c4 has no keypoint head (detectron2 has none either): use "
                "variant fpn, or keypoint_head.enabled false")
        size = self.box_head.pool_size
        require(size % 2 == 0, "box_head.pool_size",
                f"backbone.variant c4 pools RoIs for the stride-2 res5 head: needs an even "
                f"size (14), got {size}")
        if self.mask_head.enabled:
            require(self.mask_head.pool_size == size, "mask_head.pool_size",
                    f"backbone.variant c4 shares one RoIAlign size between the box and mask "
                    f"paths: must equal box_head.pool_size ({size}), got "
                    f"{self.mask_head.pool_size}")

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks and mask targets: 2 * pool_size (FPN, 28), or the pool
        size itself with C4 (res5 halves the 14x14 RoIs, the 2x2 deconv doubles them)."""
        pool = self.mask_head.pool_size
        return pool if self.backbone.variant == "c4" else self.mask_head.mask_size


# ----------------------------------------------------------------------------- other sections
@dataclasses.dataclass(frozen=True)
class InputConfig(Section):
    """Image resizing and normalisation (torchvision GeneralizedRCNNTransform; YOLACT: a
    fixed square and its BGR mean (103.94, 116.78, 123.68) / std (57.38, 57.12, 58.40), here
    in RGB order / 255: pixel_mean (123.68, 116.78, 103.94) / 255, pixel_std (58.40, 57.12,
    57.38) / 255, see configs/yolact_*)."""

    resize: Literal[RESIZE_POLICIES] = param(
        "shorter_side", None, "shorter_side: min_size_* / max_size (torchvision); "
        "fixed_square: size x size, aspect ratio not kept (YOLACT)", OURS)
    size: int = param(550, positive, "fixed_square: the square's side", YOLACT)
    resize_style: Literal["torchvision", "detectron2"] = param(
        "torchvision", None, "shorter_side at inference: torchvision (floor sizes, float "
        "bilinear) or detectron2 (int(x + 0.5) sizes, antialiased bilinear on uint8 as PIL)", TV)

    min_size_train: Tuple[int, ...] = param((800,), (non_empty, positive), "shorter-side sizes "
                                            "for training scale jitter", TV)
    min_size_train_sampling: Literal["choice", "range"] = param(
        "choice", None, "choice: one of min_size_train; range: uniform in [lo, hi]", DETECTRON)
    min_size_test: int = param(800, positive, "shorter side at inference", TV)
    max_size: int = param(1333, positive, "longer side cap (the shorter side then ends up "
                          "below min_size)", TV)
    size_divisor: int = param(32, positive, "pad bottom/right to a multiple of this", TV)
    pixel_mean: Tuple[float, float, float] = param((0.485, 0.456, 0.406), None, "RGB in [0, 1]",
                                                   TV)
    pixel_std: Tuple[float, float, float] = param((0.229, 0.224, 0.225), positive, "RGB", TV)
    max_instances: int = param(100, positive, "GT per image, padded with -1 (static shapes)")
    # GT masks as the pipeline hands them to the model (ops/masks.py, data/pipeline.py).
    gt_mask_format: Literal["full", "cropped"] = param(
        "full", None, "full: (M, Hp, Wp) image masks, targets exactly torchvision's; cropped: "
        "(M, S, S) crops of each GT box widened by 1/16 per side, host memory independent of "
        "the image size (Mask R-CNN only; not with data.augment ssd)", TV)
    gt_mask_size: int = param(112, at_least(2), "S, the crops' side (cropped format)", OURS)

    def validate(self):
        if self.min_size_train_sampling == "range":
            lo_hi = self.min_size_train
            require(len(lo_hi) == 2 and lo_hi[0] <= lo_hi[1], "min_size_train",
                    f"sampling 'range' needs [min, max] with min <= max, got {list(lo_hi)}")
        largest = max(self.min_size_train + (self.min_size_test,))
        require(self.max_size >= largest, "max_size",
                f"must be >= the largest min size ({largest}), got {self.max_size}")


@dataclasses.dataclass(frozen=True)
class DataSplitConfig(Section):
    """One dataset split: where its images and annotations are."""

    format: Literal["coco", "tfrecord", "synthetic"] = param("coco")
    annotations: Optional[str] = param(None, None, "coco: instances json")
    images: Optional[str] = param(None, None, "coco: image directory")
    tfrecords: Optional[str] = param(None, None, "tfrecord: file glob (tf-models-official "
                                     "schema)")

    def validate(self):
        needs = {"coco": ("annotations", "images"), "tfrecord": ("tfrecords",), "synthetic": ()}
        for name in needs[self.format]:
            require(getattr(self, name) is not None, name,
                    f"is required for format {self.format!r}")


def _coco_split(split: str) -> DataSplitConfig:
    return DataSplitConfig("coco", f"data/coco/annotations/instances_{split}2017.json",
                           f"data/coco/{split}2017")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(Section):
    """The built-in shapes dataset, written in COCO format to ``output_dir``."""

    num_train: int = param(2000, positive, "training images")
    num_val: int = param(200, positive, "validation images")
    seed: int = param(0, non_negative)
    image_size: int = param(256, positive, "square image side")
    min_objects: int = param(1, positive, "objects per image, at least")
    max_objects: int = param(4, None, "objects per image, at most")
    output_dir: str = param("data/shapes")

    def validate(self):
        require(self.min_objects <= self.max_objects, "max_objects",
                f"must be >= min_objects ({self.min_objects}), got {self.max_objects}")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """The input pipeline: splits, augmentation and tf.data settings."""

    train: DataSplitConfig = section(lambda: _coco_split("train"))
    val: DataSplitConfig = section(lambda: _coco_split("val"))
    synthetic: SyntheticConfig = section(SyntheticConfig)
    flip_probability: float = param(0.5, unit, "horizontal flip in training (off when the "
                                    "ssd augmentation mirrors)", DETECTRON)
    augment: Literal["none", "ssd"] = param(
        "none", None, "training augmentation before the resize: ssd = photometric, expand, "
        "IoU-constrained crop, mirror, small-box drop (YOLACT's SSDAugmentation, "
        "data/augment.py)", OURS)
    filter_empty_images: bool = param(True, None, "training drops images without (non-crowd) "
                                      "instances", DETECTRON)
    shuffle_buffer: int = param(1000, non_negative, "0 = no shuffling")
    num_parallel_calls: Optional[int] = param(None, positive, "null = tf.data.AUTOTUNE")
    cache: bool = param(False)
    group_by_aspect_ratio: bool = param(
        True, None, "training batches hold images of one orientation (landscape h <= w, or "
        "portrait), padded to the batch's largest image; false = one static square size "
        "(max_size)", DETECTRON)
    strict: bool = param(
        False, None, "false: a COCO annotation with a defect (box of size <= 0 or outside its "
        "image, polygon of < 3 points, empty segmentation, unknown image or category id, "
        "malformed field) is left out and listed in the loader's report; true: the first one "
        "is an error naming the file, the annotation id and the field "
        "(keras_maskrcnn.data.coco_json)", OURS)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation (Mask R-CNN section 3.1, "Training"; schedule: Detectron's 1x)."""

    batch_size: int = param(16, positive, "global, over all replicas", PAPER)
    optimizer: Literal["sgd", "adamw"] = param("sgd", None, "sgd: momentum SGD", PAPER)
    base_learning_rate: float = param(0.02, positive, "for reference_batch_size; see "
                                      "learning_rate", PAPER)
    reference_batch_size: int = param(16, positive, "batch the base rate is for", PAPER)
    momentum: float = param(0.9, in_range(0, 1, hi_open=True), "sgd momentum (adamw: beta_1)",
                            PAPER)
    weight_decay: float = param(1e-4, non_negative, "L2 on the trainable weights", PAPER)
    total_steps: int = param(90000, positive, "the paper's is 160k", DETECTRON)
    lr_decay_steps: Tuple[int, ...] = param((60000, 80000), None, "lr *= lr_decay_factor at "
                                            "each step (the paper's: 120k)", DETECTRON)
    lr_decay_factor: float = param(0.1, in_range(0, 1, lo_open=True), "lr multiplier at each "
                                   "decay step", PAPER)
    warmup_steps: int = param(1000, None, "linear from warmup_factor * lr to lr", DETECTRON)
    warmup_factor: float = param(0.001, in_range(0, 1, lo_open=True), "warmup starts at this "
                                 "fraction of lr", DETECTRON)
    clip_gradient_norm: Optional[float] = param(None, positive, "global norm; null = no "
                                                "clipping")
    checkpoint_every: int = param(1000, positive, "steps")
    keep_checkpoints: int = param(5, positive)
    log_every: int = param(20, positive, "steps")
    steps_per_epoch: int = param(1000, positive, "Keras fit \"epoch\" length (callbacks run per "
                                 "epoch)")
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = param(
        "auto", None, "tf.distribute strategy")
    seed: int = param(0, non_negative)
    deterministic: bool = param(
        False, None, "true: two runs with the same seed give bit-identical weights on a CPU, "
        "and a resumed run the uninterrupted run's (training.enable_determinism; slower, see "
        "README.md)", OURS)
    output_dir: str = param("runs/maskrcnn")

    def validate(self):
        check(self, "warmup_steps", in_range(0, self.total_steps))
        check(self, "lr_decay_steps", in_range(1, self.total_steps))
        steps = self.lr_decay_steps
        require(all(a < b for a, b in zip(steps, steps[1:])), "lr_decay_steps",
                f"must be strictly increasing, got {list(steps)}")

    @property
    def learning_rate(self) -> float:
        """Peak learning rate after linear scaling: base * batch_size / reference_batch_size."""
        return self.base_learning_rate * self.batch_size / self.reference_batch_size


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """COCO evaluation during and after training, and the drawings it saves."""

    every_n_steps: Optional[int] = param(None, positive, "null = only after training")
    max_images: Optional[int] = param(None, positive, "null = the whole split")
    visualization_score_threshold: float = param(0.5, unit, "detections drawn above this")
    num_visualizations: int = param(8, non_negative, "images drawn")


@dataclasses.dataclass(frozen=True)
class ExportConfig(Section):
    """SavedModel export."""

    include_full_masks: bool = param(False, None, "also output masks pasted into the image "
                                     "(large)")


@dataclasses.dataclass(frozen=True)
class Config(Section):
    """The whole configuration: ``load_config`` builds one from YAML."""

    model: ModelConfig = section(ModelConfig)
    input: InputConfig = section(InputConfig)
    data: DataConfig = section(DataConfig)
    train: TrainConfig = section(TrainConfig)
    eval: EvalConfig = section(EvalConfig)
    export: ExportConfig = section(ExportConfig)

    def validate(self):
        if self.input.gt_mask_format == "cropped":  # crops live in each GT box's frame
            require(self.model.architecture == "mask_rcnn", "input.gt_mask_format",
                    f"cropped GT masks are for Mask R-CNN; {self.model.architecture!r} needs "
                    "full (its losses read the masks at prototype resolution)")
            require(self.data.augment == "none", "input.gt_mask_format",
                    f"cropped GT masks cannot go through data.augment {self.data.augment!r} "
                    "(its crop clips boxes without their masks): use full")
            require(self.model.roi_align.sampling_ratio > 0, "input.gt_mask_format",
                    "cropped GT masks sample a fixed grid per bin (model.roi_align."
                    "sampling_ratio >= 1); adaptive sampling (0) needs full masks")
