"""Weight import from detectron2 checkpoints (Mask R-CNN section 3 and 5 models of the
detectron2 model zoo: ``model_final_*.pkl``), read without torch.

The file is a pickle (latin1 for Python 2 era files) of a dict whose ``"model"`` entry maps
parameter names to numpy arrays (``"__author__"`` and ``"matching_heuristics"`` may sit next to
it). It is read with a restricted unpickler: only numpy's array reconstruction globals
(``_ALLOWED``) are resolved, and ``_codecs.encode`` with the latin1 codec (how pickle protocol
2 writes bytes from Python 3); any other global is refused with its name and the file's.

Key table (detectron2 -> ours; ``B = backbone.bottom_up.`` for FPN models, ``backbone.`` for C4):
    B stem.conv1 / stem.conv1.norm             -> backbone.stem_conv / stem_bn
    B res{s}.{j}.conv{k} / .conv{k}.norm       -> backbone.stages[s - 2][j].conv{k} / bn{k}
    B res{s}.{j}.shortcut / .shortcut.norm     -> ... .shortcut_conv / shortcut_bn
    backbone.fpn_lateral{l} / fpn_output{l}    -> fpn.lateral_convs[l - 2] / output_convs[l - 2]
    proposal_generator.rpn_head.conv           -> rpn_head.convs[0]
    proposal_generator.rpn_head.objectness_logits / anchor_deltas
                                               -> rpn_head.predictors objectness / box_deltas
    roi_heads.box_head.fc{i + 1}               -> box_head.fcs[i] (fc1 flattens C, H, W)
    roi_heads.box_predictor.cls_score / bbox_pred -> box_predictor.cls_score / bbox_pred
    roi_heads.mask_head.mask_fcn{i + 1}        -> mask_head.convs[i]
    roi_heads.mask_head.deconv / predictor     -> mask_predictor.conv5_mask / mask_fcn_logits
    roi_heads.keypoint_head.conv_fcn{i + 1}    -> keypoint_head.convs[i]
    roi_heads.keypoint_head.score_lowres       -> keypoint_predictor.kps_score_lowres
    roi_heads.res5.{j}.*  (C4)                 -> the res5 head's blocks, as res{s} above
  Ignored: ``*num_batches_tracked``, ``proposal_generator.anchor_generator.cell_anchors.*``,
  ``pixel_mean``, ``pixel_std``. Any other key left over, a missing key or a shape mismatch is
  an error naming the key, raised before any weight is assigned (``convert.torchvision``'s
  ``StateDictReader``).

Conventions pinned here (tests/convert/test_detectron2.py):
- Classes: ``cls_score`` has K rows with background LAST (index K - 1) -> our row 0, the
  foreground rows 0..K-2 -> ours 1..K-1. ``bbox_pred`` (4 (K - 1) rows) and the mask
  ``predictor`` (K - 1 channels) cover the foreground only: our background rows / channel 0
  are zeros (never read at inference).
- Input: detectron2 feeds BGR pixels; our images are RGB, so the stem conv's input channels
  are reversed and ``input.pixel_mean`` / ``pixel_std`` are its BGR values in RGB order / 255
  (``convert.detectron2_zoo``).
- RPN with S sizes x R ratios per location (C4: 5 x 3): detectron2 orders a location's anchors
  size-major (s * R + r), ours ratio-major (r * S + s, torchvision's); the objectness channels
  and the 4-channel groups of the deltas are permuted accordingly. FPN levels have S = 1.

Shape shorthand: K classes incl. background, A = S * R anchors per location, Cout/Cin conv
output/input channels.
"""
import os

import numpy as np

from keras_maskrcnn.convert import state_dict as sd
from keras_maskrcnn.convert.unpickler import CheckpointError, RestrictedUnpickler, unpickle

# (module, name) globals a detectron2 pickle may name: numpy's array reconstruction (None:
# resolved by import, ``convert.unpickler``).
_ALLOWED = dict.fromkeys([
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
])
IGNORED_SUFFIXES = (".num_batches_tracked",)
IGNORED_PREFIXES = ("proposal_generator.anchor_generator.cell_anchors.",)
IGNORED_KEYS = ("pixel_mean", "pixel_std")
FPN_PREFIX, C4_PREFIX = "backbone.bottom_up.", "backbone."
RPN = "proposal_generator.rpn_head."
ROI = "roi_heads."


class Detectron2Error(CheckpointError):
    """A file this reader refuses: not a detectron2 checkpoint, or holding code."""


def load_detectron2_pkl(path):
    """name -> np.ndarray (float32) of the ``"model"`` dict of a detectron2 ``.pkl``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = unpickle(RestrictedUnpickler(
            f, path, _ALLOWED, encoding="latin1", error=Detectron2Error,
            hint="a detectron2 checkpoint holds numpy arrays only"), Detectron2Error)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise Detectron2Error(f"{path}: expected a dict with a 'model' dict (detectron2 "
                              f"checkpoint), got {keys}")
    state_dict = {}
    for key, value in data["model"].items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            raise Detectron2Error(f"{path}: {key!r} is not a numeric array "
                                  f"({type(value).__name__})")
        state_dict[key] = value
    return state_dict


def ignored(key):
    return (key.endswith(IGNORED_SUFFIXES) or key.startswith(IGNORED_PREFIXES)
            or key in IGNORED_KEYS)


# ----------------------------------------------------------------------------- layout helpers
def reversed_input_channels(weight):
    """Stem conv (Cout, 3, kh, kw) for BGR input -> Keras kernel (kh, kw, 3, Cout) for RGB."""
    return sd.torch_conv_kernel_to_keras(weight)[:, :, ::-1, :]


def background_first(values):
    """cls_score rows (K, ...) background last -> background first."""
    return np.concatenate([values[-1:], values[:-1]], axis=0)


def with_background_rows(values, rows_per_class):
    """(rows_per_class * (K - 1), ...) foreground rows -> zeros for class 0 prepended."""
    zeros = np.zeros((rows_per_class,) + values.shape[1:], values.dtype)
    return np.concatenate([zeros, values], axis=0)


def anchor_permutation(num_sizes, num_ratios):
    """Our anchor index a = r * S + s -> detectron2's index s * R + r."""
    return np.array([s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)])


def _permute_rows(values, order, group):
    """Rows grouped by ``group`` per anchor (1 objectness, 4 deltas), reordered by anchor."""
    rows = values.reshape((len(order), group) + values.shape[1:])
    return rows[order].reshape(values.shape)


# ------------------------------------------------------------------------------- key readers
def read_resnet_stages(reader, stages, prefix, first_stage):
    """Queues ResNet blocks from ``{prefix}res{s}.{j}.conv{k}(.norm)`` / ``.shortcut(.norm)``."""
    for s, blocks in enumerate(stages, start=first_stage):
        for j, block in enumerate(blocks):
            key = f"{prefix}res{s}.{j}."
            for k, (conv, bn) in enumerate(block.conv_bn_pairs(), start=1):
                sd.read_conv(reader, conv, f"{key}conv{k}.")
                sd.read_frozen_bn(reader, bn, f"{key}conv{k}.norm.")
            if block.shortcut_conv is not None:
                sd.read_conv(reader, block.shortcut_conv, key + "shortcut.")
                sd.read_frozen_bn(reader, block.shortcut_bn, key + "shortcut.norm.")


def read_backbone(reader, resnet, prefix):
    """Stem (input channels reversed: BGR -> RGB) and every stage ``resnet`` has."""
    conv = resnet.stem_conv
    reader.read(conv.kernel, prefix + "stem.conv1.weight", reversed_input_channels,
                sd.keras_conv_shape_to_torch(conv.kernel.shape))
    sd.read_frozen_bn(reader, resnet.stem_bn, prefix + "stem.conv1.norm.")
    read_resnet_stages(reader, resnet.stages, prefix, first_stage=2)


def read_fpn(reader, fpn):
    for i, (lateral, output) in enumerate(zip(fpn.lateral_convs, fpn.output_convs)):
        sd.read_conv(reader, lateral, f"backbone.fpn_lateral{i + 2}.")
        sd.read_conv(reader, output, f"backbone.fpn_output{i + 2}.")


def read_rpn_head(reader, rpn_head, num_sizes, num_ratios):
    """Queues the RPN head; anchor channels permuted from detectron2's order to ours."""
    order = anchor_permutation(num_sizes, num_ratios)
    if len(rpn_head.convs) != 1:
        raise ValueError(f"detectron2's StandardRPNHead has one conv, the model has "
                         f"{len(rpn_head.convs)} (model.rpn.num_convs)")
    sd.read_conv(reader, rpn_head.convs[0], RPN + "conv.")
    for theirs, ours, group in (("objectness_logits", "objectness", 1),
                                ("anchor_deltas", "box_deltas", 4)):
        conv, key = rpn_head.predictors[ours], f"{RPN}{theirs}."
        reader.read(conv.kernel, key + "weight",
                    lambda w, g=group: sd.torch_conv_kernel_to_keras(_permute_rows(w, order, g)),
                    sd.keras_conv_shape_to_torch(conv.kernel.shape))
        reader.read(conv.bias, key + "bias", lambda b, g=group: _permute_rows(b, order, g))


def read_box_predictor(reader, predictor):
    """cls_score background last -> first; bbox_pred foreground only -> zero class-0 rows."""
    key = ROI + "box_predictor."
    dim, k = predictor.cls_score.kernel.shape
    reader.read(predictor.cls_score.kernel, key + "cls_score.weight",
                lambda w: background_first(w).T, (k, dim))
    reader.read(predictor.cls_score.bias, key + "cls_score.bias", background_first)
    rows = 4 * (predictor.num_box_classes - 1)
    reader.read(predictor.bbox_pred.kernel, key + "bbox_pred.weight",
                lambda w: with_background_rows(w, 4).T, (rows, dim))
    reader.read(predictor.bbox_pred.bias, key + "bbox_pred.bias",
                lambda b: with_background_rows(b, 4), (rows,))


def read_box_head(reader, box_head):
    for i, fc in enumerate(box_head.fcs):
        to_keras = ((lambda w: sd.torch_fc6_to_keras(w, box_head.pooled_shape)) if i == 0
                    else sd.torch_linear_to_keras)
        sd.read_linear(reader, fc, f"{ROI}box_head.fc{i + 1}.", to_keras)


def read_mask_branch(reader, mask_head, mask_predictor):
    key = ROI + "mask_head."
    for i, conv in enumerate(mask_head.convs if mask_head is not None else ()):
        sd.read_conv(reader, conv, f"{key}mask_fcn{i + 1}.")
    sd.read_conv_transpose(reader, mask_predictor.conv5_mask, key + "deconv.")
    logits = mask_predictor.mask_fcn_logits
    kh, kw, cin, k = logits.kernel.shape
    reader.read(logits.kernel, key + "predictor.weight",
                lambda w: sd.torch_conv_kernel_to_keras(with_background_rows(w, 1)),
                (k - 1, cin, kh, kw))
    reader.read(logits.bias, key + "predictor.bias", lambda b: with_background_rows(b, 1),
                (k - 1,))


def read_keypoint_branch(reader, keypoint_head, keypoint_predictor):
    key = ROI + "keypoint_head."
    for i, conv in enumerate(keypoint_head.convs):
        sd.read_conv(reader, conv, f"{key}conv_fcn{i + 1}.")
    sd.read_conv_transpose(reader, keypoint_predictor.kps_score_lowres, key + "score_lowres.")


# ------------------------------------------------------------------------------ whole model
def read_detectron2(reader, model):
    """Queues every weight of a built ``MaskRCNN`` (FPN, or C4 with its res5 head)."""
    c4 = model.fpn is None
    read_backbone(reader, model.backbone, C4_PREFIX if c4 else FPN_PREFIX)
    if c4:
        read_resnet_stages(reader, [model.roi_feature_head.blocks], ROI, first_stage=5)
    else:
        read_fpn(reader, model.fpn)
    num_sizes = len(model.anchor_sizes) if c4 else 1
    read_rpn_head(reader, model.rpn_head, num_sizes, len(model.aspect_ratios))
    if model.box_head is not None:
        read_box_head(reader, model.box_head)
    read_box_predictor(reader, model.box_predictor)
    if model.mask_predictor is not None:
        read_mask_branch(reader, model.mask_head, model.mask_predictor)
    if model.keypoint_predictor is not None:
        read_keypoint_branch(reader, model.keypoint_head, model.keypoint_predictor)


def load_detectron2_weights(model, state_dict, progress=False):
    """Assigns every weight of a built ``MaskRCNN`` from a detectron2 state_dict, all or nothing.

    Returns:
        set of consumed keys: every key except the ignored ones (module docstring); anything
        else left over is an error naming it.
    """
    kept = {k: v for k, v in state_dict.items() if not ignored(k)}
    reader = sd.StateDictReader(kept)
    read_detectron2(reader, model)
    return reader.commit_all(progress)


def infer_num_classes(state_dict):
    """K incl. background: the rows of ``roi_heads.box_predictor.cls_score.weight``."""
    return sd.infer_num_classes(state_dict, ROI + "box_predictor.cls_score.weight")


def check_layout(state_dict, entry):
    """Raises when the checkpoint's heads or backbone layout contradict the zoo ``entry``."""
    found = {"mask": any(k.startswith(ROI + "mask_head.") for k in state_dict),
             "keypoint": any(k.startswith(ROI + "keypoint_head.") for k in state_dict),
             "c4": any(k.startswith(ROI + "res5.") for k in state_dict)}
    expected = {"mask": entry.mask, "keypoint": entry.keypoint, "c4": entry.variant == "c4"}
    wrong = [f"{name}: checkpoint {found[name]}, {entry.name} {expected[name]}"
             for name in found if found[name] != expected[name]]
    if wrong:
        raise ValueError(f"the checkpoint does not look like {entry.name} "
                         f"({'; '.join(wrong)})")


def from_detectron2(checkpoint, config_name, overrides=(), progress=False):
    """A ``MaskRCNN`` with the weights of a detectron2 model-zoo checkpoint.

    Args:
        checkpoint: a ``.pkl`` path (read without torch) or a state_dict (name -> array).
        config_name: a ``detectron2_zoo.MODEL_ZOO`` name, full ("COCO-InstanceSegmentation/
            mask_rcnn_R_50_FPN_3x") or short ("mask_rcnn_R_50_FPN_3x").
        overrides: extra "a.b=c" config overrides (e.g. a smaller ``input.min_size_test``).
        progress: show a progress bar while the weights are assigned.

    Returns:
        The built model; its recipe (``model.config_dict``) reproduces detectron2's inference.
    """
    from keras_maskrcnn import builders
    from keras_maskrcnn.convert import detectron2_zoo as zoo
    entry = zoo.lookup(config_name)
    state_dict = (checkpoint if isinstance(checkpoint, dict)
                  else load_detectron2_pkl(checkpoint))
    with sd.naming_file(checkpoint):
        check_layout(state_dict, entry)
        cfg = zoo.zoo_config(entry, num_classes=infer_num_classes(state_dict),
                             overrides=overrides)
        model = builders.build_model(cfg)
        load_detectron2_weights(model, state_dict, progress=progress)
    return model
