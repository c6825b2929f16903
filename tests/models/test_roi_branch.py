"""``models.roi_branch``: the arguments MaskRCNN takes its RoI heads and loss settings as, and
the width of the detectors' constructors (issue 22: about 15 parameters each)."""
import inspect

import pytest

from keras_maskrcnn.models.mask_rcnn import LOSS_NAMES, MaskRCNN
from keras_maskrcnn.models.roi_branch import (KeypointBranch, MaskBranch, RCNNLossSettings,
                                              RoIBranch, branch_parts, check_branches)
from keras_maskrcnn.models.yolact import YOLACT

POOLER, HEAD, PREDICTOR = object(), object(), object()


def _parameters(cls):
    """Named parameters of ``cls.__init__`` (self and **kwargs left out)."""
    return [p for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind != p.VAR_KEYWORD]


def test_constructors_take_at_most_15_parameters():
    names = [p.name for p in _parameters(MaskRCNN)]
    assert names == ["backbone", "fpn", "anchor_generator", "rpn_head", "proposal_generator",
                     "roi_sampler", "detection_generator", "box_branch", "mask_branch",
                     "keypoint_branch", "roi_feature_head", "preprocessor", "postprocessor",
                     "loss_settings", "config_dict"]
    assert len(_parameters(YOLACT)) <= 15


def test_branches_hold_their_settings():
    mask = MaskBranch(POOLER, HEAD, PREDICTOR, gt_mask_format="cropped")
    keypoint = KeypointBranch(POOLER, HEAD, PREDICTOR, score="detectron2", category_ids=[1, "3"])
    assert mask.gt_mask_format == "cropped"
    assert MaskBranch(POOLER, HEAD, PREDICTOR).gt_mask_format == "full"
    assert keypoint.category_ids == (1, 3) and keypoint.score == "detectron2"
    assert branch_parts(mask) == (POOLER, HEAD, PREDICTOR)
    assert branch_parts(None) == (None, None, None)
    with pytest.raises(AttributeError):  # frozen: a built model's branch settings stay put
        mask.gt_mask_format = "full"


@pytest.mark.parametrize("make,message", [
    (lambda: MaskBranch(POOLER, HEAD, PREDICTOR, gt_mask_format="crops"),
     r"gt_mask_format must be one of \('full', 'cropped'\), got 'crops'"),
    (lambda: KeypointBranch(POOLER, HEAD, PREDICTOR, score="softmax"),
     r"keypoint score must be one of \('logit', 'detectron2'\), got 'softmax'"),
    (lambda: RoIBranch(None, HEAD, PREDICTOR), r"RoIBranch.pooler is None"),
    (lambda: MaskBranch(POOLER, HEAD, None), r"MaskBranch.predictor is None"),
    (lambda: RCNNLossSettings(rpn_smooth_l1_beta=-1), r"rpn_smooth_l1_beta must be >= 0"),
])
def test_bad_branch_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_loss_settings_defaults_are_torchvisions():
    s = RCNNLossSettings(weights={"mask": 2})
    assert (s.rpn_smooth_l1_beta, s.box_smooth_l1_beta) == (1 / 9, 1 / 9)
    assert s.weights == {"mask": 2.0}


BOX = RoIBranch(POOLER, HEAD, PREDICTOR)
MASK = MaskBranch(POOLER, HEAD, PREDICTOR)


@pytest.mark.parametrize("args,error,message", [
    ((MASK, None, None, RCNNLossSettings()), TypeError,
     r"box_branch must be a models.roi_branch.RoIBranch, got MaskBranch"),
    ((BOX, BOX, None, RCNNLossSettings()), TypeError,
     r"mask_branch must be a models.roi_branch.MaskBranch, got RoIBranch"),
    ((BOX, None, MASK, RCNNLossSettings()), TypeError,
     r"keypoint_branch must be a models.roi_branch.KeypointBranch, got MaskBranch"),
    ((BOX, MaskBranch(POOLER, None, PREDICTOR), None, RCNNLossSettings()), ValueError,
     r"mask_branch.head is None"),
    ((BOX, None, None, {"mask": 1.0}), TypeError,
     r"loss_settings must be a models.roi_branch.RCNNLossSettings, got dict"),
    ((BOX, None, None, RCNNLossSettings(weights={"rpn_bbox": 1.0})), ValueError,
     r"loss_settings.weights: unknown loss names \['rpn_bbox'\]"),
])
def test_check_branches_names_the_argument(args, error, message):
    with pytest.raises(error, match=message):
        check_branches(*args, LOSS_NAMES)


def test_model_checks_its_branches_first():
    """MaskRCNN refuses a wrong branch before anything is built (the parts here are
    placeholders: the check runs first)."""
    with pytest.raises(TypeError, match="box_branch must be"):
        MaskRCNN(*([None] * 7), MASK, preprocessor=None, postprocessor=None,
                 loss_settings=RCNNLossSettings())
