"""Category names travel with the model: model.category_names (config), COCO's names for
converted models (checked against torchvision's weight metadata), a training run's data."""
import json
import os

import pytest

from keras_maskrcnn import builders, config as config_lib
from keras_maskrcnn.config import ConfigError
from keras_maskrcnn.convert import coco_categories, detectron2_zoo, yolact
from keras_maskrcnn.convert.torchvision_models import torchvision_config
from keras_maskrcnn.data import coco
import support

TINY = os.path.join(support.ROOT, "configs", "tiny.yaml")


def _torchvision_meta(name):
    detection = pytest.importorskip("torchvision.models.detection")
    return list(getattr(detection, name).COCO_V1.meta["categories"])


def test_coco_names_match_torchvision_metadata():
    meta = _torchvision_meta("MaskRCNN_ResNet50_FPN_Weights")  # 91: background + ids 1..90
    assert list(coco_categories.torchvision_names(91)) == meta[1:]
    assert list(coco_categories.COCO_CATEGORY_NAMES) == [n for n in meta[1:] if n != "N/A"]
    assert tuple(coco_categories.COCO_CATEGORIES) == yolact.COCO_CATEGORY_IDS
    keypoint_meta = _torchvision_meta("KeypointRCNN_ResNet50_FPN_Weights")
    assert list(coco_categories.torchvision_names(2, keypoints=True)) == keypoint_meta[1:]


def test_converted_configs_carry_coco_names():
    names = coco_categories.COCO_CATEGORY_NAMES
    assert torchvision_config("maskrcnn_resnet50_fpn").model.category_names[:3] == (
        "person", "bicycle", "car")
    assert torchvision_config("keypointrcnn_resnet50_fpn").model.category_names == ("person",)
    assert torchvision_config("maskrcnn_resnet50_fpn", num_classes=5).model.category_names \
        is None
    settings = {"num_classes": 81, "depth": "resnet50", "num_prototypes": 32,
                "image_size": 550, "anchor_sides": yolact.ANCHOR_SIDES}
    cfg = yolact.yolact_config(settings)
    assert cfg.model.category_names == names and cfg.model.category_ids == \
        yolact.COCO_CATEGORY_IDS
    assert yolact.yolact_config({**settings, "num_classes": 4}).model.category_names is None
    d2 = detectron2_zoo.zoo_config("mask_rcnn_R_50_FPN_3x")
    assert d2.model.category_names == names
    assert detectron2_zoo.zoo_config("keypoint_rcnn_R_50_FPN_3x").model.category_names == (
        "person",)
    assert detectron2_zoo.zoo_config("mask_rcnn_R_50_FPN_3x", 4).model.category_names is None


def test_category_names_validated_against_num_classes():
    cfg = config_lib.apply_overrides(config_lib.Config(), [
        "model.num_classes=3", 'model.category_names=["cat", "dog"]'])
    assert cfg.model.category_names == ("cat", "dog")
    with pytest.raises(ConfigError, match=r"category_names: needs num_classes - 1 = 3 names, "
                                          r"got 2"):
        config_lib.apply_overrides(cfg, ["model.num_classes=4"])
    with pytest.raises(ConfigError, match="category_names"):
        config_lib.apply_overrides(cfg, ["model.category_names=[1, 2]"])


def test_training_data_fills_ids_and_names_and_the_model_keeps_them(tmp_path):
    categories = coco.CategoryMap.from_categories(
        [{"id": 7, "name": "bar"}, {"id": 2, "name": "square"}, {"id": 5, "name": "blob"}])
    cfg = config_lib.apply_overrides(config_lib.Config(), ["model.num_classes=4"])
    filled = builders.with_dataset_categories(cfg, categories)
    assert filled.model.category_ids == (2, 5, 7)
    assert filled.model.category_names == ("square", "blob", "bar")
    assert builders.with_dataset_categories(filled, categories) is filled
    path = str(tmp_path / "config.yaml")
    config_lib.save_config(filled, path)
    assert config_lib.load_config(path).model.category_names == ("square", "blob", "bar")
    wrong = config_lib.apply_overrides(config_lib.Config(), ["model.num_classes=3"])
    assert builders.with_dataset_categories(wrong, categories) is wrong  # count differs


def test_model_get_config_round_trip_keeps_names():
    cfg = config_lib.load_config(TINY, [
        "model.category_ids=[2, 5, 7]", f"model.category_names={json.dumps(['a', 'b c', 'd'])}"])
    model = builders.build_model(cfg, build=False)
    assert model.category_names == ["a", "b c", "d"]
    rebuilt = type(model).from_config(model.get_config())
    assert (rebuilt.category_ids, rebuilt.category_names) == ([2, 5, 7], ["a", "b c", "d"])
    explicit = builders.build_model(cfg, build=False, category_names=["x", "y", "z"])
    assert explicit.category_names == ["x", "y", "z"]
