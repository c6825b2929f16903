"""Configs by name (keras_maskrcnn.config.packaged): one folder shipped in the package and seen as
the checkout's configs/, names resolved only when no file of that path exists."""
import os

import pytest

from keras_maskrcnn import config as config_lib
from keras_maskrcnn.config import ConfigError, load_config, packaged
from support import CONFIGS


def test_packaged_folder_is_the_checkouts_configs_folder():
    """One source of truth: keras_maskrcnn/configs and configs/ are the same directory."""
    assert os.path.realpath(packaged.CONFIG_DIR) == os.path.realpath(CONFIGS)
    assert os.path.islink(packaged.CONFIG_DIR) or os.path.islink(CONFIGS)


def test_list_configs_names_every_yaml_file():
    on_disk = sorted(
        os.path.relpath(os.path.join(root, f), CONFIGS)[:-5].replace(os.sep, "/")
        for root, _, files in os.walk(CONFIGS) for f in files if f.endswith(".yaml"))
    names = config_lib.list_configs()
    assert names == on_disk and len(names) >= 30
    for name in ("shapes", "tiny", "maskrcnn_r50_fpn_coco", "yolact_r50_fpn_coco",
                 "detectron2/mask_rcnn_R_50_FPN_3x"):
        assert name in names


@pytest.mark.parametrize("name", ["shapes", "maskrcnn_r50_fpn_coco", "yolact_r50_fpn_coco",
                                  "detectron2/mask_rcnn_R_50_FPN_3x", "maskrcnn_r101_fpn_coco"])
def test_a_name_loads_the_packaged_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an unrelated directory
    by_path = load_config(os.path.join(CONFIGS, *name.split("/")) + ".yaml")
    assert load_config(name) == by_path
    assert load_config(name + ".yaml") == by_path
    assert load_config(name, ["train.seed=5"]).train.seed == 5


def test_base_of_a_packaged_config_resolves_next_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # base: maskrcnn_r50_fpn_coco.yaml is beside the file
    cfg = load_config("keypoint_rcnn_r50_fpn_coco")
    assert cfg.model.keypoint_head.enabled and cfg.model.backbone.name == "resnet50"


def test_a_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").write_text("train: {seed: 123}\n")
    assert load_config("shapes").train.seed == 123  # the local file, not the packaged config
    assert load_config("shapes").model.num_classes != load_config(
        os.path.join(CONFIGS, "shapes.yaml")).model.num_classes


def test_unknown_names_and_missing_paths_are_errors_that_help(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config("shapez")
    assert str(e.value).startswith("shapez: cannot read config file: no such file")
    assert "'shapes'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("configs/yolact_shapes.yaml")  # the checkout's path, from elsewhere
    assert "--config yolact_shapes" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("configs/detectron2/mask_rcnn_R_50_FPN_3x.yaml")
    assert "--config detectron2/mask_rcnn_R_50_FPN_3x" in str(e.value)
    with pytest.raises(ConfigError, match="no packaged config"):
        load_config(str(tmp_path / "nothing" / "at_all.yaml"))


def test_config_to_yaml_round_trips(tmp_path):
    cfg = load_config("shapes", ["train.seed=9"])
    path = tmp_path / "c.yaml"
    path.write_text(config_lib.config_to_yaml(cfg))
    assert load_config(str(path)) == cfg


def test_base_may_name_a_packaged_config(tmp_path, monkeypatch):
    """A config of one's own, anywhere, on top of a packaged one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("base: shapes\ntrain: {seed: 4}\n")
    cfg = load_config("mine.yaml")
    assert cfg.train.seed == 4 and cfg == load_config("shapes", ["train.seed=4"])
    (tmp_path / "local_base.yaml").write_text("train: {seed: 8}\n")
    (tmp_path / "shapes.yaml").write_text("base: local_base.yaml\n")  # a file still wins
    assert load_config("shapes.yaml").train.seed == 8
    (tmp_path / "bad.yaml").write_text("base: shapez\n")
    with pytest.raises(ConfigError) as e:
        load_config("bad.yaml")
    assert "bad.yaml: base:" in str(e.value) and "'shapes'" in str(e.value)
