"""PyTorch ``.pth`` / ``.pt`` checkpoints read without torch: weight import (issue 14).

The pretrained weights of the paper's models come as torch checkpoints; this reader returns the
tensors they hold as numpy arrays, equal byte for byte to ``torch.load(path,
weights_only=True)`` followed by ``.numpy()``, so converting needs numpy only.

Formats (facts from torch's ``serialization.py`` / ``_utils.py``, torch 2.x):
- zip (torch >= 1.6 default): ``<root>/data.pkl`` (pickle protocol 2), ``<root>/data/<key>`` raw
  storages, ``<root>/byteorder`` ("little" or "big"; absent = little, as torch assumes). The
  pickle names storages by persistent ids ``("storage", storage_type, key, location, numel)``
  (numel in elements; in bytes for ``UntypedStorage``) and rebuilds tensors with
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
  metadata])`` (``_rebuild_tensor_v3`` adds a dtype after ``hooks`` for uint16/32/64 on an
  ``UntypedStorage``; ``_rebuild_parameter[_with_state]`` wraps a tensor; ``metadata`` may set
  the lazy ``neg`` / ``conj`` bits, applied here as torch's ``resolve_neg`` / ``resolve_conj``).
- legacy (``_use_new_zipfile_serialization=False``): pickles of the magic number, the protocol
  version (1001) and system info, the object (persistent ids carry a 5th field, a storage view
  ``(view_key, offset, numel)`` or None), the list of storage keys, then for each key an int64
  little-endian element count and the storage bytes (always little-endian). The older tar
  format is refused.

Conventions:
- Unpickling is restricted (``_ALLOWED``): tensor rebuild functions, storage types, torch dtypes,
  ``collections.OrderedDict``, ``torch.Size`` / ``torch.device`` (as tuple / str), a few
  builtins, and ``argparse.Namespace`` (as a plain attribute holder: torchvision's reference
  scripts store their arguments in training checkpoints). Any other global is refused with its
  name and the file's; nothing in the file is ever executed.
- Sizes are checked against the file before anything is allocated: a storage larger than the
  bytes the file holds for it, a tensor reading past its storage, an expanded tensor of more
  than ``_MAX_EXPANDED_ELEMENTS`` elements beyond its storage, a record stated larger than
  deflate can expand, or ``bytearray(n)`` in the pickle are refused (``PthError``, naming the
  file).
- Every tensor comes back as a C-contiguous, native-endian, writable array that shares memory
  with no other result (tensors sharing a storage are copied out of it); a tensor pickled once
  and referenced twice (tied weights) is one array, as in torch.
- bfloat16 (numpy has no such dtype) comes back as float32, exactly (bits << 16).
- Each storage is read from disk once, straight into the buffer of its array (torch writes the
  records uncompressed), and checked against the record's CRC.

Shapes: a tensor of ``size`` (d0, ..., dn) -> ndarray of shape (d0, ..., dn); 0-d stays 0-d.
"""
import argparse
import collections
import io
import math
import os
import struct
import zipfile
import zlib

import numpy as np

from keras_maskrcnn.convert.unpickler import CheckpointError, RestrictedUnpickler, unpickle

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_BF16 = "bfloat16"
# An expanded tensor (zero / overlapping strides, e.g. ``x.expand``) is copied out with more
# elements than its storage; beyond this many, a few bytes of file would ask for gigabytes.
_MAX_EXPANDED_ELEMENTS = 1 << 24

# torch dtype name -> numpy dtype ("<": the file's little-endian layout). Others (float8,
# quantized) are refused by ``find_class``.
_DTYPES = {
    "float64": "<f8", "double": "<f8", "float32": "<f4", "float": "<f4", "float16": "<f2",
    "half": "<f2", "bfloat16": _BF16, "int64": "<i8", "long": "<i8", "int32": "<i4",
    "int": "<i4", "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "complex64": "<c8", "cfloat": "<c8",
    "complex128": "<c16", "cdouble": "<c16",
}
_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}


class PthError(CheckpointError):
    """A checkpoint this reader refuses: not a torch file, corrupt, oversized or holding code."""


class Namespace(argparse.Namespace):
    """``argparse.Namespace`` rebuilt from a checkpoint (attributes only)."""


class _Dtype:
    """A torch dtype (a storage type or a ``torch.<dtype>`` global) as a numpy layout."""

    def __init__(self, name):
        self.name, self.layout = name, _DTYPES[name]

    def numpy(self, byteorder="little"):
        """The dtype of the bytes in the file (bfloat16 as its uint16 bits)."""
        dtype = np.dtype("<u2" if self.layout == _BF16 else self.layout)
        return dtype.newbyteorder(">") if byteorder == "big" else dtype


class _StorageRef:
    """A storage the pickle names; ``view`` = (offset, numel) inside it (legacy views)."""

    def __init__(self, key, dtype, numel, view=None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class _PendingTensor:
    """A rebuilt tensor whose bytes are read after unpickling (see ``_resolve``)."""

    def __init__(self, storage, offset, size, stride, dtype=None, metadata=None):
        if not isinstance(storage, _StorageRef):
            raise PthError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(map(int, size)), tuple(map(int, stride))
        self.dtype = dtype or storage.dtype
        self.metadata = dict(metadata or {})


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    return _PendingTensor(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    return _PendingTensor(storage, storage_offset, size, stride, dtype=dtype, metadata=metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    return data  # a Parameter is its tensor here; python attributes (state) are dropped


def _bytearray(source=b"", *args):
    """``bytearray`` of bytes or text only: ``bytearray(n)`` would allocate n bytes."""
    if isinstance(source, int):
        raise PthError(f"bytearray({source}) in the pickle (a size, not bytes)")
    return bytearray(source, *args)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("torch", "device"): lambda kind, index=None: kind if index is None else f"{kind}:{index}",
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex, ("builtins", "bytearray"): _bytearray,
    ("argparse", "Namespace"): Namespace,
}
_ALLOWED.update({(m, s): _Dtype(d) for m in ("torch", "torch.cuda", "torch.storage")
                 for s, d in _STORAGES.items()})
_ALLOWED.update({("torch", d): _Dtype(d) for d in _DTYPES})


_REFUSAL_HINT = ("only tensors, storages and plain containers are read; re-save the model's "
                 "state_dict")


class _StorageTable:
    """``persistent_load`` of a torch pickle: storages become ``_StorageRef``s, kept by key."""

    def __init__(self, path, legacy):
        self.path, self.legacy, self.storages = path, legacy, {}

    def __call__(self, pid):
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise PthError(f"{self.path}: holds a pickled nn.Module; re-save model.state_dict()")
        if kind != "storage" or len(pid) != (6 if self.legacy else 5):
            raise PthError(f"{self.path}: unknown persistent id {pid[:1]!r}")
        dtype, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(dtype, _Dtype):
            raise PthError(f"{self.path}: storage {key} has no storage type ({dtype!r})")
        if numel < 0:
            raise PthError(f"{self.path}: storage {key} has a negative size {numel}")
        root = self.storages.setdefault(key, _StorageRef(key, dtype, numel))
        view = pid[5] if self.legacy else None
        if view is None:
            return root
        offset, count = int(view[1]), int(view[2])
        if offset < 0 or count < 0:
            raise PthError(f"{self.path}: storage view {view[0]} of {key} has a negative "
                           f"offset or size ({offset}, {count})")
        return _StorageRef(key, dtype, count, view=(offset, count))


def _unpickler(file, path, legacy=False):
    """The restricted unpickler (``convert.unpickler``) of a torch pickle; ``.storages`` maps
    storage keys to the ``_StorageRef``s it met."""
    table = _StorageTable(path, legacy)
    unpickler = RestrictedUnpickler(file, path, _ALLOWED, encoding="utf-8",
                                    persistent_load=table, error=PthError, hint=_REFUSAL_HINT)
    unpickler.storages = table.storages
    return unpickler


def read_pth(path):
    """The object a checkpoint holds, with every tensor as a numpy array (see the module doc)."""
    with open(path, "rb") as f:
        head = f.read(512)
        f.seek(0)
        if head[:4] == b"PK\x03\x04":
            return _read_zip(f, path)
        if len(head) > 262 and head[257:262] == b"ustar":
            raise PthError(f"{path}: legacy torch tar format: re-save it with "
                           "torch >= 1.6 (torch.save(torch.load(path), new_path))")
        if head[:1] == b"\x80":
            return _read_legacy(f, path)
    raise PthError(f"{path}: not a torch checkpoint (neither a zip archive nor a torch pickle)")


def load_pth(path):
    """``{name: ndarray}``: the state_dict of a ``.pth`` / ``.pt`` checkpoint, without torch.

    Training checkpoints are unwrapped: while the object is a mapping whose ``"model"`` (else
    ``"state_dict"``) entry is a mapping, that entry is taken. In the state_dict, entries whose
    value is a number, a string, a bool or None are dropped (they are not weights); any other
    non-tensor value is an error naming its key. ``num_batches_tracked`` buffers stay; bfloat16
    tensors come back as float32 (exact). Raises ``PthError`` naming the file when it refuses.
    """
    state = read_pth(path)
    while isinstance(state, dict):
        inner = next((state[k] for k in ("model", "state_dict")
                      if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise PthError(f"{path}: expected a state_dict, got {type(state).__name__}")
    weights = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            weights[name] = value
        elif not (value is None or isinstance(value, (bool, int, float, str))):
            raise PthError(f"{path}: entry {name!r} holds a {type(value).__name__}, not a tensor "
                           "(a state_dict wrapped under an unknown key?)")
    return weights


def _read_zip(f, path):
    try:
        archive = zipfile.ZipFile(f)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PthError(f"{path}: truncated or corrupt zip archive ({e})") from None
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pickles:
        kind = "a TorchScript archive" if any(n.endswith("constants.pkl") for n in names) \
            else "a zip archive without data.pkl"
        raise PthError(f"{path}: {kind}, not a torch.save checkpoint")
    root = pickles[0][:-len("data.pkl")]
    byteorder = "little"  # torch's default for archives without the record
    if root + "byteorder" in names:
        byteorder = _zip_read(archive, root + "byteorder", path).decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise PthError(f"{path}: unknown byteorder record {byteorder!r}")
    _check_record_size(archive.getinfo(pickles[0]), path)
    unpickler = _unpickler(io.BytesIO(_zip_read(archive, pickles[0], path)), path)
    obj = _unpickle(unpickler, path)
    buffers = {}
    for key, ref in unpickler.storages.items():
        nbytes = ref.numel * ref.dtype.numpy().itemsize
        buffers[key] = _zip_record(f, archive, f"{root}data/{key}", nbytes, path)
    return _resolve(obj, _Buffers(buffers, byteorder, path))


# deflate expands at most 1032:1; a larger ratio is a lie or a bomb
_MAX_DEFLATE_RATIO = 1032


def _check_record_size(info, path):
    """Refuses a record whose stated size its stored bytes cannot hold (before reading it)."""
    if info.compress_type == zipfile.ZIP_STORED:
        return
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise PthError(f"{path}: {info.filename} uses zip compression {info.compress_type}; "
                       "torch writes records uncompressed")
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 64:
        raise PthError(f"{path}: {info.filename} claims {info.file_size} bytes from "
                       f"{info.compress_size} compressed bytes (more than deflate can expand)")


def _zip_read(archive, name, path):
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise PthError(f"{path}: {name} is truncated or corrupt ({e})") from None


def _zip_record(f, archive, name, nbytes, path):
    """The bytes of one record as a writable uint8 array, read once."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise PthError(f"{path}: storage record {name} is missing") from None
    if info.file_size != nbytes:
        raise PthError(f"{path}: {name} holds {info.file_size} bytes, the pickle says {nbytes}")
    if info.compress_type != zipfile.ZIP_STORED:
        _check_record_size(info, path)
        return np.frombuffer(_zip_read(archive, name, path), np.uint8).copy()
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise PthError(f"{path}: bad zip local header for {name}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    _check_fits(f, start, nbytes, name, path)
    f.seek(start)
    raw = np.empty(nbytes, np.uint8)
    if f.readinto(memoryview(raw)) != nbytes or zlib.crc32(raw) != info.CRC:
        raise PthError(f"{path}: {name} is truncated or corrupt (size or CRC mismatch)")
    return raw


def _check_fits(f, start, nbytes, name, path):
    """Refuses ``nbytes`` of ``name`` from ``start`` when the file is shorter (before any
    allocation: a few hundred bytes must not ask for gigabytes)."""
    size = os.fstat(f.fileno()).st_size
    if start + nbytes > size:
        raise PthError(f"{path}: {name} is truncated or oversized: it claims {nbytes} bytes "
                       f"but the file holds only {max(size - start, 0)} from there ({size} "
                       "bytes in all)")


def _read_legacy(f, path):
    try:
        magic, protocol, sys_info = (_unpickler(f, path).load() for _ in range(3))
    except Exception as e:
        raise PthError(f"{path}: not a torch checkpoint ({type(e).__name__}: {e})") from None
    if magic != MAGIC_NUMBER or protocol != PROTOCOL_VERSION:
        raise PthError(f"{path}: bad magic number or protocol ({magic!r}, {protocol!r})")
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise PthError(f"{path}: legacy checkpoint from a big-endian machine: re-save it with "
                       "torch >= 1.6 (zip format)")
    unpickler = _unpickler(f, path, legacy=True)
    obj = _unpickle(unpickler, path)
    keys = _unpickle(_unpickler(f, path), path)
    buffers = {}
    for key in keys:
        ref = unpickler.storages.get(str(key))
        count = f.read(8)
        if ref is None or len(count) != 8:
            raise PthError(f"{path}: storage {key} is unknown or truncated")
        numel, = struct.unpack("<q", count)
        if numel != ref.numel:
            raise PthError(f"{path}: storage {key} holds {numel} elements, the pickle says "
                           f"{ref.numel}")
        dtype = ref.dtype.numpy()
        _check_fits(f, f.tell(), numel * dtype.itemsize, f"storage {key}", path)
        raw = np.empty(numel * dtype.itemsize, np.uint8)
        if f.readinto(memoryview(raw)) != raw.size:
            raise PthError(f"{path}: storage {key} is truncated or has the wrong size")
        buffers[str(key)] = raw
    return _resolve(obj, _Buffers(buffers, "little", path))


def _unpickle(unpickler, path):
    return unpickle(unpickler, PthError)


class _Buffers:
    """The raw bytes of every storage (uint8 arrays), their byte order, the storages handed over."""

    def __init__(self, raw, byteorder, path):
        self.raw, self.byteorder, self.path, self.claimed = raw, byteorder, path, set()

    def typed(self, ref, dtype):
        """The storage of ``ref`` as a 1-D array of ``dtype`` (a ``_Dtype``), file byte order."""
        layout = dtype.numpy(self.byteorder)
        raw = self.raw.get(ref.key)
        if raw is None:
            raise PthError(f"{self.path}: storage {ref.key} is referenced but not stored")
        if raw.size % layout.itemsize:
            raise PthError(f"{self.path}: storage {ref.key} is not a whole number of "
                           f"{dtype.name}")
        typed = raw.view(layout)
        return typed if ref.view is None else typed[ref.view[0]:ref.view[0] + ref.view[1]]


def _resolve(obj, buffers, memo=None):
    """``obj`` with every ``_PendingTensor`` replaced by its array (containers rebuilt)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _PendingTensor):
        out = _materialize(obj, buffers)
    elif isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        for key, value in obj.items():
            out[key] = _resolve(value, buffers, memo)
        if getattr(obj, "__dict__", None):
            out.__dict__.update(obj.__dict__)  # e.g. a state_dict's _metadata
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(_resolve(v, buffers, memo) for v in obj)
    elif isinstance(obj, Namespace):
        out = Namespace(**{k: _resolve(v, buffers, memo) for k, v in vars(obj).items()})
    else:
        return obj
    memo[id(obj)] = out
    return out


def _materialize(t, buffers):
    """The array of one tensor: bounds-checked strided view of its storage, copied out."""
    path, ref = buffers.path, t.storage
    storage = buffers.typed(ref, t.dtype)  # _rebuild_tensor_v3: untyped bytes as ``t.dtype``
    size, stride, offset = t.size, t.stride, t.offset
    if len(size) != len(stride) or min(size + stride, default=0) < 0 or offset < 0:
        raise PthError(f"{path}: bad size/stride/offset {size}/{stride}/{offset}")
    numel = math.prod(size)  # Python ints: no overflow
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if numel and last >= storage.size:
        raise PthError(f"{path}: a tensor of storage {ref.key} reads past its end")
    if numel > max(storage.size, _MAX_EXPANDED_ELEMENTS):  # overlapping (e.g. zero) strides
        raise PthError(f"{path}: a tensor of size {size} ({numel} elements) is larger than its "
                       f"storage {ref.key} ({storage.size} elements) beyond the "
                       f"{_MAX_EXPANDED_ELEMENTS} elements allowed for an expanded tensor")
    plain = not t.metadata and t.dtype.layout != _BF16 and storage.dtype.isnative
    if (plain and numel == storage.size and offset == 0 and stride == _contiguous_strides(size)
            and ref.view is None and ref.key not in buffers.claimed):
        buffers.claimed.add(ref.key)  # the tensor is its whole storage: hand the buffer over
        array = storage.reshape(size)
    elif numel == 0:
        array = np.empty(size, storage.dtype.newbyteorder("="))
    else:
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                               strides=[s * itemsize for s in stride])
        array = np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")
    if t.dtype.layout == _BF16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return _apply_metadata(array, t.metadata, path)


def _contiguous_strides(size):
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _apply_metadata(array, metadata, path):
    unknown = set(metadata) - {"neg", "conj"}
    if unknown:
        raise PthError(f"{path}: unknown tensor metadata {sorted(unknown)}")
    if metadata.get("conj"):
        np.conjugate(array, out=array)
    if metadata.get("neg"):
        np.negative(array, out=array)
    return array
