"""Weight import from torchvision detection checkpoints (state_dict -> our Keras layers).

Shape shorthand: Cout/Cin output/input channels, kh/kw kernel height/width.

Conventions pinned here:
- A state_dict is a mapping name -> torch tensor or numpy array. torch is imported only by
  ``load_state_dict`` to read a ``.pth`` file: a value with ``detach``/``cpu`` attributes is
  converted with ``np.asarray(v.detach().cpu())``.
- Conv weights are transposed from torch (Cout, Cin, kh, kw) to Keras (kh, kw, Cin, Cout);
  biases and FrozenBatchNorm buffers ([C]) are copied as they are. A grouped conv (ResNeXt)
  is the same transpose: torch (Cout, Cin / groups, kh, kw) -> Keras Conv2D(groups=groups)
  (kh, kw, Cin / groups, Cout); both split channels into contiguous groups. torchvision's
  ResNeXt state_dicts have ResNet's key layout, so ``read_resnet`` loads them.
- Strict loading: a missing key, a key left unused under a consumed prefix, or a shape mismatch
  raises a ``ValueError``/``KeyError`` that names the key (and expected vs got shapes). Nothing is
  assigned unless every check passes. ``num_batches_tracked`` buffers are consumed silently
  (torchvision's FrozenBatchNorm2d drops them too).
- Every loader returns the set of keys it consumed, so a full-model converter can check that
  the union covers the whole checkpoint.

Name mapping (torchvision -> ours), under ``prefix`` (default "backbone."):
  body.conv1 / body.bn1                     -> ResNet.stem_conv / stem_bn
  body.layer{s}.{j}.conv{k} / bn{k}         -> ResNet.stages[s - 1][j].conv{k} / bn{k}
  body.layer{s}.{j}.downsample.0 / .1       -> ... .shortcut_conv / shortcut_bn
  fpn.inner_blocks.{i}.0 (old: .{i})        -> FPN.lateral_convs[i]
  fpn.layer_blocks.{i}.0 (old: .{i})        -> FPN.output_convs[i]
The RPN and RoI-head mappings are meant to be added here as further ``load_*`` functions built on
``StateDictReader`` (``conv``, ``dense`` style helpers), combined by a full-model loader.
"""
import numpy as np

from keras_maskrcnn.convert.pth import load_pth


def to_numpy(value):
    """A torch tensor (any device, requires_grad or not) or array-like -> np.ndarray."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
    return np.asarray(value)


def torch_conv_kernel_to_keras(weight):
    """(Cout, Cin, kh, kw) -> (kh, kw, Cin, Cout)."""
    return np.transpose(weight, (2, 3, 1, 0))  # torch OIHW -> Keras HWIO


def _keras_conv_shape_to_torch(shape):
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)


class StateDictReader:
    """Checked, all-or-nothing reads from a state_dict; remembers the keys it consumed.

    ``read`` queues (variable, value) pairs after checking key and shape; ``commit`` assigns them
    all at once, so a failing checkpoint leaves the model untouched.
    """

    def __init__(self, state_dict):
        self.state_dict = state_dict
        self.consumed = set()
        self.targets = {}  # key -> the Keras variable it was (or will be) assigned to
        self._pending = []

    def has(self, key):
        return key in self.state_dict

    def read(self, variable, key, to_keras=None, torch_shape=None):
        """Queues ``variable.assign(to_keras(state_dict[key]))`` after checking the shape.

        Args:
            variable: a Keras variable.
            key: the state_dict key.
            to_keras: layout conversion applied to the numpy value (None = as is).
            torch_shape: the expected shape in the checkpoint's layout (for the error message;
                default ``variable.shape``).
        """
        if key not in self.state_dict:
            raise KeyError(f"missing key in state_dict: {key!r}")
        value = to_numpy(self.state_dict[key])
        expected = tuple(torch_shape or variable.shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"shape mismatch for {key!r}: expected {expected} "
                             f"(for {variable.path}), got {tuple(value.shape)}")
        value = to_keras(value) if to_keras is not None else value
        self._pending.append((variable, value.astype(np.float32)))
        self.consumed.add(key)
        self.targets[key] = variable

    def consume_if_present(self, key):
        if key in self.state_dict:
            self.consumed.add(key)

    def check_no_leftover(self, prefix, ignore_prefixes=()):
        """Raises if a key under ``prefix`` was not consumed (``prefix + ignore`` excepted)."""
        skip = tuple(prefix + p for p in ignore_prefixes)
        leftover = sorted(k for k in self.state_dict
                          if k.startswith(prefix) and k not in self.consumed
                          and not (skip and k.startswith(skip)))
        if leftover:
            raise ValueError(f"unexpected key(s) under {prefix!r} not used by the model: "
                             f"{leftover[:10]}{' ...' if len(leftover) > 10 else ''}")

    def commit(self, progress=None):
        """Assigns the queued values; ``progress`` wraps the (variable, value) list (e.g. tqdm)."""
        for variable, value in (progress(self._pending) if progress else self._pending):
            variable.assign(value)
        self._pending = []
        return set(self.consumed)

    def commit_all(self, progress=False, ignore=None):
        """``commit`` once every key of the state_dict was read (``ignore(key)`` ones excepted);
        a tqdm bar when ``progress``. Returns the consumed keys."""
        check_all_used(set(self.state_dict), self.consumed, ignore)
        return self.commit(progress=progress_bar if progress else None)


def check_all_used(keys, consumed, ignore=None):
    """Raises naming the first keys of ``keys`` neither consumed nor ``ignore``d."""
    unused = sorted(k for k in keys - consumed if not (ignore and ignore(k)))
    if unused:
        raise ValueError(f"unexpected key(s) in the checkpoint not used by the model: "
                         f"{unused[:10]}{' ...' if len(unused) > 10 else ''}")


def progress_bar(pending):
    """tqdm over the weights being assigned (the converters' progress)."""
    from tqdm import tqdm  # only when asked for
    return tqdm(pending, desc="assigning weights", unit="key")


def read_conv(reader, conv, key_prefix):
    """Queues a keras Conv2D from ``{key_prefix}weight`` (+ ``bias`` when the conv has one)."""
    reader.read(conv.kernel, key_prefix + "weight", torch_conv_kernel_to_keras,
                _keras_conv_shape_to_torch(conv.kernel.shape))
    if conv.use_bias:
        reader.read(conv.bias, key_prefix + "bias")


def read_frozen_bn(reader, bn, key_prefix):
    """Queues a FrozenBatchNorm from weight, bias, running_mean, running_var."""
    for ours, theirs in (("gamma", "weight"), ("beta", "bias"),
                         ("moving_mean", "running_mean"), ("moving_variance", "running_var")):
        reader.read(getattr(bn, ours), key_prefix + theirs)
    reader.consume_if_present(key_prefix + "num_batches_tracked")


def _require_built(layer, how):
    if not layer.built:
        raise ValueError(f"{layer.name} is not built: {how} before loading weights")


def read_resnet(reader, resnet, prefix, stage_key="layer{}", first_stage=1):
    """Queues every ResNet weight from torchvision keys ``{prefix}conv1.weight`` etc.

    ``stage_key.format(first_stage + s)`` names stage s (0-based): torchvision's ``layer1``..
    ``layer4`` by default; YOLACT's ``layers.0``..``layers.3`` with ("layers.{}", 0).
    """
    _require_built(resnet, "call it once or resnet.build((None, None, None, 3))")
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
    _require_built(fpn, "call it once or fpn.build({'C2': (None, None, None, c2), ...})")
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


def load_resnet_fpn_weights(resnet, fpn, state_dict, prefix="backbone."):
    """Loads ``{prefix}body.*`` into ``resnet`` and ``{prefix}fpn.*`` into ``fpn``, all or nothing.

    Builds unbuilt layers (3 input channels; the FPN from ``resnet.out_channels``).

    Returns:
        set of consumed keys (every key under ``prefix``, else an error was raised).
    """
    if not resnet.built:
        resnet.build((None, None, None, 3))
    if not fpn.built:
        fpn.build({k: (None, None, None, c) for k, c in resnet.out_channels.items()})
    reader = StateDictReader(state_dict)
    read_resnet(reader, resnet, prefix + "body.")
    read_fpn(reader, fpn, prefix + "fpn.")
    reader.check_no_leftover(prefix)
    return reader.commit()


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


def torch_linear_to_keras(weight):
    """nn.Linear weight (out, in) -> Dense kernel (in, out)."""
    return np.transpose(weight)  # torch (out, in) -> Keras (in, out)


def torch_conv_transpose_kernel_to_keras(weight):
    """ConvTranspose2d weight (Cin, Cout, kh, kw) -> Conv2DTranspose kernel (kh, kw, Cout, Cin).

    Both frameworks define the transposed conv as the gradient of a cross-correlation, so no
    spatial flip is needed.
    """
    return np.transpose(weight, (2, 3, 1, 0))  # torch (Cin, Cout, kh, kw) -> (kh, kw, Cout, Cin)


def torch_fc6_to_keras(weight, pooled_shape):
    """fc6 weight (D, C * P * P) flattened (C, P, P) -> Dense kernel (P * P * C, D) in NHWC order.

    Args:
        weight: torch ``box_head.fc6.weight``.
        pooled_shape: (P_h, P_w, C) of the BoxHead input (``BoxHead.pooled_shape``).
    """
    ph, pw, c = pooled_shape
    w = weight.reshape(weight.shape[0], c, ph, pw)  # [D, C, P, P], torch's flatten order
    w = np.transpose(w, (2, 3, 1, 0))  # [P, P, C, D], our NHWC flatten order
    return w.reshape(ph * pw * c, weight.shape[0])  # [P * P * C, D]


def read_linear(reader, dense, key_prefix, to_keras=torch_linear_to_keras):
    """Queues a keras Dense from nn.Linear ``{key_prefix}weight`` (out, in) and ``bias``."""
    in_dim, out_dim = dense.kernel.shape
    reader.read(dense.kernel, key_prefix + "weight", to_keras, (out_dim, in_dim))
    reader.read(dense.bias, key_prefix + "bias")


def read_conv_transpose(reader, deconv, key_prefix):
    """Queues a keras Conv2DTranspose from ConvTranspose2d ``{key_prefix}weight`` and ``bias``."""
    kh, kw, cout, cin = deconv.kernel.shape
    reader.read(deconv.kernel, key_prefix + "weight", torch_conv_transpose_kernel_to_keras,
                (cin, cout, kh, kw))
    reader.read(deconv.bias, key_prefix + "bias")


_HEADS_BUILD_HINT = "call it once or build it with its input shape, e.g. (None, None, P, P, C)"


def _load_head_and_predictor(head, predictor, state_dict, head_prefix, predictor_prefix,
                             read_head, read_predictor):
    _require_built(head, _HEADS_BUILD_HINT)
    if predictor is not None:
        _require_built(predictor, _HEADS_BUILD_HINT)
    reader = StateDictReader(state_dict)
    read_head(reader)
    reader.check_no_leftover(head_prefix)
    if predictor is not None:
        read_predictor(reader)
        reader.check_no_leftover(predictor_prefix)
    return reader.commit()


def load_box_head_weights(box_head, box_predictor, state_dict, prefix="roi_heads."):
    """Loads torchvision ``TwoMLPHead`` + ``FastRCNNPredictor`` weights, all or nothing.

    Args:
        box_head: built ``layers.heads.BoxHead`` (fc6's rows are permuted from torch's (C, P, P)
            flatten order to our (P, P, C) using ``box_head.pooled_shape``).
        box_predictor: built ``layers.heads.BoxPredictor``, or None to skip its keys.
        state_dict: name -> torch tensor / numpy array.
        prefix: key prefix of the RoI heads ("roi_heads." in torchvision detection models).
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
                                    prefix + "box_predictor.", read_head, read_predictor)


def load_mask_head_weights(mask_head, mask_predictor, state_dict, prefix="roi_heads."):
    """Loads torchvision ``MaskRCNNHeads`` + ``MaskRCNNPredictor`` weights, all or nothing.

    Both ``mask_head.{i}.0.*`` (torchvision >= 0.13) and ``mask_head.mask_fcn{i+1}.*`` (older
    checkpoints) are accepted.

    Args:
        mask_head: built ``layers.heads.MaskHead``.
        mask_predictor: built ``layers.heads.MaskPredictor``, or None to skip its keys.
        state_dict: name -> torch tensor / numpy array.
        prefix: key prefix of the RoI heads.
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
                                    prefix + "mask_predictor.", read_head, read_predictor)


def load_keypoint_head_weights(kp_head, kp_predictor, state_dict, prefix="roi_heads."):
    """Loads torchvision ``KeypointRCNNHeads`` + ``KeypointRCNNPredictor`` weights, all or nothing.

    Args:
        kp_head: built ``layers.heads.KeypointHead`` (conv i <- ``keypoint_head.{2 * i}``).
        kp_predictor: built ``layers.heads.KeypointPredictor``, or None to skip its keys.
        state_dict: name -> torch tensor / numpy array.
        prefix: key prefix of the RoI heads.
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
                                    read_head, read_predictor)


# --- RPN head (torchvision rpn.head.*) ---------------------------------------------------------

def read_rpn_head(reader, rpn_head, prefix):
    """Queues a ``layers.rpn.RPNHead`` from torchvision ``RPNHead`` keys under ``prefix``.

    ``{prefix}conv.{i}.0.*`` (Conv2dNormActivation, torchvision >= 0.13) -> ``convs[i]``; the
    older single-conv layout ``{prefix}conv.weight`` is accepted when ``num_convs == 1``;
    ``cls_logits.*`` -> ``predictors["objectness"]``, ``bbox_pred.*`` ->
    ``predictors["box_deltas"]``.
    """
    _require_built(rpn_head, "call it once or rpn_head.build({'P2': (None, None, None, C)})")
    old_layout = reader.has(prefix + "conv.weight")
    if old_layout and len(rpn_head.convs) != 1:
        raise ValueError(f"{prefix}conv.weight is the single-conv (pre-0.13) layout but the head "
                         f"has num_convs={len(rpn_head.convs)}")
    for i, conv in enumerate(rpn_head.convs):
        read_conv(reader, conv, prefix + ("conv." if old_layout else f"conv.{i}.0."))
    read_conv(reader, rpn_head.predictors["objectness"], prefix + "cls_logits.")
    read_conv(reader, rpn_head.predictors["box_deltas"], prefix + "bbox_pred.")


def load_rpn_head_weights(rpn_head, state_dict, prefix="rpn.head."):
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
    reader = StateDictReader(state_dict)
    read_rpn_head(reader, rpn_head, prefix)
    reader.check_no_leftover(prefix)
    return reader.commit()


def load_state_dict(checkpoint):
    """A state_dict from a mapping or a ``.pth`` / ``.pt`` path, read without torch
    (``convert.pth.load_pth``: training-checkpoint wrappers ``{"model": ...}`` unwrapped)."""
    if isinstance(checkpoint, dict):
        return checkpoint
    return load_pth(checkpoint)
