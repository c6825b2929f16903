"""Tests for keras_maskrcnn.config: defaults vs torchvision, strict loading, overrides, files."""
import argparse
import ast
import dataclasses
import functools
import glob
import inspect
import math
import os
import sys
import textwrap
import typing

import pytest

from keras_maskrcnn import config as config_lib
from keras_maskrcnn.config import (Config, ConfigError, apply_overrides, config_from_dict,
                                   config_to_dict, load_config, save_config)
from support import CONFIGS, ROOT

CONFIG_DIR = CONFIGS
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- config files
def test_config_directory_has_the_expected_files():
    names = {os.path.basename(f) for f in CONFIG_FILES}
    assert {"maskrcnn_r50_fpn_coco.yaml", "fasterrcnn_r50_fpn_coco.yaml", "tiny.yaml",
            "keypoint_rcnn_r50_fpn_coco.yaml", "maskrcnn_r101_fpn_coco.yaml",
            "shapes.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_file_loads_validates_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_config_file_contents():
    r50 = load_config(os.path.join(CONFIG_DIR, "maskrcnn_r50_fpn_coco.yaml"))
    assert r50.model == Config().model  # the file repeats the paper defaults
    assert (r50.train.batch_size, r50.train.learning_rate, r50.train.total_steps) == (16, 0.02,
                                                                                     90000)
    assert r50.train.lr_decay_steps == (60000, 80000)
    assert r50.data.val.annotations == "data/coco/annotations/instances_val2017.json"
    faster = load_config(os.path.join(CONFIG_DIR, "fasterrcnn_r50_fpn_coco.yaml"))
    assert not faster.model.mask_head.enabled
    assert dataclasses.replace(faster.model, mask_head=r50.model.mask_head) == r50.model
    r101 = load_config(os.path.join(CONFIG_DIR, "maskrcnn_r101_fpn_coco.yaml"))
    assert r101.model.backbone.name == "resnet101"
    kp = load_config(os.path.join(CONFIG_DIR, "keypoint_rcnn_r50_fpn_coco.yaml"))
    assert kp.model.num_classes == 2 and kp.model.keypoint_head.enabled
    assert not kp.model.mask_head.enabled
    assert kp.model.keypoint_head.num_keypoints == 17
    assert "person_keypoints_train2017" in kp.data.train.annotations
    assert "person_keypoints_val2017" in kp.data.val.annotations
    tiny = load_config(os.path.join(CONFIG_DIR, "tiny.yaml"))
    assert tiny.model.backbone.width_multiplier == 0.25 and tiny.input.max_size == 128
    shapes = load_config(os.path.join(CONFIG_DIR, "shapes.yaml"))
    assert shapes.data.train.format == "synthetic" and shapes.model.backbone.name == "resnet18"
    assert shapes.model.mask_head.enabled and shapes.model.keypoint_head.enabled


# ----------------------------------------------------------------------------- defaults
def torchvision_mismatches(cfg, tv):
    """Differences between cfg and torchvision's maskrcnn / keypointrcnn resnet50_fpn."""
    mask_rcnn, keypoint_rcnn = tv
    m, rpn, heads, tr = cfg.model, mask_rcnn.rpn, mask_rcnn.roi_heads, mask_rcnn.transform
    bn_eps = mask_rcnn.backbone.body.layer1[0].bn1.eps
    kp_head = keypoint_rcnn.roi_heads.keypoint_head
    pairs = {
        "rpn.pre_nms_top_n_train": (m.rpn.pre_nms_top_n_train, rpn._pre_nms_top_n["training"]),
        "rpn.pre_nms_top_n_test": (m.rpn.pre_nms_top_n_test, rpn._pre_nms_top_n["testing"]),
        "rpn.post_nms_top_n_train": (m.rpn.post_nms_top_n_train,
                                     rpn._post_nms_top_n["training"]),
        "rpn.post_nms_top_n_test": (m.rpn.post_nms_top_n_test, rpn._post_nms_top_n["testing"]),
        "rpn.nms_threshold": (m.rpn.nms_threshold, rpn.nms_thresh),
        "rpn.min_size": (m.rpn.min_size, rpn.min_size),
        "rpn.score_threshold": (m.rpn.score_threshold, rpn.score_thresh),
        "rpn.fg_iou_threshold": (m.rpn.fg_iou_threshold, rpn.proposal_matcher.high_threshold),
        "rpn.bg_iou_threshold": (m.rpn.bg_iou_threshold, rpn.proposal_matcher.low_threshold),
        "rpn.allow_low_quality_matches": (m.rpn.allow_low_quality_matches,
                                          rpn.proposal_matcher.allow_low_quality_matches),
        "rpn.batch_size_per_image": (m.rpn.batch_size_per_image,
                                     rpn.fg_bg_sampler.batch_size_per_image),
        "rpn.positive_fraction": (m.rpn.positive_fraction, rpn.fg_bg_sampler.positive_fraction),
        "rpn.box_weights": (m.rpn.box_weights, tuple(rpn.box_coder.weights)),
        "rpn.scale_clip": (m.rpn.scale_clip, rpn.box_coder.bbox_xform_clip),
        "rpn.num_convs": (m.rpn.num_convs, len(rpn.head.conv)),
        "anchors.sizes": (m.anchors.sizes, tuple(s for (s,) in rpn.anchor_generator.sizes)),
        "anchors.aspect_ratios": (m.anchors.aspect_ratios,
                                  tuple(rpn.anchor_generator.aspect_ratios[0])),
        "roi_heads.fg_iou_threshold": (m.roi_heads.fg_iou_threshold,
                                       heads.proposal_matcher.high_threshold),
        "roi_heads.bg_iou_threshold": (m.roi_heads.bg_iou_threshold,
                                       heads.proposal_matcher.low_threshold),
        "roi_heads.allow_low_quality_matches": (m.roi_heads.allow_low_quality_matches,
                                                heads.proposal_matcher.allow_low_quality_matches),
        "roi_heads.batch_size_per_image": (m.roi_heads.batch_size_per_image,
                                           heads.fg_bg_sampler.batch_size_per_image),
        "roi_heads.positive_fraction": (m.roi_heads.positive_fraction,
                                        heads.fg_bg_sampler.positive_fraction),
        "roi_heads.box_weights": (m.roi_heads.box_weights, tuple(heads.box_coder.weights)),
        "roi_heads.scale_clip": (m.roi_heads.scale_clip, heads.box_coder.bbox_xform_clip),
        "roi_heads.score_threshold": (m.roi_heads.score_threshold, heads.score_thresh),
        "roi_heads.nms_threshold": (m.roi_heads.nms_threshold, heads.nms_thresh),
        "roi_heads.detections_per_image": (m.roi_heads.detections_per_image,
                                           heads.detections_per_img),
        "roi_align.sampling_ratio": (m.roi_align.sampling_ratio, heads.box_roi_pool.sampling_ratio),
        "roi_align.levels": ((m.roi_align.min_level, m.roi_align.max_level),
                             (m.fpn.min_level, m.fpn.min_level + len(
                                 heads.box_roi_pool.featmap_names) - 1)),
        "box_head.pool_size": ((m.box_head.pool_size,) * 2, tuple(heads.box_roi_pool.output_size)),
        "box_head.fc_dim": (m.box_head.fc_dim, heads.box_head.fc7.out_features),
        "box_head.num_fc": (m.box_head.num_fc, len(list(heads.box_head.children()))),
        "mask_head.pool_size": ((m.mask_head.pool_size,) * 2,
                                tuple(heads.mask_roi_pool.output_size)),
        "mask_head.num_convs": (m.mask_head.num_convs, len(heads.mask_head)),
        "mask_head.conv_dim": (m.mask_head.conv_dim, heads.mask_head[-1][0].out_channels),
        "keypoint_head.pool_size": ((m.keypoint_head.pool_size,) * 2, tuple(
            keypoint_rcnn.roi_heads.keypoint_roi_pool.output_size)),
        "keypoint_head.num_convs": (m.keypoint_head.num_convs, len(kp_head) // 2),
        "keypoint_head.conv_dim": (m.keypoint_head.conv_dim, kp_head[-2].out_channels),
        "keypoint_head.num_keypoints": (
            m.keypoint_head.num_keypoints,
            keypoint_rcnn.roi_heads.keypoint_predictor.kps_score_lowres.out_channels),
        "fpn.channels": (m.fpn.channels, mask_rcnn.backbone.out_channels),
        "backbone.bn_eps": (m.backbone.bn_eps, bn_eps),
        "input.min_size": ((cfg.input.min_size_train, cfg.input.min_size_test),
                           (tuple(tr.min_size), tr.min_size[-1])),
        "input.max_size": (cfg.input.max_size, tr.max_size),
        "input.size_divisor": (cfg.input.size_divisor, tr.size_divisible),
        "input.pixel_mean": (cfg.input.pixel_mean, tuple(tr.image_mean)),
        "input.pixel_std": (cfg.input.pixel_std, tuple(tr.image_std)),
    }
    return [f"{k}: ours {a!r} != torchvision {b!r}" for k, (a, b) in pairs.items() if a != b]


@functools.lru_cache(maxsize=1)
def build_torchvision_models(torchvision):
    det = torchvision.models.detection
    return (det.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81),
            det.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None))


def test_defaults_equal_torchvision_maskrcnn_resnet50_fpn(torch, torchvision):
    assert torchvision_mismatches(Config(), build_torchvision_models(torchvision)) == []


def test_mutation_a_changed_default_is_caught(torch, torchvision):
    """Proves the comparison above can fail: perturbed conventions are reported."""
    tv = build_torchvision_models(torchvision)
    cfg = apply_overrides(Config(), ["model.rpn.nms_threshold=0.69",
                                     "model.roi_heads.box_weights=[10, 10, 10, 10]",
                                     "input.pixel_mean=[0.406, 0.456, 0.485]"])  # BGR order
    found = " ".join(torchvision_mismatches(cfg, tv))
    for key in ("rpn.nms_threshold", "roi_heads.box_weights", "input.pixel_mean"):
        assert key in found
    assert len(torchvision_mismatches(cfg, tv)) == 3


def test_defaults_torchvision_facts_from_source(torch, torchvision):
    """Constants torchvision hard-codes in functions rather than attributes."""
    det = torchvision.models.detection
    assert "beta=1 / 9" in inspect.getsource(det.roi_heads.fastrcnn_loss)
    assert "beta=1 / 9" in inspect.getsource(det.rpn.RegionProposalNetwork.compute_loss)
    assert Config().model.rpn.smooth_l1_beta == Config().model.roi_heads.smooth_l1_beta == 1 / 9
    assert "min_size=1e-2" in inspect.getsource(det.roi_heads.RoIHeads.postprocess_detections)
    assert Config().model.roi_heads.min_size == 1e-2
    mapper = inspect.signature(torchvision.ops.poolers.LevelMapper).parameters
    roi_align = Config().model.roi_align
    assert (roi_align.canonical_size, roi_align.canonical_level) == (
        mapper["canonical_scale"].default, mapper["canonical_level"].default)
    # torchvision pools with aligned=False; our default is the paper's aligned=True (documented).
    assert "aligned" not in inspect.getsource(torchvision.ops.poolers._multiscale_roi_align)
    assert inspect.signature(torchvision.ops.roi_align).parameters["aligned"].default is False
    assert roi_align.aligned is True
    # freeze_at 2 (stem + res2) == torchvision's default trainable_layers=3 of 5 stages.
    trainable = det.backbone_utils._validate_trainable_layers(True, None, 5, 3)
    assert Config().model.backbone.freeze_at == 5 - trainable
    names = torchvision.models._meta._COCO_PERSON_KEYPOINT_NAMES
    assert Config().model.keypoint_head.keypoint_names == tuple(names)


def test_other_defaults():
    cfg = Config()
    m = cfg.model
    assert m.num_classes == 81 and m.backbone.name == "resnet50" and m.backbone.freeze_at == 2
    assert (m.fpn.min_level, m.fpn.max_level) == (2, 6)
    assert m.fpn.levels == ("P2", "P3", "P4", "P5", "P6")
    assert m.roi_heads.add_gt_as_proposals
    assert (m.mask_head.mask_size, m.keypoint_head.heatmap_size) == (28, 56)
    assert m.mask_head.enabled and not m.keypoint_head.enabled and m.mask_head.threshold == 0.5
    assert m.keypoint_head.flip_indices == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13,
                                            16, 15)
    coco_skeleton_1_based = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12],
                             [7, 13], [6, 7], [6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2],
                             [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
    assert m.keypoint_head.skeleton == tuple((a - 1, b - 1) for a, b in coco_skeleton_1_based)
    t = cfg.train
    assert (t.optimizer, t.momentum, t.weight_decay, t.base_learning_rate) == ("sgd", 0.9,
                                                                            1e-4, 0.02)
    assert (t.total_steps, t.lr_decay_steps, t.lr_decay_factor) == (90000, (60000, 80000), 0.1)
    assert (t.warmup_steps, t.warmup_factor, t.clip_gradient_norm) == (1000, 0.001, None)
    assert cfg.input.max_instances == 100 and cfg.data.flip_probability == 0.5
    assert not cfg.export.include_full_masks


def test_learning_rate_scales_linearly_with_batch_size():
    assert Config().train.learning_rate == 0.02
    assert apply_overrides(Config(), ["train.batch_size=2"]).train.learning_rate == 0.0025
    cfg = apply_overrides(Config(), ["train.batch_size=8", "train.reference_batch_size=8"])
    assert cfg.train.learning_rate == 0.02


# ----------------------------------------------------------------------------- strictness
def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "bad.yaml", """
        model:
          rpn:
            nms_thresh: 0.6
        """)
    msg = error_of(load_config, path)
    assert path in msg and "model.rpn.nms_thresh" in msg and "'model.rpn.nms_threshold'" in msg
    # A key in the wrong section points at the section(s) where it exists.
    msg = error_of(config_from_dict, {"train": {"nms_threshold": 0.5}}, source="x.yaml")
    assert "x.yaml: train.nms_threshold: unknown key" in msg
    assert "'model.rpn.nms_threshold'" in msg and "'model.roi_heads.nms_threshold'" in msg
    msg = error_of(config_from_dict, {"modle": {}})
    assert "'model'" in msg
    msg = error_of(config_from_dict, {"model": {"zzzz": 1}})
    assert "(valid keys: num_classes, backbone, fpn" in msg


@pytest.mark.parametrize("section, value, expect", [
    ({"train": {"batch_size": "2"}}, "train.batch_size", "expected int, got str '2'"),
    ({"train": {"batch_size": True}}, "train.batch_size", "expected int, got bool"),
    ({"train": {"batch_size": 2.0}}, "train.batch_size", "expected int, got float"),
    ({"train": {"momentum": "0.9"}}, "train.momentum", "expected float, got str"),
    ({"train": {"momentum": False}}, "train.momentum", "expected float, got bool"),
    ({"train": {"momentum": float("nan")}}, "train.momentum", "expected a finite float"),
    ({"train": {"base_learning_rate": float("inf")}}, "train.base_learning_rate",
     "expected a finite float, got float inf"),
    ({"model": {"mask_head": {"enabled": "yes"}}}, "model.mask_head.enabled", "expected bool"),
    ({"model": {"mask_head": {"enabled": 1}}}, "model.mask_head.enabled", "expected bool"),
    ({"model": {"num_classes": None}}, "model.num_classes", "expected int, got NoneType"),
    ({"model": {"anchors": {"sizes": 32}}}, "model.anchors.sizes", "expected a list of float"),
    ({"model": {"anchors": {"sizes": [32, "64", 128, 256, 512]}}}, "model.anchors.sizes[1]",
     "expected float"),
    ({"input": {"pixel_mean": [0.5, 0.5]}}, "input.pixel_mean", "a list of 3 float, got 2"),
    ({"model": {"keypoint_head": {"flip_pairs": [[1, 2, 3]]}}},
     "model.keypoint_head.flip_pairs[0]", "a list of 2 int, got 3 items"),
    ({"model": {"backbone": {"name": "resnet152"}}}, "model.backbone.name",
     "expected one of 'resnet18', 'resnet34', 'resnet50', 'resnet101'"),
    ({"model": {"backbone": "resnet50"}}, "model.backbone", "expected a mapping, got str"),
    ({"train": {"output_dir": 3}}, "train.output_dir", "expected string, got int"),
    ({"eval": {"max_images": "all"}}, "eval.max_images", "expected null or int"),
])
def test_wrong_types_are_rejected(section, value, expect):
    msg = error_of(config_from_dict, section, source="t.yaml")
    assert msg.startswith(f"t.yaml: {value}: ") and expect in msg


def test_int_is_accepted_for_float_and_normalised():
    cfg = config_from_dict({"train": {"momentum": 1 - 1, "base_learning_rate": 1},
                            "model": {"anchors": {"sizes": [16, 32, 64, 128, 256]}}})
    assert type(cfg.train.base_learning_rate) is float and cfg.train.momentum == 0.0
    assert all(type(s) is float for s in cfg.model.anchors.sizes)
    assert isinstance(cfg.model.anchors.sizes, tuple)
    assert config_from_dict({"eval": {"max_images": None}}).eval.max_images is None


@pytest.mark.parametrize("overrides, key, expect", [
    (["train.base_learning_rate=-0.1"], "train.base_learning_rate", "must be > 0, got"),
    (["train.base_learning_rate=0"], "train.base_learning_rate", "must be > 0, got"),
    (["model.rpn.nms_threshold=1.5"], "model.rpn.nms_threshold", "must be in [0, 1]"),
    (["model.roi_heads.score_threshold=-0.01"], "model.roi_heads.score_threshold", "[0, 1]"),
    (["model.rpn.bg_iou_threshold=0.8"], "model.rpn.bg_iou_threshold",
     "must be <= fg_iou_threshold (0.7)"),
    (["model.roi_heads.fg_iou_threshold=0.4"], "model.roi_heads.bg_iou_threshold", "<="),
    (["train.lr_decay_steps=[80000, 60000]"], "train.lr_decay_steps", "strictly increasing"),
    (["train.lr_decay_steps=[60000, 60000]"], "train.lr_decay_steps", "strictly increasing"),
    (["train.lr_decay_steps=[60000, 95000]"], "train.lr_decay_steps", "[1, 90000]"),
    (["train.warmup_steps=100000"], "train.warmup_steps", "[0, 90000]"),
    (["train.lr_decay_factor=0"], "train.lr_decay_factor", "(0, 1]"),
    (["model.anchors.aspect_ratios=[]"], "model.anchors.aspect_ratios", "must not be empty"),
    (["model.anchors.aspect_ratios=[0.5, -1]"], "model.anchors.aspect_ratios", "must be > 0"),
    (["model.anchors.sizes=[32, 64, 128, 256]"], "model.anchors.sizes",
     "one size per FPN level P2..P6 (5), got 4"),
    (["model.fpn.min_level=1"], "model.fpn.min_level", "[2, 5]"),
    (["model.fpn.max_level=7"], "model.fpn.max_level", "[5, 6]"),
    (["model.fpn.min_level=3", "model.anchors.sizes=[1, 2, 3, 4]"], "model.roi_align.min_level",
     "P2 is not an FPN level (P3, P4, P5, P6)"),
    (["model.roi_align.sampling_ratio=-1"], "model.roi_align.sampling_ratio", "must be >= 0"),
    (["model.roi_align.canonical_level=6"], "model.roi_align.canonical_level", "[2, 5]"),
    (["model.backbone.freeze_at=6"], "model.backbone.freeze_at", "[0, 5]"),
    (["model.backbone.width_multiplier=0"], "model.backbone.width_multiplier", "(0, 8]"),
    (["model.num_classes=1"], "model.num_classes", "must be >= 2, got 1"),
    (["model.keypoint_head.flip_pairs=[[1, 17]]"], "model.keypoint_head.flip_pairs[0]",
     "two different indices in [0, 16], got (1, 17)"),
    (["model.keypoint_head.flip_pairs=[[1, 2], [2, 3]]"], "model.keypoint_head.flip_pairs",
     "an index appears in two pairs"),
    (["model.keypoint_head.skeleton=[[3, 3]]"], "model.keypoint_head.skeleton[0]", "different"),
    (["model.keypoint_head.num_keypoints=4"], "model.keypoint_head.keypoint_names",
     "has 17 names, num_keypoints is 4"),
    (["input.min_size_train_sampling=range"], "input.min_size_train", "needs [min, max]"),
    (["input.min_size_train=[]"], "input.min_size_train", "must not be empty"),
    (["input.max_size=700"], "input.max_size", "largest min size (800)"),
    (["input.pixel_std=[0.2, 0, 0.2]"], "input.pixel_std", "must be > 0"),
    (["data.train.format=tfrecord"], "data.train.tfrecords", "required for format 'tfrecord'"),
    (["data.val.annotations=null"], "data.val.annotations", "required for format 'coco'"),
    (["data.flip_probability=1.5"], "data.flip_probability", "[0, 1]"),
    (["data.synthetic.max_objects=0"], "data.synthetic.max_objects", ">= min_objects"),
    (["train.clip_gradient_norm=0"], "train.clip_gradient_norm", "must be > 0"),
    (["train.momentum=1"], "train.momentum", "[0, 1)"),
    (["eval.every_n_steps=0"], "eval.every_n_steps", "must be > 0"),
])
def test_bad_values_are_rejected_at_load_time(tmp_path, overrides, key, expect):
    path = write(tmp_path, "ok.yaml", "train: {batch_size: 4}\n")
    msg = error_of(load_config, path, overrides)
    assert f": {key}: " in msg and expect in msg
    assert path in msg and "override" in msg  # names the file and the override


def test_bad_value_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path, "bad.yaml", """
        train:
          lr_decay_steps: [60000, 100000]
        """)
    assert error_of(load_config, path) == (
        f"{path}: train.lr_decay_steps: must be in [1, 90000], got 100000")


def test_configs_built_in_python_are_validated_too():
    with pytest.raises(ConfigError, match="num_classes: must be >= 2"):
        config_lib.ModelConfig(num_classes=1)
    with pytest.raises(ConfigError, match="backbone: expected BackboneConfig"):
        config_lib.ModelConfig(backbone={"name": "resnet18"})
    with pytest.raises(ConfigError, match="nms_threshold"):
        dataclasses.replace(Config().model.rpn, nms_threshold=2.0)
    sizes = config_lib.AnchorConfig(sizes=[1, 2, 3, 4, 5]).sizes
    assert sizes == (1.0, 2.0, 3.0, 4.0, 5.0) and isinstance(sizes, tuple)
    assert issubclass(ConfigError, ValueError)


def test_frozen_and_hashable():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.batch_size = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = None
    assert hash(cfg) == hash(Config()) and cfg == Config()
    assert isinstance(cfg.model.keypoint_head.flip_pairs[0], tuple)


def test_yaml_details(tmp_path):
    path = write(tmp_path, "a.yaml", """
        model:
          backbone: {bn_eps: 1e-3}   # YAML 1.1 would read 1e-3 as a string
          rpn: {min_size: 2E-4}
        """)
    cfg = load_config(path)
    assert cfg.model.backbone.bn_eps == 1e-3 and cfg.model.rpn.min_size == 2e-4
    path = write(tmp_path, "dup.yaml", "train:\n  batch_size: 2\n  batch_size: 4\n")
    msg = error_of(load_config, path)
    assert path in msg and "duplicate key 'batch_size' (line 3)" in msg
    assert load_config(write(tmp_path, "empty.yaml", "")) == Config()
    assert load_config(write(tmp_path, "n.yaml", "model:\n")) == Config()
    assert "top level" in error_of(load_config, write(tmp_path, "l.yaml", "- 1\n"))
    assert "invalid YAML" in error_of(load_config, write(tmp_path, "i.yaml", "a: [1\n"))
    assert "cannot read" in error_of(load_config, str(tmp_path / "missing.yaml"))


# ----------------------------------------------------------------------------- overrides
def test_overrides(tmp_path):
    path = write(tmp_path, "c.yaml", "model:\n  backbone: {name: resnet50, freeze_at: 1}\n")
    cfg = load_config(path, ["train.batch_size=2", "model.backbone.name=resnet18",
                             "model.anchors.sizes=[16,32,64,128,256]",
                             "model.keypoint_head.skeleton=[[0, 1], [1, 2]]",
                             "model.fpn={channels: 64}", "train.clip_gradient_norm=10",
                             "eval.max_images=null", "train.output_dir=runs/a=b"])
    assert cfg.train.batch_size == 2 and cfg.model.backbone.name == "resnet18"
    assert cfg.model.backbone.freeze_at == 1  # untouched keys of the file survive
    assert cfg.model.anchors.sizes == (16, 32, 64, 128, 256)
    assert cfg.model.keypoint_head.skeleton == ((0, 1), (1, 2))
    assert cfg.model.fpn == config_lib.FPNConfig(channels=64)  # a mapping merges
    assert cfg.train.clip_gradient_norm == 10.0 and cfg.train.output_dir == "runs/a=b"
    # Later overrides win.
    assert load_config(path, ["train.seed=1", "train.seed=2"]).train.seed == 2


@pytest.mark.parametrize("cli", ["keras_maskrcnn/cli/train.py", "keras_maskrcnn/cli/evaluate.py",
                                 "keras_maskrcnn/predict.py",
                                 "keras_maskrcnn/export/command.py", "keras_maskrcnn/convert/__main__.py"])
def test_set_takes_several_overrides_after_one_flag_and_repeats(cli, tmp_path):
    """``--set a=1 b=2`` (detectron2's habit) and repeated ``--set``, in command-line order;
    every command line that takes --set declares it with ``add_override_argument``."""
    root = ROOT
    source = open(os.path.join(root, cli)).read()
    assert "add_override_argument(" in source and '"--set"' not in source
    parser = argparse.ArgumentParser()
    config_lib.add_override_argument(parser)
    parser.add_argument("--config")
    args = parser.parse_args(["--set", "train.seed=1", "train.batch_size=4", "--config", "c",
                              "--set", "train.seed=3", "--set", "train.warmup_steps=0"])
    assert args.set == ["train.seed=1", "train.batch_size=4", "train.seed=3",
                        "train.warmup_steps=0"]
    assert parser.parse_args([]).set == []
    path = write(tmp_path, "c.yaml", "train: {batch_size: 2}\n")
    cfg = load_config(path, args.set)
    assert (cfg.train.seed, cfg.train.batch_size, cfg.train.warmup_steps) == (3, 4, 0)


def test_train_and_evaluate_command_lines_take_several_overrides(tmp_path):
    root = ROOT
    sys.path.insert(0, root)
    try:
        import evaluate
        import train
    finally:
        sys.path.remove(root)
    args = train.parse_args(["--config", "c.yaml", "--set", "a.b=1", "c.d=2", "--set", "e=3"])
    assert args.set == ["a.b=1", "c.d=2", "e=3"]
    args = evaluate.parse_args(["--config", "c.yaml", "--weights", "w.h5", "--set", "a=1", "b=2"])
    assert args.set == ["a=1", "b=2"]


def test_override_errors(tmp_path):
    path = write(tmp_path, "c.yaml", "train: {batch_size: 4}\n")
    msg = error_of(load_config, path, ["model.backbone.nmae=resnet18"])
    assert path in msg and "model.backbone.nmae" in msg and "'model.backbone.name'" in msg
    msg = error_of(load_config, path, ["trian.batch_size=2"])
    assert "trian: unknown key (did you mean 'train'?)" in msg
    msg = error_of(load_config, path, ["train.batch_size=two"])
    assert path in msg and "override 'train.batch_size=two'" in msg
    assert "train.batch_size: expected int, got str 'two'" in msg
    assert "is a value, not a section" in error_of(load_config, path, ["train.seed.x=1"])
    assert "not of the form" in error_of(load_config, path, ["train.batch_size"])
    assert "not of the form" in error_of(load_config, path, ["=3"])
    msg = error_of(load_config, path, ["model.fpn={chanels: 64}"])
    assert "model.fpn.chanels" in msg and "'model.fpn.channels'" in msg
    assert "invalid YAML" in error_of(load_config, path, ["model.anchors.sizes=[1, 2"])


def test_apply_overrides_to_a_config():
    cfg = apply_overrides(Config(), ["model.mask_head.enabled=false"])
    assert not cfg.model.mask_head.enabled
    assert dataclasses.replace(cfg.model, mask_head=Config().model.mask_head) == Config().model
    assert "<config> (override" in error_of(apply_overrides, Config(), ["a.b=1"])


# ----------------------------------------------------------------------------- inheritance
def test_base_inheritance(tmp_path):
    write(tmp_path, "base.yaml", """
        model:
          num_classes: 11
          backbone: {name: resnet34, freeze_at: 3}
          anchors: {sizes: [8, 16, 32, 64, 128]}
        train: {batch_size: 4, output_dir: runs/base}
        """)
    os.makedirs(tmp_path / "sub")
    child = write(tmp_path, "sub/child.yaml", """
        base: ../base.yaml
        model:
          backbone: {name: resnet18}
          anchors: {sizes: [16, 32, 64, 128, 256]}
        train: {output_dir: runs/child}
        """)
    cfg = load_config(child)
    assert cfg.model.num_classes == 11 and cfg.train.batch_size == 4
    assert cfg.model.backbone == config_lib.BackboneConfig(name="resnet18", freeze_at=3)
    assert cfg.model.anchors.sizes == (16, 32, 64, 128, 256)  # lists replace, never concatenate
    assert cfg.train.output_dir == "runs/child"
    assert load_config(child, ["model.num_classes=5"]).model.num_classes == 5


def test_base_errors_name_the_right_file(tmp_path):
    base = write(tmp_path, "base.yaml", "train: {batch_size: 0}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmodel: {num_classes: 3}\n")
    assert error_of(load_config, child).startswith(f"{base}: train.batch_size: must be")
    write(tmp_path, "base.yaml", "train: {batch_size: 2}\nmodel: {num_clases: 3}\n")
    assert error_of(load_config, child).startswith(f"{base}: model.num_clases: unknown key")
    write(tmp_path, "base.yaml", "train: {batch_size: 2}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ntrain: {batch_size: 1.5}\n")
    assert error_of(load_config, child).startswith(f"{child}: train.batch_size: expected int")
    child = write(tmp_path, "child.yaml", "base: nowhere.yaml\n")
    assert "nowhere.yaml: cannot read" in error_of(load_config, child)
    child = write(tmp_path, "child.yaml", "base: [base.yaml]\n")
    assert f"{child}: base: expected a file path" in error_of(load_config, child)


def test_second_level_of_inheritance_is_rejected(tmp_path):
    write(tmp_path, "root.yaml", "train: {batch_size: 2}\n")
    middle = write(tmp_path, "middle.yaml", "base: root.yaml\n")
    child = write(tmp_path, "child.yaml", "base: middle.yaml\n")
    assert load_config(middle).train.batch_size == 2  # one level is fine
    msg = error_of(load_config, child)
    assert msg.startswith(f"{middle}: base: ") and "only one level of inheritance" in msg
    # "base" is a file-level directive only, not a config key.
    assert "base: unknown key" in error_of(config_from_dict, {"base": "x.yaml"})


# ----------------------------------------------------------------------------- round trips
def test_save_load_round_trip(tmp_path):
    cfg = apply_overrides(Config(), [
        "model.keypoint_head.enabled=true", "model.rpn.min_size=1e-7",
        "model.roi_heads.smooth_l1_beta=0.1111111111111111", "train.clip_gradient_norm=5.5",
        "input.min_size_train=[640, 800]", "input.min_size_train_sampling=range",
        "data.train={format: tfrecord, tfrecords: 'gs://bucket/train-*.tfrecord'}"])
    path = tmp_path / "out" / "saved.yaml"
    save_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg and hash(loaded) == hash(cfg)
    assert loaded.model.rpn.scale_clip == math.log(1000 / 16)  # exact float round trip
    assert config_from_dict(config_to_dict(cfg)) == cfg
    d = config_to_dict(cfg)
    assert d["model"]["anchors"]["sizes"] == [32.0, 64.0, 128.0, 256.0, 512.0]
    assert d["model"]["keypoint_head"]["flip_pairs"][0] == [1, 2]
    assert set(d) == {"model", "input", "data", "train", "eval", "export"}


def test_config_module_is_import_light():
    """The config package imports only yaml, the standard library and its own modules."""
    package_dir = os.path.dirname(inspect.getfile(config_lib))
    files = sorted(glob.glob(os.path.join(package_dir, "*.py")))
    own = {os.path.splitext(os.path.basename(f))[0] for f in files}
    assert {"__init__", "fields", "schema", "loading"} <= own
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        modules = {alias.name.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        relative = {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level > 0}
        assert modules <= {"__future__", "dataclasses", "difflib", "functools", "math", "os",
                           "re", "reprlib", "typing", "yaml"}, path
        assert relative <= own, path


# ----------------------------------------------------------------------------- schema fields
def test_model_architecture(tmp_path):
    assert Config().model.architecture == "mask_rcnn"
    assert config_lib.ARCHITECTURES == ("mask_rcnn", "yolact")
    path = write(tmp_path, "arch.yaml", "model:\n  architecture: yolact\n")
    assert load_config(path).model.architecture == "yolact"
    path = write(tmp_path, "ok.yaml", "model:\n  architecture: mask_rcnn\n")
    assert load_config(path) == Config()
    msg = error_of(load_config, path, ["model.architecture=retinanet"])
    assert msg.startswith(f"{path} (override 'model.architecture=retinanet'): "
                          "model.architecture: expected one of 'mask_rcnn', 'yolact'")


def test_yolact_section_defaults_are_the_reference(tmp_path):
    y = Config().model.yolact
    assert (y.num_prototypes, y.anchor_scales, y.aspect_ratios, y.square_anchors) == (
        32, (24, 48, 96, 192, 384), (1, 0.5, 2), True)
    assert (y.pos_threshold, y.neg_threshold, y.crowd_threshold, y.negpos_ratio,
            y.max_masks) == (0.5, 0.4, 0.7, 3, 100)
    assert (y.box_loss_weight, y.class_loss_weight, y.mask_loss_weight,
            y.semantic_loss_weight) == (1.5, 1.0, 6.125, 1.0)
    assert (y.score_threshold, y.nms_threshold, y.top_k, y.detections_per_image,
            y.fast_nms) == (0.05, 0.5, 200, 100, True)
    i = Config().input
    assert (i.resize, i.size) == ("shorter_side", 550)
    assert Config().data.augment == "none"
    path = write(tmp_path, "y.yaml", "model:\n  architecture: yolact\n  yolact:\n"
                                     "    neg_threshold: 0.6\n")
    assert error_of(load_config, path).endswith(
        "model.yolact.neg_threshold: must be <= pos_threshold (0.5), got 0.6")
    path = write(tmp_path, "r.yaml", "input:\n  resize: letterbox\n")
    assert "input.resize: expected one of 'shorter_side', 'fixed_square'" in error_of(
        load_config, path)


def test_model_accel(tmp_path):
    assert Config().model.accel == "auto" and config_lib.ACCEL_MODES == ("auto", "on", "off")
    path = write(tmp_path, "c.yaml", "train: {batch_size: 4}\n")
    for mode in ("auto", "on", "off", "'on'", "'off'"):  # bare on/off are YAML 1.1 booleans
        assert load_config(path, [f"model.accel={mode}"]).model.accel == mode.strip("'")
    path = write(tmp_path, "off.yaml", "model:\n  accel: off\n")
    cfg = load_config(path)
    assert cfg.model.accel == "off"
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    msg = error_of(load_config, path, ["model.accel=fast"])
    assert "model.accel: expected one of 'auto', 'on', 'off', got str 'fast'" in msg
    assert path in msg
    assert "expected one of" in error_of(config_from_dict, {"model": {"accel": 1}})
    doc = {f.name: f.metadata["doc"] for f in dataclasses.fields(config_lib.ModelConfig)}
    assert "auto = on when TensorFlow sees no GPU or TPU" in doc["accel"]


def test_rules_are_attached_to_fields():
    from keras_maskrcnn.config import fields
    rpn = {f.name: f for f in dataclasses.fields(config_lib.RPNConfig)}
    assert fields.unit in rpn["nms_threshold"].metadata["rules"]
    msg = error_of(config_from_dict, {"model": {"fpn": {"channels": 0}}}, source="t.yaml")
    assert msg == "t.yaml: model.fpn.channels: must be > 0, got 0"
    with pytest.raises(ConfigError, match="^channels: must be > 0, got -1$"):
        config_lib.FPNConfig(channels=-1)

    @dataclasses.dataclass(frozen=True)
    class Section(fields.Section):  # a new section needs no validate() for one-field rules
        size: int = fields.param(3, fields.positive, "a size")
        sizes: typing.Tuple[float, ...] = fields.param(
            (1.0,), (fields.non_empty, fields.in_range(0, 2)))
        limit: typing.Optional[int] = fields.param(None, fields.at_least(4))

    assert Section().size == 3 and Section(limit=None).limit is None  # None skips the rules
    for kwargs, expect in [({"size": 0}, "size: must be > 0, got 0"),
                           ({"sizes": ()}, "sizes: must not be empty"),
                           ({"sizes": (1.0, 2.5)}, "sizes: must be in [0, 2], got 2.5"),
                           ({"limit": 3}, "limit: must be >= 4, got 3")]:
        with pytest.raises(ConfigError) as info:
            Section(**kwargs)
        assert str(info.value) == expect


MODEL_SECTIONS = (config_lib.ModelConfig, config_lib.BackboneConfig, config_lib.FPNConfig,
                  config_lib.AnchorConfig, config_lib.RPNConfig, config_lib.RoIAlignConfig,
                  config_lib.RoIHeadsConfig, config_lib.BoxHeadConfig,
                  config_lib.MaskHeadConfig, config_lib.KeypointHeadConfig,
                  config_lib.LossWeightsConfig, config_lib.YolactConfig)


@pytest.mark.parametrize("cls", MODEL_SECTIONS, ids=lambda c: c.__name__)
def test_model_fields_say_what_they_mean_and_where_they_come_from(cls):
    from keras_maskrcnn.config import fields
    assert cls.__doc__
    for f in dataclasses.fields(cls):
        if fields.is_section(fields.field_types(cls)[f.name]):
            continue
        assert f.metadata["doc"], f"{cls.__name__}.{f.name}"
        if f.name not in ("enabled", "weights", "skeleton"):  # switches and paths, no default
            assert f.metadata["source"] in (fields.PAPER, fields.TORCHVISION, fields.DETECTRON,
                                            fields.OURS, fields.YOLACT), \
                f"{cls.__name__}.{f.name}"


# ------------------------------------------------------------------ architecture-aware rules
@pytest.mark.parametrize("architecture,overrides,key,expect", [
    ("yolact", ["model.yolact.neg_threshold=0.6"], "model.yolact.neg_threshold",
     "must be <= pos_threshold"),
    ("yolact", ["model.yolact.anchor_scales=[24, 48]"], "model.yolact.anchor_scales",
     "one scale per level P3..P7 (5), got 2"),
    ("mask_rcnn", ["model.rpn.bg_iou_threshold=0.8"], "model.rpn.bg_iou_threshold",
     "must be <= fg_iou_threshold (0.7)"),
    ("mask_rcnn", ["model.roi_heads.fg_iou_threshold=0.4"], "model.roi_heads.bg_iou_threshold",
     "<="),
    ("mask_rcnn", ["model.roi_align.max_level=1"], "model.roi_align.max_level", ">= min_level"),
    ("mask_rcnn", ["model.keypoint_head.num_keypoints=4"], "model.keypoint_head.keypoint_names",
     "has 17 names"),
    ("mask_rcnn", ["model.anchors.sizes=[32, 64]"], "model.anchors.sizes", "one size per FPN"),
])
def test_only_the_active_architectures_sections_are_validated(architecture, overrides, key,
                                                              expect):
    """A section's cross-field rules run for the architecture that reads it, and only then:
    the other architecture loads the same values (it ignores the section)."""
    other = {"mask_rcnn": "yolact", "yolact": "mask_rcnn"}[architecture]
    msg = error_of(apply_overrides, Config(), [f"model.architecture={architecture}", *overrides])
    assert f"{key}: " in msg and expect in msg, msg
    cfg = apply_overrides(Config(), [f"model.architecture={other}", *overrides])
    assert cfg.model.architecture == other
    assert config_lib.schema.ARCHITECTURE_SECTIONS[other]  # what it reads instead


def test_field_rules_hold_whatever_the_architecture():
    """Types and ranges are checked in every section (a value must parse)."""
    msg = error_of(apply_overrides, Config(), ["model.architecture=yolact",
                                               "model.rpn.nms_threshold=1.5"])
    assert "model.rpn.nms_threshold: must be in [0, 1]" in msg


@pytest.mark.parametrize("overrides,key,expect", [
    (["model.backbone.variant=c4"], "model.backbone.variant", "needs fpn, got 'c4'"),
    (["model.keypoint_head.enabled=true"], "model.keypoint_head.enabled", "no keypoint head"),
    (["input.gt_mask_format=cropped", "input.gt_mask_size=28"], "input.gt_mask_format",
     "'yolact' takes full GT masks, got 'cropped'"),
])
def test_yolact_refuses_what_it_has_no_part_for(overrides, key, expect):
    msg = error_of(apply_overrides, Config(), ["model.architecture=yolact", *overrides])
    assert f"{key}: " in msg and expect in msg, msg
