"""Config -> parts and models: the one place that reads the ``model`` and ``input`` sections.

Layers and models take built parts and primitive constructor arguments only, so they never
see a config object. A model keeps the dict of the sections it was built from
(``config_dict``) only to be saved; ``from_config`` comes back here through
``models.base.register_builder``. The optimizer (``training.build_optimizer``) and the
datasets (``data.pipeline.dataset_from_config``) are built from their sections the same way.
"""
import dataclasses
import os

import keras

from keras_maskrcnn import accel, config as config_lib
from keras_maskrcnn.convert import torchvision as tv
from keras_maskrcnn.layers.dense_head import DenseHead
from keras_maskrcnn.layers.detection_generator import DetectionGenerator
from keras_maskrcnn.layers.fpn import FPN
from keras_maskrcnn.layers.heads import (BoxHead, BoxPredictor, KeypointHead, KeypointPredictor,
                                         MaskHead, MaskPredictor)
from keras_maskrcnn.layers.protonet import Protonet
from keras_maskrcnn.layers.roi_sampler import RoISampler
from keras_maskrcnn.layers.rpn import ProposalGenerator, RPNHead
from keras_maskrcnn.models import base
from keras_maskrcnn.models.backbones import ResNet, arch_arguments
from keras_maskrcnn.models.mask_rcnn import MaskRCNN
from keras_maskrcnn.models.res5_head import Res5Head
from keras_maskrcnn.models.yolact import YOLACT
from keras_maskrcnn.postprocessing import Postprocessor
from keras_maskrcnn.preprocessing import Preprocessor


def build_backbone(model_cfg):
    """(ResNet or ResNeXt, FPN) from ``model.backbone`` and ``model.fpn``; variant c4: (ResNet
    res2..res4, None)."""
    b = model_cfg.backbone
    c4 = b.variant == "c4"
    resnet = ResNet(**arch_arguments(b.name), width_multiplier=b.width_multiplier,
                    freeze_at=b.freeze_at, norm=b.norm, stride_in_1x1=b.stride_in_1x1,
                    bn_eps=b.bn_eps, **({"max_level": 4} if c4 else {}), name="backbone")
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


def build_rpn(model_cfg):
    """(RPNHead, ProposalGenerator) from ``model.anchors`` and ``model.rpn``."""
    r, a = model_cfg.rpn, model_cfg.anchors
    sizes_per_location = len(a.sizes) if model_cfg.backbone.variant == "c4" else 1
    head = RPNHead(num_anchors=sizes_per_location * len(a.aspect_ratios),
                   num_convs=r.num_convs, name="rpn_head")
    generator = ProposalGenerator(
        pre_nms_top_n_train=r.pre_nms_top_n_train, pre_nms_top_n_test=r.pre_nms_top_n_test,
        post_nms_top_n_train=r.post_nms_top_n_train, post_nms_top_n_test=r.post_nms_top_n_test,
        nms_threshold=r.nms_threshold, min_size=r.min_size, score_threshold=r.score_threshold,
        box_weights=tuple(r.box_weights), scale_clip=r.scale_clip,
        proposal_filter=r.proposal_filter, name="proposal_generator")
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


def build_mask_rcnn(settings, category_ids=None, config_dict=None, **kwargs):
    """An unbuilt ``MaskRCNN`` from a validated Config's ``model`` and ``input`` sections."""
    m = settings.model
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(m.dtype_policy)  # the sub-layers take the config's policy
    try:
        backbone, fpn = build_backbone(m)
        rpn_head, proposal_generator = build_rpn(m)
        parts = (backbone, fpn, rpn_head, proposal_generator, build_roi_sampler(m),
                 build_detection_generator(m), *build_box_head(m), *build_mask_head(m),
                 *build_keypoint_head(m))
        res5_head = build_res5_head(m)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    r, a = m.rpn, m.roi_align
    c4 = m.backbone.variant == "c4"  # one level, C4 (stride 16), pooled as "P4"
    model = MaskRCNN(
        *parts, roi_feature_head=res5_head, preprocessor=build_preprocessor(settings.input),
        feature_levels=("C4",) if c4 else m.fpn.levels,
        anchor_sizes=m.anchors.sizes, aspect_ratios=m.anchors.aspect_ratios,
        roi_levels=(4, 4) if c4 else (a.min_level, a.max_level),
        canonical_size=a.canonical_size,
        canonical_level=a.canonical_level, sampling_ratio=a.sampling_ratio, aligned=a.aligned,
        box_pool_size=m.box_head.pool_size, mask_pool_size=m.mask_head.pool_size,
        keypoint_pool_size=m.keypoint_head.pool_size, mask_size=m.mask_size,
        heatmap_size=m.keypoint_head.heatmap_size, rpn_fg_iou_threshold=r.fg_iou_threshold,
        rpn_bg_iou_threshold=r.bg_iou_threshold,
        rpn_allow_low_quality_matches=r.allow_low_quality_matches,
        rpn_batch_size_per_image=r.batch_size_per_image,
        rpn_positive_fraction=r.positive_fraction, rpn_box_weights=r.box_weights,
        rpn_seed=r.batch_size_per_image,  # the seed this model always had
        rpn_smooth_l1_beta=r.smooth_l1_beta, box_smooth_l1_beta=m.roi_heads.smooth_l1_beta,
        loss_weights=dataclasses.asdict(m.loss_weights),
        postprocessor=build_postprocessor(settings, category_ids),
        gt_mask_format=settings.input.gt_mask_format,
        config_dict=config_dict, anchor_rounded=m.anchors.rounded,
        anchor_nominal_strides=m.anchors.nominal_strides, level_mapping=a.level_mapping,
        keypoint_score=m.keypoint_head.score,
        keypoint_category_ids=m.keypoint_head.category_ids,
        **kwargs)
    if accel.resolve(m.accel):  # CPU kernels in place of the plain Keras layers
        # C4's res5 head swaps its eligible convs like the backbone, without Winograd or
        # chunks (roi_heads): its maps are 7x7 after a strided first block.
        accel.accelerate(model, roi_heads=(model.mask_head, model.keypoint_head))
    return model


def build_yolact_parts(model_cfg):
    """(ResNet, FPN, Protonet, DenseHead, semantic Conv2D) of YOLACT (YOLACT_CONTRACT names)."""
    b, y, k = model_cfg.backbone, model_cfg.yolact, model_cfg.num_classes
    resnet = ResNet(depth=b.name, width_multiplier=b.width_multiplier, freeze_at=b.freeze_at,
                    norm=b.norm, name="backbone")
    channels = model_cfg.fpn.channels
    fpn = FPN(channels=channels, input_levels=("C3", "C4", "C5"), max_level=7,
              extra_levels="conv", top_down="bilinear", output_relu=True, name="fpn")
    protonet = Protonet(num_prototypes=y.num_prototypes, channels=channels, name="protonet")
    head = DenseHead(num_anchors=len(y.aspect_ratios),
                     output_channels={"box_deltas": 4, "class_logits": k,
                                      "mask_coefficients": y.num_prototypes},
                     num_convs=1, conv_channels=channels, predictor_kernel_size=3,
                     output_activations={"mask_coefficients": "tanh"},
                     name="prediction_head")
    semantic = keras.layers.Conv2D(k - 1, 1, name="semantic_seg")
    return resnet, fpn, protonet, head, semantic


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
        *parts, preprocessor=build_preprocessor(settings.input), anchor_scales=y.anchor_scales,
        aspect_ratios=y.aspect_ratios, square_anchors=y.square_anchors,
        pos_threshold=y.pos_threshold, neg_threshold=y.neg_threshold,
        crowd_threshold=y.crowd_threshold, negpos_ratio=y.negpos_ratio, max_masks=y.max_masks,
        score_threshold=y.score_threshold, nms_threshold=y.nms_threshold, top_k=y.top_k,
        detections_per_image=y.detections_per_image, fast_nms=y.fast_nms,
        loss_weights={"class": y.class_loss_weight, "box": y.box_loss_weight,
                      "mask": y.mask_loss_weight, "semantic": y.semantic_loss_weight},
        postprocessor=build_postprocessor(settings, category_ids), config_dict=config_dict,
        **kwargs)
    if accel.resolve(m.accel):  # CPU kernels in place of the plain Keras layers (no RoI heads)
        accel.accelerate(model)
    return model


ARCHITECTURE_BUILDERS = {"mask_rcnn": build_mask_rcnn, "yolact": build_yolact}


def build_model(cfg, category_ids=None, build=True, **kwargs):
    """The ``model.architecture`` model (``MaskRCNN`` or ``YOLACT``) for ``cfg`` (a Config, a
    dict or a YAML path).

    Args:
        cfg: ``keras_maskrcnn.config.Config``, a dict in its layout, or a YAML path.
        category_ids: dataset category id of each contiguous class 1..K-1 (length K - 1);
            None = ``model.category_ids`` of the config (None there too: identity).
        build: call the model once on a small dummy batch so its weights exist (needed before
            ``load_weights`` and before ``fit`` under a distribution strategy).
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
    if build:
        model.build_with_dummy_batch()
        load_initial_weights(model, cfg.model)
    return model


def _rebuild(config_dict, category_ids, **kwargs):
    """``MaskRCNN.from_config`` / ``YOLACT.from_config``: the model of a saved recipe, unbuilt
    (Keras builds it); ``kwargs`` are the saved ``keras.Model`` arguments (name, trainable,
    dtype)."""
    return build_model(config_dict, category_ids=category_ids, build=False, **kwargs)


base.register_builder("MaskRCNN", _rebuild)
base.register_builder("YOLACT", _rebuild)


def load_initial_weights(model, model_cfg):
    """``model.backbone.weights`` then ``model.weights``, when the config names them.

    backbone.weights: a torchvision ImageNet ResNet / ResNeXt state_dict (``.pth``, its ``fc.`` keys
    ignored; read without torch). model.weights: a whole-model ``.weights.h5`` (e.g.
    converted COCO weights to fine-tune from).
    """
    for key, path in (("model.backbone.weights", model_cfg.backbone.weights),
                      ("model.weights", model_cfg.weights)):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{key}: no such file: {path}")
    path = model_cfg.backbone.weights
    if path:
        if not path.endswith((".pth", ".pt")):
            raise ValueError(f"model.backbone.weights: expected a torchvision ResNet/ResNeXt .pth "
                             f"state_dict, got {path}")
        tv.load_resnet_weights(model.backbone, tv.load_state_dict(path), prefix="",
                               ignore_prefixes=("fc.",))
    if model_cfg.weights:
        model.load_weights(model_cfg.weights)


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


def model_config_dict(cfg):
    """The part of a Config that defines a model (model + input sections), as a plain dict."""
    full = config_lib.config_to_dict(cfg)
    return {"model": full["model"], "input": full["input"]}


def parse_model_config(config_dict):
    """Inverse of ``model_config_dict``: a validated Config whose other sections are defaults."""
    return config_lib.config_from_dict(config_dict, source="<model config>")
