"""The state_dict toolkit of the weight converters: checked, all-or-nothing reads from a
checkpoint's name -> array mapping into Keras variables, torch -> Keras layout transforms,
progress, and the facts every converter infers the same way.

Shape shorthand: Cout/Cin output/input channels, kh/kw kernel height/width, D/I Dense
output/input dims, K classes incl. background.

Conventions pinned here (tests/convert):
- A state_dict maps names to torch tensors or numpy arrays; a value with ``detach``/``cpu``
  attributes is converted with ``np.asarray(v.detach().cpu())`` (bfloat16 through float32).
- Conv weights go from torch (Cout, Cin, kh, kw) to Keras (kh, kw, Cin, Cout); a grouped conv is
  the same transpose (Cin / groups). nn.Linear (D, I) -> Dense (I, D); ConvTranspose2d (Cin,
  Cout, kh, kw) -> Conv2DTranspose (kh, kw, Cout, Cin), no spatial flip (both are the gradient
  of a cross-correlation). Biases and FrozenBatchNorm buffers ([C]) are copied as they are.
- ``StateDictReader.read`` checks key and shape and queues the assignment; ``commit_all``
  assigns only once every key was read and checked, so a converter that reads the whole model
  through one reader is all or nothing: a failure leaves the model untouched.
- Errors name the key and both shapes; ``naming_file`` prefixes them with the checkpoint's path.
"""
import contextlib

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


def keras_conv_shape_to_torch(shape):
    """Keras (kh, kw, Cin, Cout) -> torch (Cout, Cin, kh, kw)."""
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
                keras_conv_shape_to_torch(conv.kernel.shape))
    if conv.use_bias:
        reader.read(conv.bias, key_prefix + "bias")


def read_frozen_bn(reader, bn, key_prefix):
    """Queues a FrozenBatchNorm from weight, bias, running_mean, running_var."""
    for ours, theirs in (("gamma", "weight"), ("beta", "bias"),
                         ("moving_mean", "running_mean"), ("moving_variance", "running_var")):
        reader.read(getattr(bn, ours), key_prefix + theirs)
    reader.consume_if_present(key_prefix + "num_batches_tracked")


def require_built(layer, how):
    """Raises naming ``layer`` when it has no weights yet (``how``: the way to build it)."""
    if not layer.built:
        raise ValueError(f"{layer.name} is not built: {how} before loading weights")


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


def load_state_dict(checkpoint):
    """A state_dict from a mapping or a ``.pth`` / ``.pt`` path, read without torch
    (``convert.pth.load_pth``: training-checkpoint wrappers ``{"model": ...}`` unwrapped)."""
    if isinstance(checkpoint, dict):
        return checkpoint
    return load_pth(checkpoint)


def infer_num_classes(state_dict, key, per_anchor=1):
    """K incl. background: the rows of ``state_dict[key]`` (a classifier's weight) divided by
    ``per_anchor`` (dense heads predict K per anchor: YOLACT's ``conf_layer``)."""
    if key not in state_dict:
        raise KeyError(f"missing key in state_dict: {key!r}")
    rows = int(to_numpy(state_dict[key]).shape[0])
    if rows % per_anchor:
        raise ValueError(f"{key} has {rows} rows, not a multiple of {per_anchor} anchors")
    return rows // per_anchor


@contextlib.contextmanager
def naming_file(checkpoint):
    """Re-raises a ``KeyError`` / ``ValueError`` of the block with ``checkpoint``'s path in
    front (unless the message names it already); a mapping (no file) passes errors through."""
    try:
        yield
    except (KeyError, ValueError) as e:
        if isinstance(checkpoint, dict):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if str(checkpoint) in str(message):
            raise
        raise (KeyError if isinstance(e, KeyError) else ValueError)(
            f"{checkpoint}: {message}") from e

