"""Config -> parts and models: the one place that reads the ``model`` and ``input`` sections.

Layers and models take built parts and primitive constructor arguments only, so they never
see a config object. A model keeps the dict of the sections it was built from
(``config_dict``) only to be saved; ``from_config`` comes back here through
``models.base.register_builder``. The optimizer (``training.build_optimizer``) and the
datasets (``data.pipeline.dataset_from_config``) are built from their sections the same way.
"""
import dataclasses
import json
import logging

import keras

from keras_maskrcnn import accel, config as config_lib
from keras_maskrcnn.layers.anchor_generator import AnchorGenerator, YOLACTAnchorGenerator
from keras_maskrcnn.layers.dense_detection import AnchorMatcher, DenseDetectionGenerator
from keras_maskrcnn.layers.dense_head import DenseHead
from keras_maskrcnn.layers.detection_generator import DetectionGenerator
from keras_maskrcnn.layers.fpn import FPN
from keras_maskrcnn.layers.heads import (BoxHead, BoxPredictor, KeypointHead, KeypointPredictor,
                                         MaskHead, MaskPredictor)
from keras_maskrcnn.layers.protonet import Protonet
from keras_maskrcnn.layers.roi_pooler import RoIPooler
from keras_maskrcnn.layers.roi_sampler import RoISampler
from keras_maskrcnn.layers.rpn import ProposalGenerator, RPNHead
from keras_maskrcnn.models import base
from keras_maskrcnn.models.backbones import ResNet, arch_arguments
from keras_maskrcnn.models.mask_rcnn import MaskRCNN
from keras_maskrcnn.models.res5_head import Res5Head
from keras_maskrcnn.models.roi_branch import (KeypointBranch, MaskBranch, RCNNLossSettings,
                                               RoIBranch)
from keras_maskrcnn.models.yolact import YOLACT
from keras_maskrcnn.postprocessing import Postprocessor
from keras_maskrcnn.preprocessing import Preprocessor


def build_resnet(backbone_cfg, max_level=5):
    """The ResNet / ResNeXt body of ``model.backbone`` (name, width_multiplier, freeze_at, norm,
    stride_in_1x1, bn_eps), the same for every architecture; ``max_level`` 4 stops at res4
    (the C4 variant)."""
    b = backbone_cfg
    return ResNet(**arch_arguments(b.name), width_multiplier=b.width_multiplier,
                  freeze_at=b.freeze_at, norm=b.norm, stride_in_1x1=b.stride_in_1x1,
                  bn_eps=b.bn_eps, max_level=max_level, name="backbone")


def build_backbone(model_cfg):
    """(ResNet or ResNeXt, FPN) from ``model.backbone`` and ``model.fpn``; variant c4: (ResNet
    res2..res4, None)."""
    c4 = model_cfg.backbone.variant == "c4"
    resnet = build_resnet(model_cfg.backbone, max_level=4 if c4 else 5)
    return resnet, None if c4 else FPN(channels=model_cfg.fpn.channels, name="fpn")


def build_res5_head(model_cfg):
    """The shared res5 RoI head of ``model.backbone.variant`` c4 (None for fpn): the stage the
    backbone leaves out, with its settings."""
    b = model_cfg.backbone
    if b.variant != "c4":
        return None
    return Res5Head(**arch_arguments(b.name), width_multiplier=b.width_multiplier,
                    stride_in_1x1=b.stride_in_1x1, bn_eps=b.bn_eps, freeze_at=b.freeze_at,
                    name="res5_head")


def build_anchor_generator(model_cfg):
    """``AnchorGenerator`` of ``model.anchors`` on the RPN's levels: one size per FPN level,
    or (C4) every size on the one C4 level."""
    a, c4 = model_cfg.anchors, model_cfg.backbone.variant == "c4"
    return AnchorGenerator(
        levels=("C4",) if c4 else model_cfg.fpn.levels,
        sizes=[tuple(a.sizes)] if c4 else [(s,) for s in a.sizes],
        aspect_ratios=a.aspect_ratios, rounded=a.rounded, nominal_strides=a.nominal_strides,
        name="anchor_generator")


def build_roi_pooler(model_cfg, output_size, name):
    """``RoIPooler`` of ``model.roi_align`` to ``output_size``: FPN levels P{min}..P{max}, or
    (C4) the one C4 level."""
    a = model_cfg.roi_align
    levels = (("C4",) if model_cfg.backbone.variant == "c4"
              else tuple(f"P{l}" for l in range(a.min_level, a.max_level + 1)))
    return RoIPooler(output_size, levels=levels, canonical_size=a.canonical_size,
                     canonical_level=a.canonical_level, level_mapping=a.level_mapping,
                     sampling_ratio=a.sampling_ratio, aligned=a.aligned, name=name)


def build_rpn(model_cfg, num_anchors):
    """(RPNHead, ProposalGenerator) from ``model.rpn``: the head predicts ``num_anchors`` (the
    anchor generator's A) per location; the generator holds the proposal and target settings."""
    r = model_cfg.rpn
    head = RPNHead(num_anchors=num_anchors,
                   num_convs=r.num_convs, name="rpn_head")
    generator = ProposalGenerator(
        pre_nms_top_n_train=r.pre_nms_top_n_train, pre_nms_top_n_test=r.pre_nms_top_n_test,
        post_nms_top_n_train=r.post_nms_top_n_train, post_nms_top_n_test=r.post_nms_top_n_test,
        nms_threshold=r.nms_threshold, min_size=r.min_size, score_threshold=r.score_threshold,
        box_weights=tuple(r.box_weights), scale_clip=r.scale_clip,
        proposal_filter=r.proposal_filter, fg_iou_threshold=r.fg_iou_threshold,
        bg_iou_threshold=r.bg_iou_threshold,
        allow_low_quality_matches=r.allow_low_quality_matches,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        seed=r.batch_size_per_image,  # the seed this model always had
        name="proposal_generator")
    return head, generator


def build_roi_sampler(model_cfg, seed=None):
    h = model_cfg.roi_heads
    return RoISampler(
        fg_iou_threshold=h.fg_iou_threshold, bg_iou_threshold=h.bg_iou_threshold,
        allow_low_quality_matches=h.allow_low_quality_matches,
        batch_size_per_image=h.batch_size_per_image, positive_fraction=h.positive_fraction,
        add_gt_as_proposals=h.add_gt_as_proposals, box_weights=tuple(h.box_weights), seed=seed,
        name="roi_sampler")


def build_detection_generator(model_cfg):
    h = model_cfg.roi_heads
    return DetectionGenerator(
        score_threshold=h.score_threshold, nms_threshold=h.nms_threshold,
        detections_per_image=h.detections_per_image, min_size=h.min_size,
        box_weights=tuple(h.box_weights), scale_clip=h.scale_clip,
        name="detection_generator")


def build_box_head(model_cfg):
    """(BoxHead, BoxPredictor); variant c4: (None, BoxPredictor), the box features are the
    mean of the res5 head's output."""
    c = model_cfg.box_head
    c4 = model_cfg.backbone.variant == "c4"
    return (None if c4 else BoxHead(num_fc=c.num_fc, fc_dim=c.fc_dim, name="box_head"),
            BoxPredictor(num_classes=model_cfg.num_classes, name="box_predictor"))


def build_mask_head(model_cfg):
    """(MaskHead, MaskPredictor), or (None, None) when masks are off."""
    c = model_cfg.mask_head
    if not c.enabled:
        return None, None
    num_masks = 1 if c.class_agnostic else model_cfg.num_classes
    return (MaskHead(num_convs=c.num_convs, conv_dim=c.conv_dim, name="mask_head"),
            MaskPredictor(num_classes=num_masks, conv_dim=c.conv_dim, name="mask_predictor"))


def build_keypoint_head(model_cfg):
    """(KeypointHead, KeypointPredictor), or (None, None) when keypoints are off."""
    c = model_cfg.keypoint_head
    if not c.enabled:
        return None, None
    return (KeypointHead(num_convs=c.num_convs, conv_dim=c.conv_dim, name="keypoint_head"),
            KeypointPredictor(num_keypoints=c.num_keypoints, name="keypoint_predictor"))


def build_preprocessor(input_cfg):
    """The ``Preprocessor`` of ``input``: ``input.resize`` "shorter_side" (evaluation sizes
    ``min_size_test``, ``max_size``, ``resize_style``) or "fixed_square" (``size``)."""
    normalisation = {"pixel_mean": tuple(input_cfg.pixel_mean),
                     "pixel_std": tuple(input_cfg.pixel_std)}
    if input_cfg.resize == "fixed_square":
        return Preprocessor.fixed_square(input_cfg.size, input_cfg.size_divisor, **normalisation)
    return Preprocessor.shorter_side(input_cfg.min_size_test, input_cfg.max_size,
                                     input_cfg.size_divisor, input_cfg.resize_style,
                                     **normalisation)


def build_postprocessor(settings, category_ids=None):
    """The ``Postprocessor`` of a model: mask kind and threshold, paste style, box clipping
    (detectron2's resize style), the keypoint offset of COCO results, category ids (the
    argument, else ``model.category_ids``) and names (``model.category_names``)."""
    m = settings.model
    if category_ids is None:
        category_ids = m.category_ids
    names = getattr(m, "category_names", None)
    common = {"category_ids": category_ids, "category_names": names,
              "clip_boxes": build_preprocessor(settings.input).detectron2_style}
    if m.architecture == "yolact":
        return Postprocessor(mask_kind="image", mask_threshold=m.yolact.mask_threshold,
                             **common)
    return Postprocessor(
        mask_kind="box" if m.mask_head.enabled else None, mask_threshold=m.mask_head.threshold,
        paste=m.mask_head.paste,
        keypoint_offset=m.keypoint_head.coordinate_offset if m.keypoint_head.enabled else 0.0,
        **common)


def build_rcnn_branches(settings, heads):
    """(box, mask, keypoint) ``models.roi_branch`` branches of ``model.*_head`` and
    ``model.roi_align`` from the built (head, predictor) pairs ``heads`` (mask / keypoint None
    when that head is off); the mask branch takes ``input.gt_mask_format``."""
    m = settings.model
    (box_head, box_predictor), (mask_head, mask_predictor), (kp_head, kp_predictor) = heads
    box = RoIBranch(build_roi_pooler(m, m.box_head.pool_size, "box_pooler"), box_head,
                    box_predictor)
    mask = None if mask_head is None else MaskBranch(
        build_roi_pooler(m, m.mask_head.pool_size, "mask_pooler"), mask_head, mask_predictor,
        gt_mask_format=settings.input.gt_mask_format)
    keypoint = None if kp_head is None else KeypointBranch(
        build_roi_pooler(m, m.keypoint_head.pool_size, "keypoint_pooler"), kp_head,
        kp_predictor, score=m.keypoint_head.score, category_ids=m.keypoint_head.category_ids)
    return box, mask, keypoint


def build_loss_settings(model_cfg):
    """``RCNNLossSettings`` of ``model.rpn.smooth_l1_beta``, ``model.roi_heads.smooth_l1_beta``
    and ``model.loss_weights``."""
    return RCNNLossSettings(rpn_smooth_l1_beta=model_cfg.rpn.smooth_l1_beta,
                            box_smooth_l1_beta=model_cfg.roi_heads.smooth_l1_beta,
                            weights=dataclasses.asdict(model_cfg.loss_weights))


def build_mask_rcnn(settings, category_ids=None, config_dict=None, **kwargs):
    """An unbuilt ``MaskRCNN`` from a validated Config's ``model`` and ``input`` sections."""
    m = settings.model
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(m.dtype_policy)  # the sub-layers take the config's policy
    try:
        # Construction order = the order initial weights are drawn in (unseeded Keras
        # initialisers take their seeds when constructed): keep it to keep a seed's weights.
        backbone, fpn = build_backbone(m)
        anchor_generator = build_anchor_generator(m)
        rpn_head, proposal_generator = build_rpn(m, anchor_generator.num_anchors)
        roi_sampler, detection_generator = build_roi_sampler(m), build_detection_generator(m)
        heads = build_box_head(m), build_mask_head(m), build_keypoint_head(m)
        box_branch, mask_branch, keypoint_branch = build_rcnn_branches(settings, heads)
        roi_feature_head = build_res5_head(m)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    model = MaskRCNN(
        backbone, fpn, anchor_generator, rpn_head, proposal_generator, roi_sampler,
        detection_generator, box_branch, mask_branch, keypoint_branch,
        roi_feature_head=roi_feature_head, preprocessor=build_preprocessor(settings.input),
        postprocessor=build_postprocessor(settings, category_ids),
        loss_settings=build_loss_settings(m), config_dict=config_dict, **kwargs)
    if accel.resolve(m.accel):  # CPU kernels in place of the plain Keras layers
        # C4's res5 head swaps its eligible convs like the backbone, without Winograd or
        # chunks (roi_heads): its maps are 7x7 after a strided first block.
        accel.accelerate(model, roi_heads=(model.mask_head, model.keypoint_head))
    return model


def build_yolact_parts(model_cfg):
    """(ResNet, FPN, Protonet, DenseHead, semantic Conv2D, YOLACTAnchorGenerator,
    AnchorMatcher, DenseDetectionGenerator) of YOLACT (YOLACT_CONTRACT names)."""
    y, k = model_cfg.yolact, model_cfg.num_classes
    resnet = build_resnet(model_cfg.backbone)
    channels = model_cfg.fpn.channels
    fpn = FPN(channels=channels, input_levels=("C3", "C4", "C5"), max_level=7,
              extra_levels="conv", top_down="bilinear", output_relu=True, name="fpn")
    protonet = Protonet(num_prototypes=y.num_prototypes, channels=channels, name="protonet")
    anchor_generator = YOLACTAnchorGenerator(
        scales=y.anchor_scales, aspect_ratios=y.aspect_ratios, square=y.square_anchors,
        name="anchor_generator")
    head = DenseHead(num_anchors=anchor_generator.num_anchors,
                     output_channels={"box_deltas": 4, "class_logits": k,
                                      "mask_coefficients": y.num_prototypes},
                     num_convs=1, conv_channels=channels, predictor_kernel_size=3,
                     output_activations={"mask_coefficients": "tanh"},
                     name="prediction_head")
    semantic = keras.layers.Conv2D(k - 1, 1, name="semantic_seg")
    matcher = AnchorMatcher(pos_threshold=y.pos_threshold, neg_threshold=y.neg_threshold,
                            crowd_threshold=y.crowd_threshold, name="anchor_matcher")
    detections = DenseDetectionGenerator(
        score_threshold=y.score_threshold, nms_threshold=y.nms_threshold, top_k=y.top_k,
        detections_per_image=y.detections_per_image,
        method="fast" if y.fast_nms else "standard", name="detection_generator")
    return resnet, fpn, protonet, head, semantic, anchor_generator, matcher, detections


def build_yolact(settings, category_ids=None, config_dict=None, **kwargs):
    """An unbuilt ``YOLACT`` from a validated Config's ``model`` and ``input`` sections."""
    m, y = settings.model, settings.model.yolact
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(m.dtype_policy)  # the sub-layers take the config's policy
    try:
        parts = build_yolact_parts(m)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    model = YOLACT(
        *parts, preprocessor=build_preprocessor(settings.input), negpos_ratio=y.negpos_ratio,
        max_masks=y.max_masks,
        loss_weights={"class": y.class_loss_weight, "box": y.box_loss_weight,
                      "mask": y.mask_loss_weight, "semantic": y.semantic_loss_weight},
        postprocessor=build_postprocessor(settings, category_ids), config_dict=config_dict,
        **kwargs)
    if accel.resolve(m.accel):  # CPU kernels in place of the plain Keras layers (no RoI heads)
        accel.accelerate(model)
    return model


ARCHITECTURE_BUILDERS = {"mask_rcnn": build_mask_rcnn, "yolact": build_yolact}


@dataclasses.dataclass(frozen=True)
class DataRequirements:
    """What a model's training batches carry (``data_requirements``), for the data pipeline.

    Attributes:
        masks: gt_masks (B, M, Hp, Wp), or crops (B, M, C, C) with gt_mask_format "cropped".
        crowd_boxes: gt_crowd_boxes (B, C, 4), the crowd regions (YOLACT's matching).
        keypoint_config: the ``model.keypoint_head`` whose keypoints (and flip pairs) the data
            carries as gt_keypoints; None: no keypoints.
        gt_mask_format: "full" or "cropped" (``input.gt_mask_format``).
    """
    masks: bool
    crowd_boxes: bool
    keypoint_config: object
    gt_mask_format: str

    @property
    def num_keypoints(self):
        """Kp of the GT (0: no keypoints)."""
        return self.keypoint_config.num_keypoints if self.keypoint_config is not None else 0


def _mask_rcnn_data(cfg):
    m = cfg.model
    return DataRequirements(masks=m.mask_head.enabled, crowd_boxes=False,
                            keypoint_config=m.keypoint_head if m.keypoint_head.enabled else None,
                            gt_mask_format=cfg.input.gt_mask_format)


def _yolact_data(cfg):
    """Masks always (prototype and semantic losses); crowd boxes neutralise anchors."""
    return DataRequirements(masks=True, crowd_boxes=True, keypoint_config=None,
                            gt_mask_format=cfg.input.gt_mask_format)


ARCHITECTURE_DATA = {"mask_rcnn": _mask_rcnn_data, "yolact": _yolact_data}


def data_requirements(cfg):
    """The ``DataRequirements`` of the ``model.architecture`` model of a Config: what the
    training (and evaluation) data must carry for it. The job asks this, never the
    architecture."""
    return ARCHITECTURE_DATA[cfg.model.architecture](cfg)


def build_model(cfg, category_ids=None, build=True, category_names=None, **kwargs):
    """The ``model.architecture`` model (``MaskRCNN`` or ``YOLACT``) for ``cfg`` (a Config, a
    dict or a YAML path).

    Args:
        cfg: ``keras_maskrcnn.config.Config``, a dict in its layout, or a YAML path.
        category_ids: dataset category id of each contiguous class 1..K-1 (length K - 1);
            None = ``model.category_ids`` of the config (None there too: identity).
        category_names: name of each contiguous class 1..K-1 (``model.category_names``);
            None = the config's (None there too: no names).
        build: call the model once on a small dummy batch so its weights exist (needed before
            ``load_weights`` and before ``fit`` under a distribution strategy). The weights
            the config names (``model.weights``, ``model.backbone.weights``) are not loaded
            here: the job loads them (``convert.weights.load_initial_weights``).
        **kwargs: ``keras.Model`` arguments (name, trainable, dtype; ``MaskRCNN.from_config``).
    """
    if isinstance(cfg, str):
        cfg = config_lib.load_config(cfg)
    elif isinstance(cfg, dict):
        cfg = config_lib.config_from_dict(cfg)
    if category_ids is None:
        category_ids = cfg.model.category_ids
    build_fn = ARCHITECTURE_BUILDERS[cfg.model.architecture]
    model = build_fn(cfg, category_ids, config_dict=model_config_dict(cfg), **kwargs)
    if category_names is not None:  # else the config's (the postprocessor has them)
        model.category_names = category_names
    if build:
        model.build_with_dummy_batch()
    return model


def _rebuild(config_dict, category_ids, **kwargs):
    """``MaskRCNN.from_config`` / ``YOLACT.from_config``: the model of a saved recipe, unbuilt
    (Keras builds it); ``kwargs`` are the saved ``keras.Model`` arguments (name, trainable,
    dtype)."""
    return build_model(config_dict, category_ids=category_ids, build=False, **kwargs)


base.register_builder("MaskRCNN", _rebuild)
base.register_builder("YOLACT", _rebuild)


def with_dataset_keypoint_categories(cfg, categories):
    """``cfg`` with ``model.keypoint_head.category_ids`` set to the dataset's categories that
    declare keypoints (``coco.CategoryMap.keypoint_category_ids``) when the config leaves it
    null and only some categories have keypoints; otherwise ``cfg`` itself. The saved
    config.yaml then carries it to evaluation, export and prediction."""
    head, ids = cfg.model.keypoint_head, categories.keypoint_category_ids
    if not head.enabled or head.category_ids is not None or ids is None:
        return cfg
    return config_lib.apply_overrides(cfg, [f"model.keypoint_head.category_ids={list(ids)}"],
                                      source="the dataset's keypoint categories")


def with_dataset_categories(cfg, categories):
    """``cfg`` with ``model.category_ids`` and ``model.category_names`` set to the training
    data's categories (``coco.CategoryMap``: dataset ids and names, sorted by id), the
    mapping the run's model is built with, so that its config.yaml carries the ids and names
    to evaluation, export and prediction (no annotation file needed to name a prediction).
    ``cfg`` itself when it already holds them, or (with a warning) when the data's category
    count is not ``model.num_classes - 1``."""
    ids, names = tuple(categories.dataset_ids), tuple(str(n) for n in categories.names)
    m = cfg.model
    if (m.category_ids, m.category_names) == (ids, names):
        return cfg
    if len(ids) != m.num_classes - 1:
        logging.getLogger("keras_maskrcnn").warning(
            "the training data has %d categories but model.num_classes - 1 = %d: "
            "model.category_ids / category_names not filled", len(ids), m.num_classes - 1)
        return cfg
    return config_lib.apply_overrides(
        cfg, [f"model.category_ids={json.dumps(list(ids))}",
              f"model.category_names={json.dumps(list(names))}"],
        source="the training data's categories")


def model_config_dict(cfg):
    """The part of a Config that defines a model (model + input sections), as a plain dict."""
    full = config_lib.config_to_dict(cfg)
    return {"model": full["model"], "input": full["input"]}


def parse_model_config(config_dict):
    """Inverse of ``model_config_dict``: a validated Config whose other sections are defaults."""
    return config_lib.config_from_dict(config_dict, source="<model config>")
