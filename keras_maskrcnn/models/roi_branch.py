"""The RoI branches of Mask R-CNN (He et al. 2017, section 3, "Network Architecture"; keypoints:
section 5) and its loss settings, as the arguments ``models.mask_rcnn.MaskRCNN`` takes.

Each branch of the RoI head is a pooler (RoIAlign to a fixed size), a head (convs / FCs) and a
predictor (the ``num_classes``-dependent last layer), plus the settings only that branch
reads: the mask branch's GT mask format, the keypoint branch's score and keypoint classes.

These are frozen dataclasses, not Keras layers: they group constructor arguments and hold no
weights. The model keeps each part under the attribute it always had (``box_pooler``,
``box_head``, ``box_predictor``, ``mask_pooler``, ...), so Keras tracks the same layers under
the same names: the variable paths and the ``.weights.h5`` layout stay those of the models
saved before the branches existed (tests/models/test_weight_layout.py), and the converters
and exports read the same attributes. A branch layer would have nested them one level deeper
(``box_branch/...``) and changed both. The model is rebuilt from its config, never from its
constructor arguments, so the branches need no ``get_config``.
"""
import dataclasses
from typing import Any, Mapping, Optional, Tuple

from keras_maskrcnn.ops.keypoints import SCORES

GT_MASK_FORMATS = ("full", "cropped")


@dataclasses.dataclass(frozen=True)
class RoIBranch:
    """pooler -> head -> predictor, one branch of the RoI head (the box branch's type).

    Attributes:
        pooler: ``layers.roi_pooler.RoIPooler``: features, rois (B, R, 4) -> pooled RoIs
            (B, R, S, S, C) (levels, level mapping, sampling, output size S).
        head: per-RoI layer on the pooled RoIs (``layers.heads.BoxHead``, ``MaskHead``,
            ``KeypointHead``); None only for the box branch of the C4 model (the mean over
            the ``roi_feature_head``'s output feeds the predictor).
        predictor: the ``num_classes``-dependent last layer (``BoxPredictor``, ...).
    """
    pooler: Any
    head: Any
    predictor: Any

    def __post_init__(self):
        for field in ("pooler", "predictor"):
            if getattr(self, field) is None:
                raise ValueError(f"{type(self).__name__}.{field} is None: a branch needs a "
                                 "pooler and a predictor")


@dataclasses.dataclass(frozen=True)
class MaskBranch(RoIBranch):
    """The mask branch: mask logits (B, R, Sm, Sm, K or 1).

    Attributes:
        gt_mask_format: "full": gt_masks are image masks (B, M, Hp, Wp), targets by
            ``ops.masks.project_masks_on_boxes`` (torchvision's); "cropped": (B, M, C, C)
            crops of each GT box's frame, targets by ``project_cropped_masks_on_boxes``.
    """
    gt_mask_format: str = "full"

    def __post_init__(self):
        super().__post_init__()
        if self.gt_mask_format not in GT_MASK_FORMATS:
            raise ValueError(f"gt_mask_format must be one of {GT_MASK_FORMATS}, got "
                             f"{self.gt_mask_format!r}")


@dataclasses.dataclass(frozen=True)
class KeypointBranch(RoIBranch):
    """The keypoint branch: heatmap logits (B, R, Sk, Sk, Kp).

    Attributes:
        score: "logit" (torchvision) or "detectron2": the keypoint score
            (``ops.keypoints.heatmaps_to_keypoints``).
        category_ids: dataset ids (as the model's ``category_ids``) of the classes that have
            keypoints, a tuple of ints; None = every class. Other classes' GT keypoints are not
            trained and their detections' keypoints are (0, 0, -inf)
            (``ops.keypoints.ABSENT_SCORE``).
    """
    score: str = "logit"
    category_ids: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        super().__post_init__()
        if self.score not in SCORES:
            raise ValueError(f"keypoint score must be one of {SCORES}, got {self.score!r}")
        if self.category_ids is not None:
            object.__setattr__(self, "category_ids", tuple(int(c) for c in self.category_ids))


@dataclasses.dataclass(frozen=True)
class RCNNLossSettings:
    """How the Mask R-CNN losses are weighed (``models.mask_rcnn.LOSS_NAMES``).

    Attributes:
        rpn_smooth_l1_beta: beta of the RPN box loss (torchvision: 1/9; detectron2: 0, L1).
        box_smooth_l1_beta: beta of the box head's regression loss (torchvision: 1/9).
        weights: {loss name: float}; a name left out weighs 1.0, an unknown name is refused
            by the model.
    """
    rpn_smooth_l1_beta: float = 1.0 / 9
    box_smooth_l1_beta: float = 1.0 / 9
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for field in ("rpn_smooth_l1_beta", "box_smooth_l1_beta"):
            value = float(getattr(self, field))
            if value < 0:
                raise ValueError(f"{field} must be >= 0, got {value}")
            object.__setattr__(self, field, value)
        object.__setattr__(self, "weights", {str(k): float(v) for k, v in self.weights.items()})


def check_branches(box_branch, mask_branch, keypoint_branch, loss_settings, loss_names):
    """Refuses arguments of the wrong kind for ``MaskRCNN`` (each error names the argument):
    a box branch that is not a plain ``RoIBranch``, a mask / keypoint branch that is not a
    ``MaskBranch`` / ``KeypointBranch`` with a head, loss settings that are not
    ``RCNNLossSettings`` or weigh a loss not in ``loss_names``."""
    expected = (("box_branch", box_branch, RoIBranch), ("mask_branch", mask_branch, MaskBranch),
                ("keypoint_branch", keypoint_branch, KeypointBranch))
    for name, branch, kind in expected:
        if name != "box_branch" and branch is None:
            continue
        if type(branch) is not kind:  # a MaskBranch is a RoIBranch, not a box branch
            raise TypeError(f"{name} must be a models.roi_branch.{kind.__name__}, got "
                            f"{type(branch).__name__}")
        if name != "box_branch" and branch.head is None:
            raise ValueError(f"{name}.head is None (only the C4 box branch has no head)")
    if not isinstance(loss_settings, RCNNLossSettings):
        raise TypeError("loss_settings must be a models.roi_branch.RCNNLossSettings, got "
                        f"{type(loss_settings).__name__}")
    unknown = sorted(set(loss_settings.weights) - set(loss_names))
    if unknown:
        raise ValueError(f"loss_settings.weights: unknown loss names {unknown}; the losses are "
                         f"{list(loss_names)}")


def branch_parts(branch):
    """(pooler, head, predictor) of a branch, (None, None, None) for None (no branch)."""
    if branch is None:
        return None, None, None
    return branch.pooler, branch.head, branch.predictor
