"""A torchvision detection state_dict (the oracle of support.d2_oracle) written in detectron2's
key layout and pickle format (what its model zoo ``model_final_*.pkl`` files hold).

Layout facts (detectron2's modeling/backbone/resnet.py, fpn.py, proposal_generator/rpn.py,
roi_heads/*.py; keras_maskrcnn/convert/detectron2.py has the table):
    torchvision                              detectron2
    backbone.body.conv1 / bn1                {B}stem.conv1 / stem.conv1.norm
    backbone.body.layer{s}.{j}.conv{k}/bn{k} {B}res{s + 1}.{j}.conv{k} / .conv{k}.norm
      .downsample.0 / .1                       .shortcut / .shortcut.norm
    backbone.fpn.inner_blocks.{i}.0          backbone.fpn_lateral{i + 2}
    backbone.fpn.layer_blocks.{i}.0          backbone.fpn_output{i + 2}
    rpn.head.conv.0.0 / cls_logits / bbox_pred
        proposal_generator.rpn_head.conv / objectness_logits / anchor_deltas (anchors of a
        location reordered ratio-major -> size-major)
    roi_heads.box_head.fc6 / fc7             roi_heads.box_head.fc1 / fc2
    roi_heads.box_predictor.cls_score        the same, background row 0 moved last
    roi_heads.box_predictor.bbox_pred        the same, background rows 0..3 dropped
    roi_heads.mask_head.{i}.0                roi_heads.mask_head.mask_fcn{i + 1}
    roi_heads.mask_predictor.conv5_mask      roi_heads.mask_head.deconv
    roi_heads.mask_predictor.mask_fcn_logits roi_heads.mask_head.predictor (channel 0 dropped)
    roi_heads.keypoint_head.{2 i}            roi_heads.keypoint_head.conv_fcn{i + 1}
    roi_heads.keypoint_predictor.kps_score_lowres   roi_heads.keypoint_head.score_lowres
    C4: roi_heads.box_head.layer4.{j}.*      roi_heads.res5.{j}.* (as the backbone blocks; the
        mask head's copy of the same module is not written twice)
with {B} = "backbone.bottom_up." (FPN) or "backbone." (C4).
"""
import pickle
import re

import numpy as np

_BLOCK = [(r"conv(\d)\.", r"conv\1."), (r"bn(\d)\.", r"conv\1.norm."),
          (r"downsample\.0\.", "shortcut."), (r"downsample\.1\.", "shortcut.norm.")]


def _block_key(rest):
    for pattern, replacement in _BLOCK:
        new, n = re.subn("^" + pattern, replacement, rest)
        if n:
            return new
    raise KeyError(rest)


def _anchor_order(num_sizes, num_ratios):
    """detectron2 anchor index s * R + r <- torchvision's r * S + s."""
    return np.array([r * num_sizes + s for s in range(num_sizes) for r in range(num_ratios)])


def _rpn(value, order, group):
    return value.reshape((len(order), group) + value.shape[1:])[order].reshape(value.shape)


def _map(key, value, c4, order):
    """(detectron2 key, value) of one torchvision entry, or None when not written."""
    bottom = "backbone." if c4 else "backbone.bottom_up."
    m = re.match(r"backbone\.body\.(conv1|bn1)\.(.+)", key)
    if m:
        return f"{bottom}stem.conv1.{'norm.' if m.group(1) == 'bn1' else ''}{m.group(2)}", value
    m = re.match(r"backbone\.body\.layer(\d)\.(\d+)\.(.+)", key)
    if m:
        return f"{bottom}res{int(m.group(1)) + 1}.{m.group(2)}.{_block_key(m.group(3))}", value
    m = re.match(r"roi_heads\.(box_head|mask_head)\.layer4\.(\d+)\.(.+)", key)
    if m:  # C4's res5, shared by the box and mask heads
        if m.group(1) == "mask_head":
            return None
        return f"roi_heads.res5.{m.group(2)}.{_block_key(m.group(3))}", value
    m = re.match(r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(.+)", key)
    if m:
        kind = "lateral" if m.group(1) == "inner" else "output"
        return f"backbone.fpn_{kind}{int(m.group(2)) + 2}.{m.group(3)}", value
    m = re.match(r"rpn\.head\.(conv\.0\.0|cls_logits|bbox_pred)\.(.+)", key)
    if m:
        name, group = {"conv.0.0": ("conv", 0), "cls_logits": ("objectness_logits", 1),
                       "bbox_pred": ("anchor_deltas", 4)}[m.group(1)]
        value = _rpn(value, order, group) if group else value
        return f"proposal_generator.rpn_head.{name}.{m.group(2)}", value
    m = re.match(r"roi_heads\.box_head\.fc(\d)\.(.+)", key)
    if m:
        return f"roi_heads.box_head.fc{int(m.group(1)) - 5}.{m.group(2)}", value
    if key.startswith("roi_heads.box_predictor.cls_score."):
        return key, np.concatenate([value[1:], value[:1]])
    if key.startswith("roi_heads.box_predictor.bbox_pred."):
        return key, value[4:]
    m = re.match(r"roi_heads\.mask_head\.(\d)\.0\.(.+)", key)
    if m:
        return f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.{m.group(2)}", value
    m = re.match(r"roi_heads\.mask_predictor\.(conv5_mask|mask_fcn_logits)\.(.+)", key)
    if m:
        if m.group(1) == "conv5_mask":
            return f"roi_heads.mask_head.deconv.{m.group(2)}", value
        return f"roi_heads.mask_head.predictor.{m.group(2)}", value[1:]
    m = re.match(r"roi_heads\.keypoint_head\.(\d+)\.(.+)", key)
    if m:
        return f"roi_heads.keypoint_head.conv_fcn{int(m.group(1)) // 2 + 1}.{m.group(2)}", value
    m = re.match(r"roi_heads\.keypoint_predictor\.kps_score_lowres\.(.+)", key)
    if m:
        return f"roi_heads.keypoint_head.score_lowres.{m.group(1)}", value
    raise KeyError(f"no detectron2 name for {key!r}")


def to_detectron2(state_dict, c4=False, num_sizes=1, num_ratios=3):
    """torchvision state_dict (tensors) -> detectron2 ``model`` dict (float32 numpy)."""
    order = _anchor_order(num_sizes, num_ratios)
    out = {}
    for key, tensor in state_dict.items():
        mapped = _map(key, tensor.detach().cpu().numpy().astype(np.float32), c4, order)
        if mapped is not None:
            out[mapped[0]] = np.ascontiguousarray(mapped[1])
    return out


def write_pkl(path, model, extras=True):
    """A model-zoo style pickle; ``extras`` adds the entries the converter must ignore."""
    model = dict(model)
    if extras:
        model["pixel_mean"] = np.float32([103.53, 116.28, 123.675]).reshape(3, 1, 1)
        model["pixel_std"] = np.ones((3, 1, 1), np.float32)
        model["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), np.float32)
        model["backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked"] = np.zeros((), np.int64)
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "keras-maskrcnn test oracle",
                     "matching_heuristics": False}, f, protocol=2)
