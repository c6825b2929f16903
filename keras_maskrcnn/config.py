"""Configuration: frozen dataclasses, read in one place, loaded strictly from YAML.

Defaults are the Mask R-CNN paper / torchvision ``maskrcnn_resnet50_fpn`` settings (1x COCO
schedule). Only ``keras_maskrcnn.builders`` should read a ``Config`` to build layers, models and
datasets. Import-light on purpose: yaml and the standard library only, no TensorFlow.

Conventions pinned here:
- ``model.num_classes`` INCLUDES background (torchvision style): COCO contiguous = 81.
- Every list field is a tuple (the config is frozen and hashable); ints are accepted where a
  float is expected, bools never count as numbers, strings are never converted.
- Learning rate: ``train.learning_rate = base_learning_rate * batch_size / reference_batch_size``
  (linear scaling rule; the paper's 0.02 is for a global batch of 16). Step counts are not scaled.
- Anchor aspect ratio = h / w; ``anchors.sizes`` has one size per pyramid level min..max_level.
- Data paths are relative to the working directory; ``base:`` paths are relative to the YAML file.

YAML: ``load_config(path, overrides)`` reads a file that may name ``base: other.yaml`` (one level
of inheritance, deep-merged: mappings merge, lists and scalars replace), applies ``a.b=value``
overrides (values parsed as YAML), then validates everything. Any problem raises ``ConfigError``
naming the file and the dotted key, before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import typing
from typing import Any, Dict, Iterable, Literal, Mapping, Optional, Tuple

import yaml

__all__ = [
    "ConfigError", "Config", "ModelConfig", "BackboneConfig", "FPNConfig", "AnchorConfig",
    "RPNConfig", "RoIAlignConfig", "RoIHeadsConfig", "BoxHeadConfig", "MaskHeadConfig",
    "KeypointHeadConfig", "LossWeightsConfig", "InputConfig", "DataSplitConfig",
    "SyntheticConfig", "DataConfig", "TrainConfig", "EvalConfig", "ExportConfig",
    "load_config", "config_from_dict", "config_to_dict", "save_config", "apply_overrides",
]


class ConfigError(ValueError):
    """A bad config: ``str(err)`` is ``"<source>: <dotted.key>: <reason>"``."""

    def __init__(self, reason: str, key: Optional[str] = None, source: Optional[str] = None):
        self.reason, self.key, self.source = reason, key, source
        super().__init__(": ".join(p for p in (source, key, reason) if p))


# ----------------------------------------------------------------------------- type checking
@functools.lru_cache(maxsize=None)
def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return "null or " + _type_name(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} {_type_name(args[0])}"
    if _is_section(tp):
        return tp.__name__
    return {bool: "bool", int: "int", float: "float", str: "string"}[tp]


def _coerce(value, tp, key: str):
    """Checks ``value`` against annotation ``tp``; returns it normalised (lists -> tuples,
    int -> float for float fields). Raises ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        try:
            return None if value is None else _coerce(value, inner, key)
        except ConfigError as e:
            if e.key != key:  # an element of a list: keep the inner message
                raise
            raise ConfigError(f"expected {_type_name(tp)}, got {type(value).__name__} "
                              f"{value!r}", key) from None
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            types = [args[0]] * len(value)
        elif len(value) == len(args):
            types = list(args)
        else:
            raise ConfigError(f"expected {_type_name(tp)}, got {len(value)} items", key)
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, types)))
    ok = False
    if origin is Literal:
        ok = any(type(value) is type(a) and value == a for a in args)
    elif _is_section(tp):
        ok = isinstance(value, tp)
    elif tp is float and type(value) in (int, float):
        ok, value = math.isfinite(value), float(value)
    elif tp in (bool, int, str):
        ok = type(value) is tp
    if not ok:
        kind = "a finite float" if tp is float and type(value) is float else _type_name(tp)
        raise ConfigError(f"expected {kind}, got {type(value).__name__} {value!r}", key)
    return value


class _Section:
    """Base of every config dataclass: type-checks and normalises the fields after __init__
    (also for configs built in Python), then runs the section's ``validate``."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = _coerce(getattr(self, f.name), _hints(type(self))[f.name], f.name)
            object.__setattr__(self, f.name, value)  # frozen: normalise in place
        self.validate()

    def validate(self) -> None:
        """Value checks; raise ConfigError with the field name (relative to this section)."""


def _require(cond: bool, key: str, reason: str) -> None:
    if not cond:
        raise ConfigError(reason, key)


def _check_range(obj, names: Iterable[str], lo=None, hi=None, lo_open=False, hi_open=False):
    """Each named field (a number or a tuple of numbers) lies in the interval lo..hi."""
    interval = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if hi == math.inf:
        interval = f"{'>' if lo_open else '>='} {lo}"
    for name in names:
        values = getattr(obj, name)
        for v in values if isinstance(values, tuple) else (values,):
            bad = lo is not None and (v <= lo if lo_open else v < lo)
            bad = bad or (hi is not None and (v >= hi if hi_open else v > hi))
            _require(not bad, name, f"must be {interval}, got {v!r}")


def _positive(obj, *names):
    _check_range(obj, names, lo=0, hi=math.inf, lo_open=True)


def _non_negative(obj, *names):
    _check_range(obj, names, lo=0, hi=math.inf)


def _unit(obj, *names):
    _check_range(obj, names, lo=0, hi=1)


def _check_matcher(obj):
    """Shared by the RPN and RoI heads: IoU thresholds and the balanced sampler."""
    _unit(obj, "fg_iou_threshold", "bg_iou_threshold", "positive_fraction", "nms_threshold",
          "score_threshold")
    _require(obj.bg_iou_threshold <= obj.fg_iou_threshold, "bg_iou_threshold",
             f"must be <= fg_iou_threshold ({obj.fg_iou_threshold}), got {obj.bg_iou_threshold}")
    _positive(obj, "batch_size_per_image", "box_weights", "scale_clip")
    _non_negative(obj, "smooth_l1_beta", "min_size")


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


# ----------------------------------------------------------------------------- model sections
@dataclasses.dataclass(frozen=True)
class BackboneConfig(_Section):
    name: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    width_multiplier: float = 1.0  # scales every channel count; < 1 for tiny test models
    freeze_at: int = 2  # detectron2: 0 nothing frozen, 1 stem, 2 stem+res2, ..., 5 all
    norm: Literal["frozen_bn"] = "frozen_bn"
    bn_eps: float = 1e-5  # torchvision FrozenBatchNorm2d in its detection models
    weights: Optional[str] = None  # backbone weights file (e.g. converted ImageNet); null = random

    def validate(self):
        _check_range(self, ["width_multiplier"], lo=0, hi=8, lo_open=True)
        _check_range(self, ["freeze_at"], lo=0, hi=5)
        _positive(self, "bn_eps")


@dataclasses.dataclass(frozen=True)
class FPNConfig(_Section):
    channels: int = 256
    min_level: int = 2  # finest output "P{min_level}", from backbone C{min_level}
    max_level: int = 6  # 6 adds P6 = max_pool(P5, kernel 1, stride 2); 5 = no extra level

    def validate(self):
        _positive(self, "channels")
        _check_range(self, ["min_level"], lo=2, hi=5)
        _check_range(self, ["max_level"], lo=5, hi=6)

    @property
    def levels(self) -> Tuple[str, ...]:
        """Pyramid level names, finest first: ("P2", ..., "P6")."""
        return tuple(f"P{i}" for i in range(self.min_level, self.max_level + 1))


@dataclasses.dataclass(frozen=True)
class AnchorConfig(_Section):
    sizes: Tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level, sqrt(area)
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)  # h / w, same on every level

    def validate(self):
        _require(len(self.sizes) > 0, "sizes", "must not be empty")
        _require(len(self.aspect_ratios) > 0, "aspect_ratios", "must not be empty")
        _positive(self, "sizes", "aspect_ratios")


@dataclasses.dataclass(frozen=True)
class RPNConfig(_Section):
    num_convs: int = 1  # shared 3x3 conv + ReLU layers before the 1x1 predictors
    pre_nms_top_n_train: int = 2000  # per pyramid level and image
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # per image, after NMS over all levels
    post_nms_top_n_test: int = 1000
    nms_threshold: float = 0.7
    min_size: float = 1e-3  # proposals with a side smaller than this (pixels) are removed
    score_threshold: float = 0.0  # on sigmoid(objectness)
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    allow_low_quality_matches: bool = True
    batch_size_per_image: int = 256  # sampled anchors per image for the loss
    positive_fraction: float = 0.5
    box_weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # (wx, wy, ww, wh)
    scale_clip: float = _SCALE_CLIP  # dw, dh clipped at this before exp when decoding
    smooth_l1_beta: float = 1.0 / 9

    def validate(self):
        _check_range(self, ["num_convs"], lo=1, hi=math.inf)
        _positive(self, "pre_nms_top_n_train", "pre_nms_top_n_test", "post_nms_top_n_train",
                  "post_nms_top_n_test")
        _check_matcher(self)


@dataclasses.dataclass(frozen=True)
class RoIAlignConfig(_Section):
    aligned: bool = True  # half-pixel shift (paper, detectron2); torchvision models use False
    sampling_ratio: int = 2  # samples per bin side (torchvision's adaptive <= 0: unsupported)
    canonical_size: float = 224.0  # level = floor(canonical_level + log2(sqrt(area) / size))
    canonical_level: int = 4
    min_level: int = 2  # RoIs are pooled from P{min_level}..P{max_level}
    max_level: int = 5

    def validate(self):
        _positive(self, "sampling_ratio", "canonical_size")
        _require(self.min_level <= self.max_level, "max_level",
                 f"must be >= min_level ({self.min_level}), got {self.max_level}")
        _check_range(self, ["canonical_level"], lo=self.min_level, hi=self.max_level)


@dataclasses.dataclass(frozen=True)
class RoIHeadsConfig(_Section):
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    allow_low_quality_matches: bool = False
    batch_size_per_image: int = 512  # sampled RoIs per image
    positive_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    box_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    scale_clip: float = _SCALE_CLIP
    smooth_l1_beta: float = 1.0 / 9
    score_threshold: float = 0.05  # inference: detections below are dropped
    nms_threshold: float = 0.5  # inference: per-class NMS
    min_size: float = 1e-2  # inference: detections with a side smaller than this are dropped
    detections_per_image: int = 100

    def validate(self):
        _check_matcher(self)
        _positive(self, "detections_per_image")


@dataclasses.dataclass(frozen=True)
class BoxHeadConfig(_Section):
    pool_size: int = 7
    num_fc: int = 2
    fc_dim: int = 1024

    def validate(self):
        _positive(self, "pool_size", "num_fc", "fc_dim")


@dataclasses.dataclass(frozen=True)
class MaskHeadConfig(_Section):
    enabled: bool = True
    pool_size: int = 14  # RoIAlign output; predicted masks are 2 * pool_size (28)
    num_convs: int = 4
    conv_dim: int = 256
    class_agnostic: bool = False  # True: one mask channel instead of num_classes
    threshold: float = 0.5  # binarisation of pasted masks

    def validate(self):
        _positive(self, "pool_size", "conv_dim")
        _non_negative(self, "num_convs")
        _unit(self, "threshold")

    @property
    def mask_size(self) -> int:
        return 2 * self.pool_size


@dataclasses.dataclass(frozen=True)
class KeypointHeadConfig(_Section):
    enabled: bool = False
    pool_size: int = 14  # RoIAlign output; heatmaps are 4 * pool_size (56)
    num_keypoints: int = 17
    num_convs: int = 8
    conv_dim: int = 512
    keypoint_names: Tuple[str, ...] = _COCO_KEYPOINT_NAMES
    flip_pairs: Tuple[Tuple[int, int], ...] = _COCO_FLIP_PAIRS  # swapped by a horizontal flip
    skeleton: Tuple[Tuple[int, int], ...] = _COCO_SKELETON  # 0-based edges, for drawing only

    def validate(self):
        _positive(self, "pool_size", "num_keypoints", "num_convs", "conv_dim")
        k = self.num_keypoints
        _require(len(self.keypoint_names) == k, "keypoint_names",
                 f"has {len(self.keypoint_names)} names, num_keypoints is {k}")
        _require(len(set(self.keypoint_names)) == k, "keypoint_names", "names must be unique")
        for name in ("flip_pairs", "skeleton"):
            for i, (a, b) in enumerate(getattr(self, name)):
                _require(0 <= a < k and 0 <= b < k and a != b, f"{name}[{i}]",
                         f"needs two different indices in [0, {k - 1}], got {(a, b)}")
        flat = [i for pair in self.flip_pairs for i in pair]
        _require(len(set(flat)) == len(flat), "flip_pairs", "an index appears in two pairs")

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
class LossWeightsConfig(_Section):
    rpn_objectness: float = 1.0
    rpn_box: float = 1.0
    box_classification: float = 1.0
    box_regression: float = 1.0
    mask: float = 1.0
    keypoint: float = 1.0

    def validate(self):
        _non_negative(self, *(f.name for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    num_classes: int = 81  # INCLUDING background (id 0); COCO contiguous = 81
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    fpn: FPNConfig = dataclasses.field(default_factory=FPNConfig)
    anchors: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    rpn: RPNConfig = dataclasses.field(default_factory=RPNConfig)
    roi_align: RoIAlignConfig = dataclasses.field(default_factory=RoIAlignConfig)
    roi_heads: RoIHeadsConfig = dataclasses.field(default_factory=RoIHeadsConfig)
    box_head: BoxHeadConfig = dataclasses.field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = dataclasses.field(default_factory=MaskHeadConfig)
    keypoint_head: KeypointHeadConfig = dataclasses.field(default_factory=KeypointHeadConfig)
    loss_weights: LossWeightsConfig = dataclasses.field(default_factory=LossWeightsConfig)
    dtype_policy: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    weights: Optional[str] = None  # whole-model weights to start from; null = none
    # CPU kernels (keras_maskrcnn/accel/); auto = on when no GPU/TPU. Quote "on"/"off" in YAML.
    accel: Literal["auto", "on", "off"] = "auto"

    def validate(self):
        _check_range(self, ["num_classes"], lo=2, hi=math.inf)
        num_levels = self.fpn.max_level - self.fpn.min_level + 1
        _require(len(self.anchors.sizes) == num_levels, "anchors.sizes",
                 f"needs one size per FPN level P{self.fpn.min_level}..P{self.fpn.max_level} "
                 f"({num_levels}), got {len(self.anchors.sizes)}")
        for name in ("min_level", "max_level"):
            level = getattr(self.roi_align, name)
            _require(self.fpn.min_level <= level <= self.fpn.max_level, f"roi_align.{name}",
                     f"P{level} is not an FPN level ({', '.join(self.fpn.levels)})")


# ----------------------------------------------------------------------------- other sections
@dataclasses.dataclass(frozen=True)
class InputConfig(_Section):
    min_size_train: Tuple[int, ...] = (800,)  # shorter-side sizes for training scale jitter
    min_size_train_sampling: Literal["choice", "range"] = "choice"  # range: [lo, hi] uniform
    min_size_test: int = 800
    max_size: int = 1333  # longer side cap (the shorter side then ends up below min_size)
    size_divisor: int = 32  # pad bottom/right to a multiple of this
    pixel_mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB in [0, 1]
    pixel_std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    max_instances: int = 100  # GT per image, padded with -1 (static shapes)

    def validate(self):
        _require(len(self.min_size_train) > 0, "min_size_train", "must not be empty")
        _positive(self, "min_size_train", "min_size_test", "max_size", "size_divisor",
                  "pixel_std", "max_instances")
        if self.min_size_train_sampling == "range":
            lo_hi = self.min_size_train
            _require(len(lo_hi) == 2 and lo_hi[0] <= lo_hi[1], "min_size_train",
                     f"sampling 'range' needs [min, max] with min <= max, got {list(lo_hi)}")
        largest = max(self.min_size_train + (self.min_size_test,))
        _require(self.max_size >= largest, "max_size",
                 f"must be >= the largest min size ({largest}), got {self.max_size}")


@dataclasses.dataclass(frozen=True)
class DataSplitConfig(_Section):
    format: Literal["coco", "tfrecord", "synthetic"] = "coco"
    annotations: Optional[str] = None  # coco: instances json
    images: Optional[str] = None  # coco: image directory
    tfrecords: Optional[str] = None  # tfrecord: file glob (tf-models-official schema)

    def validate(self):
        needs = {"coco": ("annotations", "images"), "tfrecord": ("tfrecords",), "synthetic": ()}
        for name in needs[self.format]:
            _require(getattr(self, name) is not None, name,
                     f"is required for format {self.format!r}")


def _coco_split(split: str) -> DataSplitConfig:
    return DataSplitConfig("coco", f"data/coco/annotations/instances_{split}2017.json",
                           f"data/coco/{split}2017")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(_Section):
    """The built-in shapes dataset, written in COCO format to ``output_dir``."""

    num_train: int = 2000
    num_val: int = 200
    seed: int = 0
    image_size: int = 256
    min_objects: int = 1
    max_objects: int = 4
    output_dir: str = "data/shapes"

    def validate(self):
        _positive(self, "num_train", "num_val", "image_size", "min_objects")
        _non_negative(self, "seed")
        _require(self.min_objects <= self.max_objects, "max_objects",
                 f"must be >= min_objects ({self.min_objects}), got {self.max_objects}")


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    train: DataSplitConfig = dataclasses.field(default_factory=lambda: _coco_split("train"))
    val: DataSplitConfig = dataclasses.field(default_factory=lambda: _coco_split("val"))
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    flip_probability: float = 0.5  # horizontal flip in training
    filter_empty_images: bool = True  # training drops images without (non-crowd) instances
    shuffle_buffer: int = 1000  # 0 = no shuffling
    num_parallel_calls: Optional[int] = None  # null = tf.data.AUTOTUNE
    cache: bool = False
    # training batches hold images of one orientation (landscape h <= w, or portrait), padded
    # to the batch's largest image; false = one static square size (max_size)
    group_by_aspect_ratio: bool = True

    def validate(self):
        _unit(self, "flip_probability")
        _non_negative(self, "shuffle_buffer")
        if self.num_parallel_calls is not None:
            _positive(self, "num_parallel_calls")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    batch_size: int = 16  # global, over all replicas
    optimizer: Literal["sgd", "adamw"] = "sgd"
    base_learning_rate: float = 0.02  # for reference_batch_size; see learning_rate
    reference_batch_size: int = 16
    momentum: float = 0.9  # sgd momentum (adamw: beta_1)
    weight_decay: float = 1e-4
    total_steps: int = 90000
    lr_decay_steps: Tuple[int, ...] = (60000, 80000)  # lr *= lr_decay_factor at each step
    lr_decay_factor: float = 0.1
    warmup_steps: int = 1000  # linear from warmup_factor * lr to lr
    warmup_factor: float = 0.001
    clip_gradient_norm: Optional[float] = None  # global norm; null = no clipping
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    log_every: int = 20
    steps_per_epoch: int = 1000  # Keras fit "epoch" length (callbacks run per epoch)
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    seed: int = 0
    output_dir: str = "runs/maskrcnn"

    def validate(self):
        _positive(self, "batch_size", "base_learning_rate", "reference_batch_size",
                  "total_steps", "checkpoint_every", "keep_checkpoints", "log_every",
                  "steps_per_epoch")
        _check_range(self, ["momentum"], lo=0, hi=1, hi_open=True)
        _non_negative(self, "weight_decay", "seed")
        _check_range(self, ["lr_decay_factor", "warmup_factor"], lo=0, hi=1, lo_open=True)
        _check_range(self, ["warmup_steps"], lo=0, hi=self.total_steps)
        _check_range(self, ["lr_decay_steps"], lo=1, hi=self.total_steps)
        steps = self.lr_decay_steps
        _require(all(a < b for a, b in zip(steps, steps[1:])), "lr_decay_steps",
                 f"must be strictly increasing, got {list(steps)}")
        if self.clip_gradient_norm is not None:
            _positive(self, "clip_gradient_norm")

    @property
    def learning_rate(self) -> float:
        """Peak learning rate after linear scaling: base * batch_size / reference_batch_size."""
        return self.base_learning_rate * self.batch_size / self.reference_batch_size


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    every_n_steps: Optional[int] = None  # null = only after training
    max_images: Optional[int] = None  # null = the whole split
    visualization_score_threshold: float = 0.5
    num_visualizations: int = 8

    def validate(self):
        for name in ("every_n_steps", "max_images"):
            if getattr(self, name) is not None:
                _positive(self, name)
        _unit(self, "visualization_score_threshold")
        _non_negative(self, "num_visualizations")


@dataclasses.dataclass(frozen=True)
class ExportConfig(_Section):
    include_full_masks: bool = False  # also output masks pasted into the image (large)


@dataclasses.dataclass(frozen=True)
class Config(_Section):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


# ----------------------------------------------------------------------------- YAML loading
class _StrictLoader(yaml.SafeLoader):
    """safe_load plus: "1e-5" is a float (YAML 1.1 wants "1.0e-5"), duplicate keys are errors."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _parse_yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(e.reason, source=source) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", source=source) from None


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", source=path) from None
    data = _parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}",
                          source=path)
    return data


def _deep_merge(base: Mapping, update: Mapping) -> Dict[str, Any]:
    """Mappings merge recursively; anything else in ``update`` replaces the base value."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _deep_merge(merged[key], value)
        merged[key] = value
    return merged


def _record_origins(data: Mapping, source: str, origins: Dict[str, str], prefix: str = ""):
    """origins[dotted key] = where its value was written, for error messages."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        origins[dotted] = source
        if isinstance(value, Mapping):
            _record_origins(value, source, origins, dotted + ".")


def _source_of(key: Optional[str], origins: Mapping[str, str], default: str) -> str:
    parts = re.sub(r"\[\d+\]", "", key or "").split(".")
    for n in range(len(parts), 0, -1):  # longest recorded prefix of the key
        if ".".join(parts[:n]) in origins:
            return origins[".".join(parts[:n])]
    return default


def _all_keys(cls=None, prefix: str = ""):
    """Every valid dotted key of the schema (sections and leaves)."""
    for f in dataclasses.fields(cls or Config):
        yield prefix + f.name
        tp = _hints(cls or Config)[f.name]
        if _is_section(tp):
            yield from _all_keys(tp, prefix + f.name + ".")


def _unknown_key(key: str, name: str, valid: Iterable[str]) -> ConfigError:
    """ConfigError for an unknown key, suggesting the closest valid key (difflib)."""
    valid = list(valid)
    section = key[: len(key) - len(name)]
    close = [section + m for m in difflib.get_close_matches(name, valid, n=1, cutoff=0.6)]
    if not close:  # right name in the wrong section, or a typo in the full path
        names = {k: k.rsplit(".", 1)[-1] for k in _all_keys()}
        near = difflib.get_close_matches(name, set(names.values()), n=1, cutoff=0.8)
        close = [k for k, n in names.items() if n in near]
    hint = " or ".join(repr(k) for k in close[:3])
    hint = f" (did you mean {hint}?)" if close else f" (valid keys: {', '.join(valid)})"
    return ConfigError(f"unknown key{hint}", key)


def _from_mapping(cls, data, prefix: str = ""):
    """Builds section ``cls`` from a mapping; ConfigError keys are full dotted paths."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {type(data).__name__} {data!r}",
                          prefix[:-1] or None)
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in hints:
            raise _unknown_key(f"{prefix}{name}", str(name), hints)
        if _is_section(hints[name]):
            value = _from_mapping(hints[name], value, f"{prefix}{name}.")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(e.reason, prefix + (e.key or "")) from None


def _set_override(data: Dict[str, Any], item: str, origins: Dict[str, str], source: str):
    """Applies one ``a.b.c=value`` override to the raw dict (after checking the key)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value",
                          source=source)
    where = f"{source} (override {item!r})"
    cls, node, parts = Config, data, key.split(".")
    for i, part in enumerate(parts):
        if cls is None:
            raise ConfigError(f"{'.'.join(parts[:i])!r} is a value, not a section", key, where)
        hints = _hints(cls)
        if part not in hints:
            err = _unknown_key(".".join(parts[: i + 1]), part, hints)
            raise ConfigError(err.reason, err.key, where) from None
        cls = hints[part] if _is_section(hints[part]) else None
        if i < len(parts) - 1:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
    value = _parse_yaml(text, where)
    if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), Mapping):
        value = _deep_merge(node[parts[-1]], value)
    node[parts[-1]] = value
    for i in range(1, len(parts)):  # sections the file did not mention come from the override
        origins.setdefault(".".join(parts[:i]), where)
    origins[key] = where
    if isinstance(value, Mapping):
        _record_origins(value, where, origins, key + ".")


def _build(data: Mapping, origins: Mapping[str, str], source: str) -> Config:
    try:
        return _from_mapping(Config, data)
    except ConfigError as e:
        raise ConfigError(e.reason, e.key, _source_of(e.key, origins, source)) from None


def load_config(path: str, overrides: Optional[Iterable[str]] = None) -> Config:
    """Loads and validates a YAML config.

    Args:
      path: YAML file. A top-level ``base: other.yaml`` (relative to this file) is deep-merged
        under it; the base may not have a ``base`` itself (one level of inheritance).
      overrides: strings ``"dotted.key=value"``, value parsed as YAML (``"a.b=[1, 2]"``),
        applied in order after the merge.
    Returns:
      A frozen ``Config``.
    Raises:
      ConfigError: unknown key (with the closest valid key), wrong type or bad value; the message
        names the file (or override) and the dotted key.
    """
    path = os.fspath(path)
    data, origins = _read_yaml(path), {}
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"expected a file path, got {base!r}", "base", path)
        base_path = os.path.join(os.path.dirname(path), base)
        base_data = _read_yaml(base_path)
        if "base" in base_data:
            raise ConfigError(f"{base!r} is itself based on {base_data['base']!r}: only one "
                              "level of inheritance is allowed", "base", base_path)
        _record_origins(base_data, base_path, origins)
        _record_origins(data, path, origins)  # the file's own keys win over the base's
        data = _deep_merge(base_data, data)
    for item in overrides or ():
        _set_override(data, item, origins, path)
    return _build(data, origins, path)


def config_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Builds and validates a Config from a nested dict (missing keys take their defaults).
    ``source`` names the origin in error messages."""
    return _build(d, {}, source)


def apply_overrides(cfg: Config, overrides: Iterable[str], source: str = "<config>") -> Config:
    """Returns ``cfg`` with ``"dotted.key=value"`` overrides applied (same rules as load)."""
    data, origins = config_to_dict(cfg), {}
    for item in overrides:
        _set_override(data, item, origins, source)
    return _build(data, origins, source)


def config_to_dict(cfg) -> Dict[str, Any]:
    """Nested plain dict of a config (tuples become lists); ``config_from_dict`` inverts it."""
    if _is_section(type(cfg)):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [config_to_dict(v) for v in cfg]
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block-style mappings; lists of scalars on one line (``sizes: [32.0, 64.0]``)."""

    def represent_list(self, data):
        flow = not any(isinstance(v, (list, dict)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def save_config(cfg: Config, path: str) -> None:
    """Writes every field (defaults included) as YAML; ``load_config(path) == cfg``."""
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, width=100)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
