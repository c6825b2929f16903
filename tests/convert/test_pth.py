"""``convert/pth.py``: torch checkpoints read without torch, byte for byte as ``torch.load``.

The checkpoints are written here with torch; one child process in which importing torch fails
reads them all with ``load_pth`` and the parent compares with torch's own load.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import keras_maskrcnn
from keras_maskrcnn.convert.pth import PthError, load_pth, read_pth

_CHILD = r"""
import json, os, sys
sys.modules["torch"] = None  # from here on, importing torch fails
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch is importable in the child")
import numpy as np
from keras_maskrcnn.convert.pth import load_pth, read_pth

out, facts = sys.argv[1], {}
for path in sys.argv[2:]:
    name = os.path.basename(path)
    weights = load_pth(path)
    np.savez(os.path.join(out, name + ".npz"), **weights)
    arrays = list(weights.items())
    facts[name] = {
        "keys": list(weights),
        "owned": all(a.flags.c_contiguous and a.flags.writeable for _, a in arrays),
        "shared": [[k, j] for i, (k, a) in enumerate(arrays) for j, b in arrays[i + 1:]
                   if a is not b and np.shares_memory(a, b)],
        "same": [[k, j] for i, (k, a) in enumerate(arrays) for j, b in arrays[i + 1:] if a is b],
    }
    if name.startswith("wrapped"):
        raw = read_pth(path)
        facts[name]["epoch"], facts[name]["lr"] = raw["epoch"], raw["args"].lr
assert sys.modules["torch"] is None and "torch._C" not in sys.modules
json.dump(facts, open(os.path.join(out, "facts.json"), "w"))
"""


def _numpy(tensor):
    """What torch's load gives, as numpy (bfloat16 -> float32, lazy neg/conj resolved)."""
    import torch
    tensor = tensor.detach().resolve_neg().resolve_conj()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _dtype_tensors(torch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    return collections.OrderedDict(
        float32=x, float16=x.half(), bfloat16=x.bfloat16(), float64=x.double(),
        int64=torch.arange(-4, 8).reshape(3, 4), int32=torch.arange(5, dtype=torch.int32),
        int16=torch.arange(-3, 3, dtype=torch.int16), int8=torch.arange(-3, 3, dtype=torch.int8),
        uint8=torch.arange(250, 256, dtype=torch.uint8), bool=x > 0,
        complex64=torch.complex(x, -x))


def _view_tensors(torch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tied = torch.linspace(-1, 1, 7)
    return {"base": base, "transposed": base.t(), "sliced": base[1:3, 2:5],
            "strided": base[::2, ::3], "row": base[2], "shared_a": base.view(-1)[5:11],
            "alias": base.view(-1),  # a second tensor spanning the whole storage
            "scalar": torch.tensor(2.5), "scalar_int": torch.tensor(7),
            "empty": torch.zeros(0, 3), "empty_view": base[:, 6:], "tied": tied, "tied2": tied,
            "expanded": torch.ones(1, 3).expand(4, 3),
            "neg": torch._neg_view(torch.arange(3.0)),
            "conj": torch.complex(torch.ones(2), torch.arange(2.0)).conj(),
            "uint16": torch.arange(5).to(torch.uint16)}


def _resnet18(torch, torchvision):
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _as_big_endian(src, dst, itemsizes):
    """``src`` rewritten as a big-endian checkpoint (storage ``i`` has ``itemsizes[i]``)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data, rest = zin.read(info), info.filename.partition("/")[2]
            if rest == "byteorder":
                data = b"big"
            elif rest.startswith("data/") and itemsizes[int(rest[5:])] > 1:
                data = np.frombuffer(data, f"<u{itemsizes[int(rest[5:])]}").byteswap().tobytes()
            zout.writestr(info.filename, data)


def _write_checkpoints(torch, torchvision, tmp):
    """{file name: the key its state_dict sits under, or None}; the files written in ``tmp``."""
    dtypes, views = _dtype_tensors(torch), _view_tensors(torch)
    resnet = _resnet18(torch, torchvision)
    torch.save(dtypes, tmp / "dtypes.pth")
    torch.save(views, tmp / "views.pt")
    torch.save(resnet, tmp / "resnet18.pth")
    torch.save(dtypes, tmp / "legacy_dtypes.pth", _use_new_zipfile_serialization=False)
    legacy_views = {k: v for k, v in views.items() if k != "uint16"}  # torch's legacy load fails
    torch.save(legacy_views, tmp / "legacy_views.pth", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": resnet, "hyper": {"lr": 0.1}}, tmp / "state_dict_wrapper.pth")
    big = {k: v for k, v in dtypes.items() if k != "complex64"}
    torch.save(big, tmp / "little.pth")
    _as_big_endian(tmp / "little.pth", tmp / "big_endian.pth",
                   [v.element_size() for v in big.values()])
    swapped = torch.load(tmp / "big_endian.pth", weights_only=True)  # torch swaps it back
    assert all(torch.equal(swapped[k], v) for k, v in big.items())
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # momentum buffers: tensors outside the state_dict
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
                "args": argparse.Namespace(lr=0.02, data_path="/coco")},  # torchvision's layout
               tmp / "wrapped.pth")
    return {"dtypes.pth": None, "views.pt": None, "resnet18.pth": None,
            "legacy_dtypes.pth": None, "legacy_views.pth": None, "big_endian.pth": None,
            "state_dict_wrapper.pth": "state_dict", "wrapped.pth": "model"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{file: (torch's own load of it, what the torch-less child read, the child's facts)}."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    tmp = tmp_path_factory.mktemp("pth")
    files = _write_checkpoints(torch, torchvision, tmp)
    out = tmp / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(keras_maskrcnn.__file__)))
    subprocess.run([sys.executable, "-c", _CHILD, str(out), *(str(tmp / n) for n in files)],
                   check=True, env=env, timeout=300)
    facts = json.loads((out / "facts.json").read_text())
    result = {}
    for name, key in files.items():  # argparse.Namespace needs torch's unrestricted load
        expected = torch.load(tmp / name, weights_only=name != "wrapped.pth")
        result[name] = (expected if key is None else expected[key],
                        dict(np.load(out / f"{name}.npz")), facts[name])
    return result


def _check_same(case, converted):
    reference, read, facts = converted[case]
    assert facts["keys"] == list(reference)  # every tensor, in the checkpoint's order
    assert facts["owned"] and facts["shared"] == []
    for key, tensor in reference.items():
        want, got = _numpy(tensor), read[key]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        assert got.tobytes() == want.tobytes(), key


@pytest.mark.parametrize("case", ["dtypes.pth", "legacy_dtypes.pth"])
def test_dtypes_match_torch_bytes(converted, case):
    _check_same(case, converted)
    read = converted[case][1]
    assert read["bfloat16"].dtype == np.float32 and read["float16"].dtype == np.float16


@pytest.mark.parametrize("case", ["views.pt", "legacy_views.pth"])
def test_views_offsets_shared_storage_0d_empty(converted, case):
    _check_same(case, converted)
    read, facts = converted[case][1:]
    assert read["scalar"].shape == () and read["empty"].shape == (0, 3)
    assert facts["same"] == [["tied", "tied2"]]  # one tensor pickled twice stays one array


def test_resnet18_state_dict(converted):
    _check_same("resnet18.pth", converted)
    assert converted["resnet18.pth"][1]["bn1.num_batches_tracked"].dtype == np.int64


def test_big_endian_byteswapped(converted):
    _check_same("big_endian.pth", converted)


@pytest.mark.parametrize("case", ["wrapped.pth", "state_dict_wrapper.pth"])
def test_training_checkpoint_unwrapped(converted, case):
    _check_same(case, converted)
    if case == "wrapped.pth":
        assert converted[case][2]["epoch"] == 3 and converted[case][2]["lr"] == 0.02


def _forbidden_pickle(marker):
    """A protocol-2 pickle calling ``os.system("touch marker")``."""
    command = f"touch {marker}".encode()
    return (b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command
            + b"\x85R.")


@pytest.mark.parametrize("legacy", [False, True])
def test_forbidden_global_refused(tmp_path, legacy):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    evil = _forbidden_pickle(marker)
    if legacy:  # magic number, protocol version, sys info, then the object
        import pickle
        path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (
            0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})) + evil)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("evil/data.pkl", evil)
            z.writestr("evil/byteorder", "little")
    with pytest.raises(PthError, match=r"evil\.pth.*global os\.system"):
        load_pth(path)
    assert not marker.exists()


def test_truncated_and_corrupt_files_named(tmp_path, torch):
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, whole)
    data = whole.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(PthError, match=r"cut\.pth: truncated or corrupt zip"):
        load_pth(tmp_path / "cut.pth")
    start = data.index(np.arange(1000, dtype="<f4")[500:504].tobytes())
    flipped = data[:start] + b"\xff" + data[start + 1:]
    (tmp_path / "flipped.pth").write_bytes(flipped)
    with pytest.raises(PthError, match=r"flipped\.pth: .*CRC"):
        load_pth(tmp_path / "flipped.pth")
    torch.save({"w": torch.arange(1000.0)}, tmp_path / "old.pth",
               _use_new_zipfile_serialization=False)
    old = (tmp_path / "old.pth").read_bytes()
    (tmp_path / "old_cut.pth").write_bytes(old[:len(old) - 100])
    with pytest.raises(PthError, match=r"old_cut\.pth: storage .* truncated"):
        load_pth(tmp_path / "old_cut.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(PthError, match=r"text\.pth: not a torch checkpoint"):
        read_pth(tmp_path / "text.pth")


def test_unknown_byteorder_and_wrapper_refused(tmp_path, torch):
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pth")
    with zipfile.ZipFile(tmp_path / "a.pth") as zin, zipfile.ZipFile(tmp_path / "b.pth", "w") as z:
        for info in zin.infolist():
            odd = info.filename.endswith("/byteorder")
            z.writestr(info.filename, b"middle" if odd else zin.read(info))
    with pytest.raises(PthError, match=r"b\.pth: unknown byteorder"):
        load_pth(tmp_path / "b.pth")
    torch.save({"net": {"w": torch.ones(2)}, "epoch": 1}, tmp_path / "c.pth")
    with pytest.raises(PthError, match=r"c\.pth: entry 'net' holds a dict"):
        load_pth(tmp_path / "c.pth")
