"""configs/finetune_*.yaml describe the very architecture their converted start weights come
from (only the class count, the weights path, the frozen stages and the inference thresholds
may differ), and carry the fine-tuning settings (frozen stem + res2, short schedule, warm-up,
a lower learning rate than the COCO schedule's)."""
import os

import pytest

from keras_maskrcnn import config as config_lib
from keras_maskrcnn.convert import torchvision_models, yolact

import support

CONFIGS = os.path.join(support.ROOT, "configs")
FREE = {"num_classes", "weights", "category_ids", "category_names"}  # what fine-tuning changes


def converted(name):
    if name == "finetune_maskrcnn_r50_fpn.yaml":
        return torchvision_models.torchvision_config("maskrcnn_resnet50_fpn")
    settings = {"depth": "resnet50", "image_size": 550, "anchor_sides": yolact.ANCHOR_SIDES,
                "num_anchors": 3, "num_classes": 81, "num_prototypes": 32}
    return yolact.yolact_config(settings)


def without_free(model_dict):
    out = {k: v for k, v in model_dict.items() if k not in FREE}
    out["backbone"] = {k: v for k, v in out["backbone"].items()
                       if k not in ("freeze_at", "weights")}
    return out


@pytest.mark.parametrize("name", ["finetune_maskrcnn_r50_fpn.yaml", "finetune_yolact_r50.yaml"])
def test_finetune_config_matches_its_converted_architecture(name):
    cfg = config_lib.load_config(os.path.join(CONFIGS, name))
    reference = config_lib.config_to_dict(converted(name))
    ours = config_lib.config_to_dict(cfg)
    for section in ("roi_heads", "yolact"):  # inference thresholds are the user's choice
        for key in ("score_threshold",):
            reference["model"][section].pop(key), ours["model"][section].pop(key)
    assert without_free(ours["model"]) == without_free(reference["model"])
    for key in ("resize", "size", "size_divisor", "pixel_mean", "pixel_std", "min_size_test",
                "max_size"):
        assert ours["input"][key] == reference["input"][key], key
    assert cfg.model.weights.endswith("model.weights.h5")
    assert cfg.model.num_classes == 4 and cfg.model.backbone.freeze_at == 2
    coco_name = "maskrcnn_r50_fpn_coco.yaml" if "maskrcnn" in name else "yolact_r50_fpn_coco.yaml"
    coco = config_lib.load_config(os.path.join(CONFIGS, coco_name))
    assert cfg.train.learning_rate < coco.train.learning_rate
    assert cfg.train.total_steps <= coco.train.total_steps / 20
    assert 0 < cfg.train.warmup_steps < cfg.train.lr_decay_steps[0]
