"""Weight import from torchvision detection checkpoints (state_dict -> our Keras layers).

Shape shorthand: Cout/Cin output/input channels, kh/kw kernel height/width.

Conventions pinned here (the reading, layout transforms and progress are the toolkit of
``convert.state_dict``, re-exported here):
- A state_dict is a mapping name -> torch tensor or numpy array; ``.pth`` files are read without
  torch (``convert.pth``).
- Conv weights are transposed from torch (Cout, Cin, kh, kw) to Keras (kh, kw, Cin, Cout);
  biases and FrozenBatchNorm buffers ([C]) are copied as they are. A grouped conv (ResNeXt)
  is the same transpose: torch (Cout, Cin / groups, kh, kw) -> Keras Conv2D(groups=groups)
  (kh, kw, Cin / groups, Cout); both split channels into contiguous groups. torchvision's
  ResNeXt state_dicts have ResNet's key layout, so ``read_resnet`` loads them.
- Strict loading: a missing key, a key left unused under a consumed prefix, or a shape mismatch
  raises a ``ValueError``/``KeyError`` that names the key (and expected vs got shapes). Nothing is
  assigned unless every check passes. ``num_batches_tracked`` buffers are consumed silently
  (torchvision's FrozenBatchNorm2d drops them too).
- Every loader returns the set of keys it consumed. Given a ``reader`` (a shared
  ``StateDictReader``) a loader only queues its reads there, so a full-model converter commits
  the whole model at once (``torchvision_models.load_torchvision_weights``: all or nothing).

Name mapping (torchvision -> ours), under ``prefix`` (default "backbone."):
  body.conv1 / body.bn1                     -> ResNet.stem_conv / stem_bn
  body.layer{s}.{j}.conv{k} / bn{k}         -> ResNet.stages[s - 1][j].conv{k} / bn{k}
  body.layer{s}.{j}.downsample.0 / .1       -> ... .shortcut_conv / shortcut_bn
  fpn.inner_blocks.{i}.0 (old: .{i})        -> FPN.lateral_convs[i]
  fpn.layer_blocks.{i}.0 (old: .{i})        -> FPN.output_convs[i]
The RPN and RoI-head mappings follow below.
"""
from keras_maskrcnn.convert.state_dict import (  # noqa: F401  the toolkit, re-exported
    StateDictReader, check_all_used, keras_conv_shape_to_torch, load_state_dict, progress_bar,
    read_conv, read_conv_transpose, read_frozen_bn, read_linear, require_built, to_numpy,
    torch_conv_kernel_to_keras, torch_conv_transpose_kernel_to_keras, torch_fc6_to_keras,
    torch_linear_to_keras)


def read_resnet(reader, resnet, prefix, stage_key="layer{}", first_stage=1):
    """Queues every ResNet weight from torchvision keys ``{prefix}conv1.weight`` etc.

    ``stage_key.format(first_stage + s)`` names stage s (0-based): torchvision's ``layer1``..
    ``layer4`` by default; YOLACT's ``layers.0``..``layers.3`` with ("layers.{}", 0).
    """
    require_built(resnet, "call it once or resnet.build((None, None, None, 3))")
    read_conv(reader, resnet.stem_conv, prefix + "conv1.")
    read_frozen_bn(reader, resnet.stem_bn, prefix + "bn1.")
    for s, blocks in enumerate(resnet.stages, start=first_stage):
        for j, block in enumerate(blocks):
            key = f"{prefix}{stage_key.format(s)}.{j}."
            for k, (conv, bn) in enumerate(block.conv_bn_pairs(), start=1):
                read_conv(reader, conv, f"{key}conv{k}.")
                read_frozen_bn(reader, bn, f"{key}bn{k}.")
            if block.shortcut_conv is not None:
                read_conv(reader, block.shortcut_conv, key + "downsample.0.")
                read_frozen_bn(reader, block.shortcut_bn, key + "downsample.1.")


def read_fpn(reader, fpn, prefix):
    """Queues the FPN convs from ``{prefix}inner_blocks.i.0.*`` / ``layer_blocks.i.0.*``.

    Checkpoints saved before torchvision 0.13 (FPN ``_version`` 1) name them
    ``inner_blocks.i.weight`` without the ``.0``; both are accepted.
    """
    require_built(fpn, "call it once or fpn.build({'C2': (None, None, None, c2), ...})")
    if fpn.extra_convs:  # torchvision's LastLevelP6P7 puts a ReLU between P6 and P7
        raise ValueError(f"{fpn.name}: torchvision's FPN has no 'conv' extra levels like "
                         f"{[c.name for c in fpn.extra_convs]}")
    for group, convs in (("inner_blocks", fpn.lateral_convs), ("layer_blocks", fpn.output_convs)):
        for i, conv in enumerate(convs):
            key = f"{prefix}{group}.{i}."
            if not reader.has(key + "0.weight") and reader.has(key + "weight"):
                read_conv(reader, conv, key)  # old layout, no ".0"
            else:
                read_conv(reader, conv, key + "0.")


def load_resnet_weights(resnet, state_dict, prefix="backbone.body.", ignore_prefixes=()):
    """Loads a torchvision ResNet body into ``resnet`` (a built ``models.backbones.ResNet``).

    Args:
        resnet: ``ResNet`` layer (built; this function builds it for 3 input channels if not).
        state_dict: name -> torch tensor / numpy array.
        prefix: key prefix of the body ("backbone.body." in detection models, "" for an ImageNet
            classification checkpoint, with ``ignore_prefixes=("fc.",)``).
        ignore_prefixes: key prefixes (relative to ``prefix``) exempt from the leftover check.
    Returns:
        set of consumed keys.
    """
    if not resnet.built:
        resnet.build((None, None, None, 3))
    reader = StateDictReader(state_dict)
    read_resnet(reader, resnet, prefix)
    reader.check_no_leftover(prefix, ignore_prefixes)
    return reader.commit()


def load_fpn_weights(fpn, state_dict, prefix="backbone.fpn."):
    """Loads torchvision ``FeaturePyramidNetwork`` weights into a built ``layers.fpn.FPN``.

    Returns:
        set of consumed keys.
    """
    reader = StateDictReader(state_dict)
    read_fpn(reader, fpn, prefix)
    reader.check_no_leftover(prefix)
    return reader.commit()


def _finish(reader, own):
    """Commits an own reader; a shared one is committed by its owner. Returns consumed keys."""
    return reader.commit() if own else set(reader.consumed)


def load_resnet_fpn_weights(resnet, fpn, state_dict, prefix="backbone.", reader=None):
    """Loads ``{prefix}body.*`` into ``resnet`` and ``{prefix}fpn.*`` into ``fpn``, all or nothing.

    Builds unbuilt layers (3 input channels; the FPN from ``resnet.out_channels``).

    Returns:
        set of consumed keys (every key under ``prefix``, else an error was raised).
    """
    if not resnet.built:
        resnet.build((None, None, None, 3))
    if not fpn.built:
        fpn.build({k: (None, None, None, c) for k, c in resnet.out_channels.items()})
    own = reader is None
    reader = StateDictReader(state_dict) if own else reader
    read_resnet(reader, resnet, prefix + "body.")
    read_fpn(reader, fpn, prefix + "fpn.")
    reader.check_no_leftover(prefix)
    return _finish(reader, own)


# ---------------------------------------------------------------------------------------------
# RoI heads (keras_maskrcnn.layers.heads). Name mapping (torchvision -> ours), under ``prefix``
# (default "roi_heads."):
#   box_head.fc{6 + i}                      -> BoxHead.fcs[i] (fc6 rows permuted, see below)
#   box_predictor.cls_score / bbox_pred     -> BoxPredictor.cls_score / bbox_pred
#   mask_head.{i}.0 (old: mask_fcn{i + 1})  -> MaskHead.convs[i]
#   mask_predictor.conv5_mask / mask_fcn_logits -> MaskPredictor.conv5_mask / mask_fcn_logits
#   keypoint_head.{2 * i}                   -> KeypointHead.convs[i] (odd indices are ReLUs)
#   keypoint_predictor.kps_score_lowres     -> KeypointPredictor.kps_score_lowres
# A predictor argument may be None (fine-tuning to another class count): its keys are then
# neither read nor checked.
# ---------------------------------------------------------------------------------------------


_HEADS_BUILD_HINT = "call it once or build it with its input shape, e.g. (None, None, P, P, C)"


def _load_head_and_predictor(head, predictor, state_dict, head_prefix, predictor_prefix,
                             read_head, read_predictor, reader):
    require_built(head, _HEADS_BUILD_HINT)
    if predictor is not None:
        require_built(predictor, _HEADS_BUILD_HINT)
    own = reader is None
    reader = StateDictReader(state_dict) if own else reader
    read_head(reader)
    reader.check_no_leftover(head_prefix)
    if predictor is not None:
        read_predictor(reader)
        reader.check_no_leftover(predictor_prefix)
    return _finish(reader, own)


def load_box_head_weights(box_head, box_predictor, state_dict, prefix="roi_heads.",
                          reader=None):
    """Loads torchvision ``TwoMLPHead`` + ``FastRCNNPredictor`` weights, all or nothing.

    Args:
        box_head: built ``layers.heads.BoxHead`` (fc6's rows are permuted from torch's (C, P, P)
            flatten order to our (P, P, C) using ``box_head.pooled_shape``).
        box_predictor: built ``layers.heads.BoxPredictor``, or None to skip its keys.
        state_dict: name -> torch tensor / numpy array.
        prefix: key prefix of the RoI heads ("roi_heads." in torchvision detection models).
        reader: a shared ``StateDictReader`` to queue into (its owner commits), or None.
    Returns:
        set of consumed keys.
    """
    def read_head(reader):
        for i, fc in enumerate(box_head.fcs):
            to_keras = ((lambda w: torch_fc6_to_keras(w, box_head.pooled_shape)) if i == 0
                        else torch_linear_to_keras)
            read_linear(reader, fc, f"{prefix}box_head.fc{6 + i}.", to_keras)

    def read_predictor(reader):
        read_linear(reader, box_predictor.cls_score, prefix + "box_predictor.cls_score.")
        read_linear(reader, box_predictor.bbox_pred, prefix + "box_predictor.bbox_pred.")

    return _load_head_and_predictor(box_head, box_predictor, state_dict, prefix + "box_head.",
                                    prefix + "box_predictor.", read_head, read_predictor,
                                    reader)


def load_mask_head_weights(mask_head, mask_predictor, state_dict, prefix="roi_heads.",
                           reader=None):
    """Loads torchvision ``MaskRCNNHeads`` + ``MaskRCNNPredictor`` weights, all or nothing.

    Both ``mask_head.{i}.0.*`` (torchvision >= 0.13) and ``mask_head.mask_fcn{i+1}.*`` (older
    checkpoints) are accepted.

    Args:
        mask_head: built ``layers.heads.MaskHead``.
        mask_predictor: built ``layers.heads.MaskPredictor``, or None to skip its keys.
        state_dict: name -> torch tensor / numpy array.
        prefix: key prefix of the RoI heads.
        reader: a shared ``StateDictReader`` to queue into (its owner commits), or None.
    Returns:
        set of consumed keys.
    """
    def read_head(reader):
        for i, conv in enumerate(mask_head.convs):
            old = f"{prefix}mask_head.mask_fcn{i + 1}."
            if reader.has(old + "weight") and not reader.has(f"{prefix}mask_head.{i}.0.weight"):
                read_conv(reader, conv, old)  # pre-0.13 layout
            else:
                read_conv(reader, conv, f"{prefix}mask_head.{i}.0.")

    def read_predictor(reader):
        read_conv_transpose(reader, mask_predictor.conv5_mask,
                            prefix + "mask_predictor.conv5_mask.")
        read_conv(reader, mask_predictor.mask_fcn_logits,
                  prefix + "mask_predictor.mask_fcn_logits.")

    return _load_head_and_predictor(mask_head, mask_predictor, state_dict, prefix + "mask_head.",
                                    prefix + "mask_predictor.", read_head, read_predictor,
                                    reader)


def load_keypoint_head_weights(kp_head, kp_predictor, state_dict, prefix="roi_heads.",
                               reader=None):
    """Loads torchvision ``KeypointRCNNHeads`` + ``KeypointRCNNPredictor`` weights, all or nothing.

    Args:
        kp_head: built ``layers.heads.KeypointHead`` (conv i <- ``keypoint_head.{2 * i}``).
        kp_predictor: built ``layers.heads.KeypointPredictor``, or None to skip its keys.
        state_dict: name -> torch tensor / numpy array.
        prefix: key prefix of the RoI heads.
        reader: a shared ``StateDictReader`` to queue into (its owner commits), or None.
    Returns:
        set of consumed keys.
    """
    def read_head(reader):
        for i, conv in enumerate(kp_head.convs):
            read_conv(reader, conv, f"{prefix}keypoint_head.{2 * i}.")  # odd indices: ReLU

    def read_predictor(reader):
        read_conv_transpose(reader, kp_predictor.kps_score_lowres,
                            prefix + "keypoint_predictor.kps_score_lowres.")

    return _load_head_and_predictor(kp_head, kp_predictor, state_dict,
                                    prefix + "keypoint_head.", prefix + "keypoint_predictor.",
                                    read_head, read_predictor, reader)


# --- RPN head (torchvision rpn.head.*) ---------------------------------------------------------

def read_rpn_head(reader, rpn_head, prefix):
    """Queues a ``layers.rpn.RPNHead`` from torchvision ``RPNHead`` keys under ``prefix``.

    ``{prefix}conv.{i}.0.*`` (Conv2dNormActivation, torchvision >= 0.13) -> ``convs[i]``; the
    older single-conv layout ``{prefix}conv.weight`` is accepted when ``num_convs == 1``;
    ``cls_logits.*`` -> ``predictors["objectness"]``, ``bbox_pred.*`` ->
    ``predictors["box_deltas"]``.
    """
    require_built(rpn_head, "call it once or rpn_head.build({'P2': (None, None, None, C)})")
    old_layout = reader.has(prefix + "conv.weight")
    if old_layout and len(rpn_head.convs) != 1:
        raise ValueError(f"{prefix}conv.weight is the single-conv (pre-0.13) layout but the head "
                         f"has num_convs={len(rpn_head.convs)}")
    for i, conv in enumerate(rpn_head.convs):
        read_conv(reader, conv, prefix + ("conv." if old_layout else f"conv.{i}.0."))
    read_conv(reader, rpn_head.predictors["objectness"], prefix + "cls_logits.")
    read_conv(reader, rpn_head.predictors["box_deltas"], prefix + "bbox_pred.")


def load_rpn_head_weights(rpn_head, state_dict, prefix="rpn.head.", reader=None):
    """Loads torchvision ``RPNHead`` weights into a ``layers.rpn.RPNHead``, all or nothing.

    An unbuilt head is built with the input channel count of ``{prefix}cls_logits.weight``.

    Returns:
        set of consumed keys (every key under ``prefix``, else an error was raised).
    """
    if not rpn_head.built:
        key = prefix + "cls_logits.weight"
        if key not in state_dict:
            raise KeyError(f"missing key in state_dict: {key!r}")
        channels = int(to_numpy(state_dict[key]).shape[1])
        rpn_head.build({"P2": (None, None, None, channels)})
    own = reader is None
    reader = StateDictReader(state_dict) if own else reader
    read_rpn_head(reader, rpn_head, prefix)
    reader.check_no_leftover(prefix)
    return _finish(reader, own)
