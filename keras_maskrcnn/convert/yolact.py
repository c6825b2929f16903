"""Weight import from the reference YOLACT checkpoints (Bolya et al. 2019, "YOLACT: Real-time
Instance Segmentation", section 4 "Backbone Detector" and section 3; dbolya/yolact's released
``yolact_base_54_800000.pth`` (ResNet-101) and ``yolact_resnet50_54_800000.pth``: plain
state_dicts), read without torch (``convert.pth.load_pth``).

Conventions pinned here (tests/convert/test_convert_yolact.py, against a torch transcription of the
reference in tests/support/yolact_torch_reference.py):
- Key table (reference -> the ``YOLACT`` attributes of YOLACT_CONTRACT):
    backbone.conv1 / bn1                        -> backbone.stem_conv / stem_bn
    backbone.layers.{i}.{b}.conv{k} / bn{k}     -> backbone.stages[i][b].conv{k} / bn{k}
    backbone.layers.{i}.{b}.downsample.{0,1}    -> backbone.stages[i][b].shortcut_conv / _bn
    fpn.lat_layers.{i} / fpn.pred_layers.{i}    -> fpn.lateral_convs[2 - i] / output_convs[2 - i]
                                                   (the reference stores C5's first)
    fpn.downsample_layers.{j}                   -> fpn.extra_convs[j] (P6, P7)
    proto_net.{0,2,4,8,10}                      -> protonet.convs[0..4] (odd indices and 6 are
                                                   ReLUs and the x2 upsample)
    prediction_layers.0.upfeature.0             -> prediction_head.convs[0]
    prediction_layers.0.bbox_layer / conf_layer / mask_layer
                                 -> prediction_head.predictors box_deltas / class_logits /
                                    mask_coefficients (only module 0 holds weights: shared)
    semantic_seg_conv                           -> semantic_head
  Conv kernels go from torch (Cout, Cin, kh, kw) to Keras (kh, kw, Cin, Cout); channel
  a * C + c of a predictor is anchor a, channel c in both (``permute(0, 2, 3, 1).view``).
- Strict as the torchvision converter: a missing key, a key no layer reads, or a shape
  mismatch raises an error naming the key, before any weight is assigned.
  ``num_batches_tracked`` is skipped. Two kinds of keys are dropped exactly as the reference's
  ``Yolact.load_weights`` drops them: ``backbone.layer*`` not under ``backbone.layers`` (old
  duplicate names of the same modules) and ``fpn.downsample_layers.{j}`` with j >= 2 (unused
  extra layers saved in the v1.0 weights).
- Inferred from the checkpoint: ResNet depth from the blocks of ``backbone.layers.2`` (6: 50,
  23: 101); A anchors per location = bbox_layer rows / 4 (3: one scale, ratios 1, 1/2, 2);
  K classes incl. background = conf_layer rows / A; k prototypes = mask_layer rows / A.
  A grouped first 3x3 conv (a ResNeXt backbone, which the reference does not have) is
  refused (``refuse_grouped_backbone``).
  The architecture (``ARCHITECTURES``: depth, input size, anchor sides) is ``arch`` when
  given, else the file name's model name as the reference's ``eval.py`` takes it
  (``{name}_{epoch}_{iteration}.pth``, e.g. ``yolact_im700_54_800000.pth``) when it is a known
  one, else the depth above at 550 px. yolact_im400 / yolact_im700 are ResNet-101 at 400 / 700
  with the reference's truncated anchor sides int(s / 550 * size) px, written as
  ``model.yolact.anchor_scales`` in 550-pixel units (side x 550 / size).
- The written config reproduces the reference's COCO evaluation: 550 x 550 fixed square
  (bilinear, aspect ratio not kept, no padding), BGR mean (103.94, 116.78, 123.68) / std
  (57.38, 57.12, 58.40) as RGB / 255, square anchors 24..384 px with ratios (1, 1/2, 2), score
  0.05 on the best foreground score, Fast NMS per class (top 200, IoU 0.5), 100 detections,
  masks > 0.5.
  With K = 81 the contiguous classes 1..80 are the reference's ``COCO_LABEL_MAP`` order, so
  ``model.category_ids`` = the 80 COCO category ids, ascending, and ``detect`` labels are COCO
  ids (as the Mask R-CNN converters give) and ``model.category_names`` COCO's names; other K
  keep contiguous labels and no names.

Shape shorthand: A anchors per location, K classes incl. background, k prototypes.
"""
import os
import re

from keras_maskrcnn import builders, config as config_lib
from keras_maskrcnn.convert import state_dict as sd, torchvision as tv
from keras_maskrcnn.convert.coco_categories import COCO_CATEGORY_NAMES, names_override
from keras_maskrcnn.convert.pth import load_pth

REFERENCE_SIZE = 550
ANCHOR_SIDES = (24, 48, 96, 192, 384)  # pixels of a 550 input, P3..P7
# name -> (depth, input side, anchor sides in input pixels): the reference's data/config.py
ARCHITECTURES = {
    "yolact_base": ("resnet101", 550, ANCHOR_SIDES),
    "yolact_resnet50": ("resnet50", 550, ANCHOR_SIDES),
    "yolact_im400": ("resnet101", 400, (17, 34, 69, 139, 279)),
    "yolact_im700": ("resnet101", 700, (30, 61, 122, 244, 488)),
}
DEPTH_BY_RES4_BLOCKS = {6: "resnet50", 23: "resnet101"}  # blocks of backbone.layers.2
_SAVE_PATH = re.compile(r"^(?P<name>.+)_(\d+)_(\d+|interrupt)$")  # the reference's SavePath
PIXEL_MEAN_BGR = (103.94, 116.78, 123.68)
PIXEL_STD_BGR = (57.38, 57.12, 58.40)
ASPECT_RATIOS = (1.0, 0.5, 2.0)
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90)
PROTO_NET_CONVS = (0, 2, 4, 8, 10)
NUM_DOWNSAMPLE = 2  # P6, P7
HEAD = "prediction_layers.0."
HEAD_PREDICTORS = (("bbox_layer", "box_deltas"), ("conf_layer", "class_logits"),
                   ("mask_layer", "mask_coefficients"))
_OLD_BACKBONE = re.compile(r"backbone\.layer\d")
_EXTRA_DOWNSAMPLE = re.compile(r"fpn\.downsample_layers\.(\d+)\.")


def reference_dropped(key):
    """True for the keys the reference's ``Yolact.load_weights`` deletes before loading."""
    if _OLD_BACKBONE.match(key) and not key.startswith("backbone.layers."):
        return True
    match = _EXTRA_DOWNSAMPLE.match(key)
    return bool(match) and int(match.group(1)) >= NUM_DOWNSAMPLE


def _rows(state_dict, key):
    if key not in state_dict:
        raise KeyError(f"missing key in state_dict: {key!r}")
    return int(sd.to_numpy(state_dict[key]).shape[0])


def infer_depth(state_dict):
    """"resnet50" / "resnet101" from the number of blocks of ``backbone.layers.2``."""
    blocks = {int(k.split(".")[3]) for k in state_dict
              if k.startswith("backbone.layers.2.") and k.split(".")[3].isdigit()}
    depth = DEPTH_BY_RES4_BLOCKS.get(len(blocks))
    if depth is None:
        raise ValueError(f"backbone.layers.2 has {len(blocks)} blocks; a YOLACT ResNet "
                         f"backbone has 6 (ResNet-50) or 23 (ResNet-101)")
    return depth


def refuse_grouped_backbone(state_dict):
    """Raises ValueError for a checkpoint whose first bottleneck's 3x3 conv is grouped (a
    ResNeXt backbone): the reference YOLACT has ResNet backbones only, and reading grouped
    kernels as a ResNet's would be wrong."""
    first = "backbone.layers.0.0."
    if first + "conv1.weight" not in state_dict or first + "conv2.weight" not in state_dict:
        return
    width = int(tv.to_numpy(state_dict[first + "conv1.weight"]).shape[0])  # conv1 out channels
    per_group = int(tv.to_numpy(state_dict[first + "conv2.weight"]).shape[1])  # conv2 in / g
    if per_group != width:
        raise ValueError(
            f"{first}conv2.weight takes {per_group} input channels of conv1's {width}: a "
            f"grouped (ResNeXt, {width // max(per_group, 1)} groups) backbone; the YOLACT "
            f"converter reads the reference's ResNet-50 / ResNet-101 checkpoints only")


def arch_from_filename(path):
    """The known architecture a checkpoint's file name names (reference ``SavePath``), or None."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    match = _SAVE_PATH.match(stem)
    name = match.group("name") if match else None
    return name if name in ARCHITECTURES else None


def infer_settings(state_dict, arch=None):
    """{"depth", "image_size", "anchor_sides", "num_anchors", "num_classes",
    "num_prototypes"} of a reference checkpoint.

    Args:
        state_dict: name -> array (shapes only are read).
        arch: None (ResNet depth from the checkpoint, 550 px) or a key of ``ARCHITECTURES``.
    """
    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"unknown YOLACT architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHITECTURES)}")
    refuse_grouped_backbone(state_dict)
    depth, size, sides = (ARCHITECTURES[arch] if arch else
                          (infer_depth(state_dict), REFERENCE_SIZE, ANCHOR_SIDES))
    box_rows = _rows(state_dict, HEAD + "bbox_layer.weight")  # A * 4
    num_anchors = box_rows // 4
    if box_rows % 4 or num_anchors != len(ASPECT_RATIOS):
        raise ValueError(f"{HEAD}bbox_layer.weight has {box_rows} rows = {box_rows / 4:g} "
                         f"anchors per location; YOLACT v1 has {len(ASPECT_RATIOS)} (one scale, "
                         f"ratios 1, 1/2, 2; YOLACT++'s 9 are not supported)")
    settings = {"depth": depth, "image_size": size, "anchor_sides": sides,
                "num_anchors": num_anchors}
    for key, name in (("conf_layer", "num_classes"), ("mask_layer", "num_prototypes")):
        settings[name] = sd.infer_num_classes(state_dict, f"{HEAD}{key}.weight",
                                              per_anchor=num_anchors)  # A * K, A * k rows
    return settings


def yolact_config(settings, overrides=()):
    """The Config reproducing the reference's evaluation for ``infer_settings``' result."""
    mean = [round(m / 255.0, 10) for m in reversed(PIXEL_MEAN_BGR)]  # RGB in [0, 1]
    std = [round(s / 255.0, 10) for s in reversed(PIXEL_STD_BGR)]
    coco = settings["num_classes"] == len(COCO_CATEGORY_IDS) + 1
    scales = [s * REFERENCE_SIZE / settings["image_size"] for s in settings["anchor_sides"]]
    items = [
        "model.architecture=yolact", f"model.num_classes={settings['num_classes']}",
        f"model.backbone.name={settings['depth']}", "model.backbone.bn_eps=1e-5",
        "model.backbone.freeze_at=0",  # fine-tuning as the reference: every conv trains
        "model.fpn.channels=256", f"model.yolact.num_prototypes={settings['num_prototypes']}",
        f"model.yolact.anchor_scales={scales}",
        f"model.yolact.aspect_ratios={list(ASPECT_RATIOS)}", "model.yolact.square_anchors=true",
        "model.yolact.score_threshold=0.05", "model.yolact.nms_threshold=0.5",
        "model.yolact.top_k=200", "model.yolact.detections_per_image=100",
        "model.yolact.fast_nms=true", "model.yolact.mask_threshold=0.5",
        f"model.category_ids={list(COCO_CATEGORY_IDS) if coco else 'null'}",
        names_override(COCO_CATEGORY_NAMES if coco else None),
        "input.resize=fixed_square", f"input.size={settings['image_size']}", "input.size_divisor=1",
        f"input.pixel_mean={mean}", f"input.pixel_std={std}",
    ]
    return config_lib.apply_overrides(config_lib.Config(), [*items, *overrides],
                                      source="yolact checkpoint")


def read_yolact(reader, model):
    """Queues every weight of a built ``YOLACT`` (the contract's attributes) from the reference
    keys (module docstring's table)."""
    tv.read_resnet(reader, model.backbone, "backbone.", stage_key="layers.{}", first_stage=0)
    fpn = model.fpn
    last = len(fpn.lateral_convs) - 1
    for i in range(len(fpn.lateral_convs)):  # reference index i = level from the top
        sd.read_conv(reader, fpn.lateral_convs[last - i], f"fpn.lat_layers.{i}.")
        sd.read_conv(reader, fpn.output_convs[last - i], f"fpn.pred_layers.{i}.")
    for j, conv in enumerate(fpn.extra_convs):
        sd.read_conv(reader, conv, f"fpn.downsample_layers.{j}.")
    for index, conv in zip(PROTO_NET_CONVS, model.protonet.convs, strict=True):
        sd.read_conv(reader, conv, f"proto_net.{index}.")
    head = model.prediction_head
    sd.read_conv(reader, head.convs[0], HEAD + "upfeature.0.")
    for theirs, ours in HEAD_PREDICTORS:
        sd.read_conv(reader, head.predictors[ours], f"{HEAD}{theirs}.")
    sd.read_conv(reader, model.semantic_head, "semantic_seg_conv.")


def load_yolact_weights(model, state_dict, progress=False):
    """Assigns every weight of a built ``YOLACT`` from a reference state_dict, all or nothing.

    Returns:
        set of consumed keys: every key of the checkpoint except ``num_batches_tracked`` and
        the ones the reference drops (``reference_dropped``); anything else left is an error.
    """
    kept = {k: v for k, v in state_dict.items() if not reference_dropped(k)}
    reader = sd.StateDictReader(kept)
    read_yolact(reader, model)
    return reader.commit_all(progress, ignore=lambda k: k.endswith(".num_batches_tracked"))


def from_yolact(checkpoint, arch=None, overrides=(), progress=False):
    """A ``YOLACT`` with the weights of a reference checkpoint.

    Args:
        checkpoint: a ``.pth`` path (read without torch) or a state_dict (name -> array).
        arch: None (from the file name, else the checkpoint) or a key of ``ARCHITECTURES``.
        overrides: extra "a.b=c" config overrides (e.g. a smaller ``input.size``).
        progress: show a progress bar while the weights are assigned.
    """
    if isinstance(checkpoint, dict):
        state_dict = checkpoint
    else:
        state_dict, arch = load_pth(checkpoint), arch or arch_from_filename(checkpoint)
    with sd.naming_file(checkpoint):
        cfg = yolact_config(infer_settings(state_dict, arch), overrides)
        model = builders.build_model(cfg)
        load_yolact_weights(model, state_dict, progress=progress)
    return model
