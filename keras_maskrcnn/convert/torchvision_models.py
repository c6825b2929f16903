"""Whole torchvision detection models -> ``MaskRCNN`` with torchvision's inference settings.

``from_torchvision(checkpoint, arch)`` builds our model with the config that reproduces the
torchvision model ``arch`` (its thresholds, its resize and normalisation, RoIAlign with
``aligned=False``), loads every weight through the per-part loaders of
``keras_maskrcnn.convert.torchvision`` and checks that every checkpoint key was used.

torchvision's COCO models predict 91 classes indexed by COCO category id (with unused ids), so
the converted model's contiguous ids are the COCO ids themselves (``category_ids`` identity);
its ``category_names`` are COCO's ("N/A" for the unused ids; ``convert.coco_categories``).

FrozenBatchNorm eps is not stored in a state_dict; it depends on which weights a file holds
(``weights``, torchvision/models/detection): torchvision runs its released COCO_V1 Mask /
Faster / Keypoint R-CNN files with eps 0 (``overwrite_eps(model, 0.0)`` after loading them);
the legacy Keypoint R-CNN file (``KeypointRCNN_ResNet50_FPN_Weights.COCO_LEGACY``) and any
model built without those weights (e.g. trained with torchvision from an ImageNet backbone,
then loaded into ``maskrcnn_resnet50_fpn(weights=None)``) keep FrozenBatchNorm2d's 1e-5.
``weights="auto"`` decides by the released file names (``RELEASED_FILES``) and takes
"trained" for any other name; the choice is logged.
"""
import dataclasses
import logging
import os

from keras_maskrcnn import builders, config as config_lib
from keras_maskrcnn.convert import state_dict as sd, torchvision as tv
from keras_maskrcnn.convert.coco_categories import names_override, torchvision_names

ARCHITECTURES = ("maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")
CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"
WEIGHTS_EPS = {"coco_v1": 0.0, "coco_legacy": 1e-5, "trained": 1e-5}  # FrozenBatchNorm eps
WEIGHTS_CHOICES = ("auto",) + tuple(WEIGHTS_EPS)
RELEASED_FILES = {  # torchvision's *_Weights urls (file names) -> which weights they hold
    "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth": "coco_v1",
    "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth": "coco_v1",
    "keypointrcnn_resnet50_fpn_coco-fc266e95.pth": "coco_v1",
    "keypointrcnn_resnet50_fpn_coco-9f466800.pth": "coco_legacy",
}
logger = logging.getLogger(__name__)


def resolve_weights(checkpoint, weights="auto"):
    """Which weights ``checkpoint`` holds and the FrozenBatchNorm eps torchvision runs them with.

    Args:
        checkpoint: a ``.pth`` path (its file name decides "auto") or a state_dict.
        weights: "auto", "coco_v1", "coco_legacy" or "trained".

    Returns:
        (kind, eps, reason): reason is a phrase for the log line.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS_CHOICES)}, got {weights!r}")
    if weights != "auto":
        return weights, WEIGHTS_EPS[weights], f"--weights {weights}"
    name = os.path.basename(str(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) \
        else None
    kind = RELEASED_FILES.get(name)
    if kind is not None:
        return kind, WEIGHTS_EPS[kind], f"{name} is torchvision's released {kind} file"
    return "trained", WEIGHTS_EPS["trained"], (
        f"{name or 'an in-memory state_dict'} is not one of torchvision's released files, so "
        "assumed trained with torchvision (pass --weights coco_v1 for a renamed COCO_V1 file)")


def torchvision_config(arch, num_classes=None, weights="coco_v1"):
    """The Config of torchvision's ``arch`` (its inference behaviour; training as the paper);
    ``weights`` (not "auto") sets FrozenBatchNorm's eps (module docstring)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown torchvision architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHITECTURES)}")
    keypoints = arch.startswith("keypoint")
    num_classes = num_classes or (2 if keypoints else 91)
    overrides = [
        f"model.num_classes={num_classes}",
        names_override(torchvision_names(num_classes, keypoints)),  # COCO's, else null
        "model.backbone.name=resnet50", "model.backbone.freeze_at=2",
        f"model.backbone.bn_eps={WEIGHTS_EPS[weights]}",  # not in the state_dict
        "model.roi_align.aligned=false", "model.roi_align.sampling_ratio=2",
        f"model.mask_head.enabled={'true' if arch.startswith('maskrcnn') else 'false'}",
        f"model.keypoint_head.enabled={'true' if keypoints else 'false'}",
        "input.min_size_test=800", "input.max_size=1333",
    ]
    if keypoints:  # torchvision's KeypointRCNN trains with multi-scale (640..800, choice)
        overrides.append("input.min_size_train=[640,672,704,736,768,800]")
    return config_lib.apply_overrides(config_lib.Config(), overrides, source=f"torchvision:{arch}")


def _check_architecture(state_dict, arch):
    has_mask = any(k.startswith("roi_heads.mask_") for k in state_dict)
    has_kp = any(k.startswith("roi_heads.keypoint_") for k in state_dict)
    found = ("maskrcnn_resnet50_fpn" if has_mask else
             "keypointrcnn_resnet50_fpn" if has_kp else "fasterrcnn_resnet50_fpn")
    if found != arch:
        raise ValueError(f"checkpoint looks like {found!r} (keys: roi_heads.mask_*={has_mask}, "
                         f"roi_heads.keypoint_*={has_kp}), not {arch!r}")


def load_torchvision_weights(model, state_dict, progress=False):
    """Assigns every weight of ``model`` from a torchvision state_dict, all or nothing: every
    part queues its reads into one ``StateDictReader``, committed once every key was used."""
    reader = tv.StateDictReader(state_dict)
    tv.load_resnet_fpn_weights(model.backbone, model.fpn, state_dict, reader=reader)
    tv.load_rpn_head_weights(model.rpn_head, state_dict, reader=reader)
    tv.load_box_head_weights(model.box_head, model.box_predictor, state_dict, reader=reader)
    if model.mask_head is not None:
        tv.load_mask_head_weights(model.mask_head, model.mask_predictor, state_dict,
                                  reader=reader)
    if model.keypoint_head is not None:
        tv.load_keypoint_head_weights(model.keypoint_head, model.keypoint_predictor, state_dict,
                                      reader=reader)
    return reader.commit_all(progress)


def infer_num_classes(state_dict):
    """K incl. background: the rows of ``roi_heads.box_predictor.cls_score.weight``."""
    return sd.infer_num_classes(state_dict, CLS_SCORE)


def from_torchvision(checkpoint, arch, overrides=(), progress=False, weights="auto"):
    """A ``MaskRCNN`` with the weights of a torchvision detection checkpoint.

    Args:
        checkpoint: a state_dict (name -> tensor/array) or a ``.pth`` path.
        arch: "maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn" or
            "keypointrcnn_resnet50_fpn".
        overrides: extra "a.b=c" config overrides (e.g. a lower score threshold).
        progress: show a progress bar while the weights are assigned.
        weights: which weights the file holds, for FrozenBatchNorm's eps: "auto" (by the
            released file names), "coco_v1" (eps 0), "coco_legacy" or "trained" (1e-5).

    Returns:
        The built model; its recipe (``model.config_dict``) reproduces torchvision's inference.
    """
    kind, _, reason = resolve_weights(checkpoint, weights)
    state_dict = tv.load_state_dict(checkpoint)
    with sd.naming_file(checkpoint):
        _check_architecture(state_dict, arch)
        cfg = torchvision_config(arch, num_classes=infer_num_classes(state_dict), weights=kind)
        cfg = config_lib.apply_overrides(cfg, overrides, source=f"torchvision:{arch}")
        logger.info("FrozenBatchNorm eps %g: %s", cfg.model.backbone.bn_eps, reason)
        model = builders.build_model(cfg)
        load_torchvision_weights(model, state_dict, progress=progress)
    return model


def converted_config(model):
    """The full Config of a converted model (model/input sections from it, rest default)."""
    settings = builders.parse_model_config(model.config_dict)
    return dataclasses.replace(config_lib.Config(), model=settings.model, input=settings.input)
