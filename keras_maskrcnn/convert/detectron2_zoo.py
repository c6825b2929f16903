"""The detectron2 model zoo entries we convert, and the Config that reproduces each one's
inference and training (Mask R-CNN section 3.1 "Implementation Details" as detectron2 runs it:
its configs/Base-RCNN-FPN.yaml, Base-RCNN-C4.yaml, COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml,
Cityscapes/mask_rcnn_R_50_FPN.yaml over detectron2/config/defaults.py).

Conventions pinned here (tests/convert/test_detectron2_zoo.py):
- ``MODEL_ZOO`` maps detectron2's config names ("COCO-InstanceSegmentation/mask_rcnn_R_50_
  FPN_3x") to ``ZooEntry``; ``lookup`` also takes the short name after the "/". DC5,
  RetinaNet, RPN-only, panoptic, LVIS and the other unlisted entries are refused with the list
  of supported names.
- Inference as detectron2: BGR mean (103.530, 116.280, 123.675), std 1 (MSRA R50/R101, stride
  in the 1x1 conv) or (57.375, 57.120, 58.395) (X101-32x8d, a Caffe2 model, stride in the 3x3),
  written RGB / 255; FrozenBN eps 1e-5; shorter side 800 (Cityscapes 1024), longer at most
  1333 (2048), ``resize_style`` detectron2; padding to a multiple of 32 for FPN, none for C4
  (its backbone's size_divisibility is 0); anchors unrounded at nominal strides; RPN pre/post-
  NMS top-k 1000/1000 per image (FPN: pre per level) or 6000/1000 (C4), NMS 0.7 ranked by
  logits, proposals of width and height > 0 kept (``rpn.proposal_filter`` detectron2 with
  ``min_size`` 0: its MIN_SIZE 0, strict); RoIAlign
  aligned, sampling_ratio 0, detectron2's level mapping; score > 0.05, NMS 0.5, 100
  detections, no minimum box size; masks pasted as detectron2; keypoint scores as detectron2,
  and its -0.5 keypoint offset in COCO results only (``keypoint_head.coordinate_offset``,
  applied by ``evaluation`` as detectron2's COCO evaluator; its predictor has none).
- Training as detectron2 too: smooth L1 beta 0 for the RPN and the box head (keypoint models:
  0.5 for the box head), RPN post-NMS top-k 1000 (FPN), 1500 (keypoints) or 2000 (C4) per
  image, pre-NMS 2000 per level (FPN) or 12000 (C4); 256 anchors / 512 RoIs per image; batch
  16 at lr 0.02 (Cityscapes 8 at 0.01), schedules 1x = 90k (60k, 80k), 3x = 270k (210k, 250k),
  Cityscapes 24k (18k); shorter sides (640..800) by choice (Cityscapes 800..1024).
- ``model.category_ids``: the COCO ids of the 80 classes for COCO detection entries, (1,)
  (person) for keypoint entries (also their ``keypoint_head.category_ids``); a checkpoint with
  another class count keeps contiguous ids. ``model.category_names``: COCO's names of those ids
  (null with them).
"""
import dataclasses
import os
from typing import Optional

from keras_maskrcnn import config as config_lib
from keras_maskrcnn.convert.coco_categories import COCO_CATEGORIES, names_override
from keras_maskrcnn.convert.yolact import COCO_CATEGORY_IDS

MSRA_STD = (1.0, 1.0, 1.0)
C2_STD = (57.375, 57.120, 58.395)  # BGR
PIXEL_MEAN = (103.530, 116.280, 123.675)  # BGR
SCHEDULES = {"1x": (90000, (60000, 80000)), "3x": (270000, (210000, 250000)),
             "cityscapes": (24000, (18000,))}
URL = "https://dl.fbaipublicfiles.com/detectron2/{name}/{model_id}/model_final_{suffix}.pkl"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One detectron2 model-zoo checkpoint and the AP its MODEL_ZOO.md reports."""

    name: str  # detectron2's config name, e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x"
    backbone: str  # our model.backbone.name
    variant: str  # "fpn" / "c4"
    schedule: str  # "1x" / "3x" / "cityscapes"
    model_id: int
    suffix: str  # of model_final_{suffix}.pkl
    box_ap: Optional[float] = None
    mask_ap: Optional[float] = None
    keypoint_ap: Optional[float] = None

    @property
    def short_name(self):
        return self.name.split("/", 1)[1]

    @property
    def mask(self):
        return "mask_rcnn" in self.name

    @property
    def keypoint(self):
        return "keypoint_rcnn" in self.name

    @property
    def cityscapes(self):
        return self.name.startswith("Cityscapes/")

    @property
    def url(self):
        return URL.format(name=self.name, model_id=self.model_id, suffix=self.suffix)


def _entries():
    seg, det, kp = "COCO-InstanceSegmentation/", "COCO-Detection/", "COCO-Keypoints/"
    r50, r101, x101 = "resnet50", "resnet101", "resnext101_32x8d"
    rows = [  # name, backbone, variant, schedule, model id, file suffix, box/mask/keypoint AP
        (seg + "mask_rcnn_R_50_C4_1x", r50, "c4", "1x", 137259246, "9243eb", 36.8, 32.2),
        (seg + "mask_rcnn_R_50_FPN_1x", r50, "fpn", "1x", 137260431, "a54504", 38.6, 35.2),
        (seg + "mask_rcnn_R_50_C4_3x", r50, "c4", "3x", 137849525, "4ce675", 39.8, 34.4),
        (seg + "mask_rcnn_R_50_FPN_3x", r50, "fpn", "3x", 137849600, "f10217", 41.0, 37.2),
        (seg + "mask_rcnn_R_101_C4_3x", r101, "c4", "3x", 138363239, "a2914c", 42.6, 36.7),
        (seg + "mask_rcnn_R_101_FPN_3x", r101, "fpn", "3x", 138205316, "a3ec72", 42.9, 38.6),
        (seg + "mask_rcnn_X_101_32x8d_FPN_3x", x101, "fpn", "3x", 139653917, "2d9806", 44.3,
         39.5),
        (det + "faster_rcnn_R_50_C4_1x", r50, "c4", "1x", 137257644, "721ade", 35.7),
        (det + "faster_rcnn_R_50_FPN_1x", r50, "fpn", "1x", 137257794, "b275ba", 37.9),
        (det + "faster_rcnn_R_50_C4_3x", r50, "c4", "3x", 137849393, "f97cb7", 38.4),
        (det + "faster_rcnn_R_50_FPN_3x", r50, "fpn", "3x", 137849458, "280758", 40.2),
        (det + "faster_rcnn_R_101_C4_3x", r101, "c4", "3x", 138204752, "298dad", 41.1),
        (det + "faster_rcnn_R_101_FPN_3x", r101, "fpn", "3x", 137851257, "f6e8b1", 42.0),
        (det + "faster_rcnn_X_101_32x8d_FPN_3x", x101, "fpn", "3x", 139173657, "68b088", 43.0),
        (kp + "keypoint_rcnn_R_50_FPN_1x", r50, "fpn", "1x", 137261548, "04e291", 53.6, None,
         64.0),
        (kp + "keypoint_rcnn_R_50_FPN_3x", r50, "fpn", "3x", 137849621, "a6e10b", 55.4, None,
         65.5),
        (kp + "keypoint_rcnn_R_101_FPN_3x", r101, "fpn", "3x", 138363331, "997cc7", 56.4, None,
         66.1),
        (kp + "keypoint_rcnn_X_101_32x8d_FPN_3x", x101, "fpn", "3x", 139686956, "5ad38f", 57.3,
         None, 66.0),
        ("Cityscapes/mask_rcnn_R_50_FPN", r50, "fpn", "cityscapes", 142423278, "af9cf5", None,
         36.5),
    ]
    return {row[0]: ZooEntry(*row) for row in rows}


MODEL_ZOO = _entries()
CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")


def lookup(config_name):
    """The ``ZooEntry`` of a full or short detectron2 config name (".yaml" allowed)."""
    name = config_name[:-5] if config_name.endswith(".yaml") else config_name
    matches = [e for e in MODEL_ZOO.values() if name in (e.name, e.short_name)]
    if not matches:
        supported = "\n  ".join(MODEL_ZOO)
        raise ValueError(f"unsupported detectron2 config {config_name!r} (DC5, RetinaNet, RPN, "
                         f"panoptic, LVIS and other entries are not converted); supported:\n  "
                         f"{supported}")
    return matches[0]


def _rgb_over_255(bgr):
    return [round(v / 255.0, 10) for v in reversed(bgr)]


def _backbone_items(entry):
    x101 = entry.backbone.startswith("resnext")
    return [f"model.backbone.name={entry.backbone}", f"model.backbone.variant={entry.variant}",
            f"model.backbone.stride_in_1x1={'false' if x101 else 'true'}",
            "model.backbone.bn_eps=1e-5", "model.backbone.freeze_at=2",
            f"input.pixel_mean={_rgb_over_255(PIXEL_MEAN)}",
            f"input.pixel_std={_rgb_over_255(C2_STD if x101 else MSRA_STD)}"]


def _rpn_items(entry):
    c4 = entry.variant == "c4"
    pre_train, pre_test = (12000, 6000) if c4 else (2000, 1000)
    post_train = 2000 if c4 else 1500 if entry.keypoint else 1000
    sizes = "[32, 64, 128, 256, 512]"
    return [f"model.anchors.sizes={sizes}", "model.anchors.aspect_ratios=[0.5, 1.0, 2.0]",
            "model.anchors.rounded=false", "model.anchors.nominal_strides=true",
            f"model.rpn.pre_nms_top_n_train={pre_train}",
            f"model.rpn.pre_nms_top_n_test={pre_test}",
            f"model.rpn.post_nms_top_n_train={post_train}", "model.rpn.post_nms_top_n_test=1000",
            "model.rpn.nms_threshold=0.7", "model.rpn.min_size=0.0",
            "model.rpn.proposal_filter=detectron2", "model.rpn.score_threshold=0.0",
            "model.rpn.fg_iou_threshold=0.7", "model.rpn.bg_iou_threshold=0.3",
            "model.rpn.batch_size_per_image=256", "model.rpn.positive_fraction=0.5",
            "model.rpn.smooth_l1_beta=0.0"]


def _roi_items(entry):
    c4 = entry.variant == "c4"
    items = ["model.roi_align.aligned=true", "model.roi_align.sampling_ratio=0",
             "model.roi_align.level_mapping=detectron2",
             "model.roi_heads.fg_iou_threshold=0.5", "model.roi_heads.bg_iou_threshold=0.5",
             "model.roi_heads.batch_size_per_image=512", "model.roi_heads.positive_fraction=0.25",
             f"model.roi_heads.smooth_l1_beta={0.5 if entry.keypoint else 0.0}",
             "model.roi_heads.score_threshold=0.05", "model.roi_heads.nms_threshold=0.5",
             "model.roi_heads.min_size=0.0", "model.roi_heads.detections_per_image=100",
             f"model.box_head.pool_size={14 if c4 else 7}",
             f"model.mask_head.enabled={'true' if entry.mask else 'false'}",
             "model.mask_head.pool_size=14", f"model.mask_head.num_convs={0 if c4 else 4}",
             "model.mask_head.paste=detectron2",
             f"model.keypoint_head.enabled={'true' if entry.keypoint else 'false'}"]
    if entry.keypoint:
        items += ["model.keypoint_head.score=detectron2",
                  "model.keypoint_head.coordinate_offset=-0.5"]
    return items


def _input_items(entry):
    if entry.cityscapes:
        train, test, largest = list(range(800, 1025, 32)), 1024, 2048
    else:
        train, test, largest = list(range(640, 801, 32)), 800, 1333
    return [f"input.min_size_train={train}", "input.min_size_train_sampling=choice",
            f"input.min_size_test={test}", f"input.max_size={largest}",
            "input.resize_style=detectron2",
            f"input.size_divisor={1 if entry.variant == 'c4' else 32}"]


def _train_items(entry):
    total, steps = SCHEDULES[entry.schedule]
    batch, lr = (8, 0.01) if entry.cityscapes else (16, 0.02)
    return [f"train.batch_size={batch}", f"train.base_learning_rate={lr}",
            f"train.reference_batch_size={batch}", "train.momentum=0.9",
            "train.weight_decay=1e-4", f"train.total_steps={total}",
            f"train.lr_decay_steps={list(steps)}", "train.lr_decay_factor=0.1",
            "train.warmup_steps=1000", "train.warmup_factor=0.001",
            f"train.output_dir=runs/detectron2/{entry.short_name}",
            "data.flip_probability=0.5", "data.filter_empty_images=true"]


def _data_items(entry):
    if entry.cityscapes:
        root = "data/cityscapes"
        return [f"data.{s}.annotations={root}/annotations/instancesonly_filtered_gtFine_{s}.json"
                for s in ("train", "val")] + [
                f"data.{s}.images={root}/leftImg8bit/{s}" for s in ("train", "val")]
    if entry.keypoint:
        return [f"data.{s}.annotations=data/coco/annotations/person_keypoints_{s}2017.json"
                for s in ("train", "val")]
    return []


def default_num_classes(entry):
    """K incl. background of the released checkpoint."""
    return 2 if entry.keypoint else len(CITYSCAPES_CLASSES) + 1 if entry.cityscapes else 81


def zoo_config(entry, num_classes=None, overrides=()):
    """The Config of ``entry`` (a ``ZooEntry`` or a name) for a checkpoint of ``num_classes``
    (incl. background; default: the released one's)."""
    entry = lookup(entry) if isinstance(entry, str) else entry
    k = num_classes or default_num_classes(entry)
    category_ids = None
    if k == default_num_classes(entry) and not entry.cityscapes:
        category_ids = [1] if entry.keypoint else list(COCO_CATEGORY_IDS)
    keypoint_ids = [1] if entry.keypoint and category_ids else None  # COCO person
    names = category_ids and [COCO_CATEGORIES[i] for i in category_ids]
    items = [f"model.num_classes={k}", f"model.category_ids={category_ids or 'null'}",
             names_override(names),
             f"model.keypoint_head.category_ids={keypoint_ids or 'null'}",
             *_backbone_items(entry), *_rpn_items(entry), *_roi_items(entry),
             *_input_items(entry), *_train_items(entry), *_data_items(entry)]
    return config_lib.apply_overrides(config_lib.Config(), [*items, *overrides],
                                      source=f"detectron2:{entry.name}")


def config_file_text(entry):
    """configs/detectron2/<short name>.yaml: a header naming the entry, then every field."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        config_lib.save_config(zoo_config(entry), path)
        with open(path, encoding="utf-8") as f:
            body = f.read()
    aps = ", ".join(f"{name} AP {value}" for name, value in (
        ("box", entry.box_ap), ("mask", entry.mask_ap), ("keypoint", entry.keypoint_ap))
        if value is not None)
    header = (f"# detectron2 model zoo: {entry.name} ({aps} in its MODEL_ZOO.md).\n"
              f"# Written by keras_maskrcnn.convert.detectron2_zoo.write_config_files; convert "
              f"its weights with\n#   python -m keras_maskrcnn.convert detectron2 --checkpoint "
              f"model_final_{entry.suffix}.pkl \\\n#       --config-name {entry.short_name} "
              f"--output converted/\n# ({entry.url})\n")
    if entry.keypoint:
        header += ("# model.keypoint_head.coordinate_offset (-0.5) is added to keypoints in COCO "
                   "results only\n# (detectron2's COCO evaluator); detect and the exports "
                   "return its predictor's keypoints.\n")
    return header + body


def write_config_files(directory):
    """Writes ``<directory>/<short name>.yaml`` for every entry; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for entry in MODEL_ZOO.values():
        path = os.path.join(directory, entry.short_name + ".yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config_file_text(entry))
        paths.append(path)
    return paths
