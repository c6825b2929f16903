"""Crafted torch checkpoints (issue 20 item 8): a few hundred bytes must not ask for
gigabytes, and every refusal names the file.

The files are written byte by byte here (pickle opcodes, zip or legacy layout; torch is not
needed), each claiming far more memory than it holds. The reader must refuse each with a
``PthError`` naming the file before allocating: the tests run under an address-space limit of
about 2 GiB above what the process uses already, so an attempted 37 GiB allocation fails the
test with a MemoryError instead of passing by luck (Linux overcommits untouched pages).
The same tests run in tests/convert/test_pth_hostile.py.
"""
import contextlib
import os
import pickle
import resource
import struct
import zipfile

import pytest

from keras_maskrcnn.convert.pth import PthError, load_pth

GIB = 1 << 30


def _p(value):
    """The pickle opcodes of a plain value (protocol 2, without PROTO and STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def tensor_pickle(numel, size, stride, legacy=False):
    """data.pkl of {"weight": float32 tensor of ``size``/``stride`` on storage "0" of ``numel``
    elements}, as ``torch.save`` writes it."""
    pid = (_p("storage") + b"ctorch\nFloatStorage\n" + _p("0") + _p("cpu") + _p(numel)
           + (b"N" if legacy else b""))
    return (b"\x80\x02}" + _p("weight") + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"(" + pid + b"tQ" + _p(0) + _p(tuple(size)) + _p(tuple(stride)) + b"\x89N"
            + b"tRs.")


def zip_checkpoint(path, data_pkl, storage=b"\0\0\0\0"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", storage)
    return str(path)


def legacy_checkpoint(path, data_pkl, count, storage=b"\0\0\0\0"):
    """Legacy layout: magic, protocol, sys info, object, keys, then int64 count + bytes."""
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2),
             pickle.dumps({"little_endian": True}, 2), data_pkl, pickle.dumps(["0"], 2),
             struct.pack("<q", count), storage]
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return str(path)


@contextlib.contextmanager
def memory_limit(extra=2 * GIB):
    """RLIMIT_AS at the current virtual size + ``extra`` while the block runs."""
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(path, match):
    with memory_limit(), pytest.raises(PthError, match=f"^{path}: .*{match}"):
        load_pth(path)


def test_a_541_byte_file_asking_for_37_gib_is_refused(tmp_path):
    """One 4-byte storage viewed as 100000 x 100000 with zero strides: 10^10 float32."""
    path = zip_checkpoint(tmp_path / "expand.pth", tensor_pickle(1, (100000, 100000), (0, 0)))
    assert os.path.getsize(path) < 600
    refused(path, r"size \(100000, 100000\) \(10000000000 elements\) is larger than its "
                  r"storage 0 \(1 elements\)")


def test_storage_larger_than_its_record_is_refused(tmp_path):
    path = zip_checkpoint(tmp_path / "big.pth", tensor_pickle(10 ** 10, (10 ** 10,), (1,)))
    refused(path, "holds 4 bytes, the pickle says 40000000000")


def test_element_count_overflowing_int64_is_refused(tmp_path):
    """2^32 x 2^32 elements wrap to 0 in int64 arithmetic: an empty tensor, allocated huge."""
    path = zip_checkpoint(tmp_path / "wrap.pth",
                          tensor_pickle(1, (1 << 32, 1 << 32), (0, 0)))
    refused(path, "is larger than its storage")


def test_legacy_storage_longer_than_the_file_is_refused(tmp_path):
    pkl = tensor_pickle(10 ** 10, (10,), (1,), legacy=True)
    path = legacy_checkpoint(tmp_path / "legacy.pth", pkl, count=10 ** 10)
    refused(path, "storage 0 is truncated or oversized: it claims 40000000000 bytes but the "
                  "file holds only 4")


def test_legacy_count_disagreeing_with_the_pickle_is_refused(tmp_path):
    pkl = tensor_pickle(1, (1,), (1,), legacy=True)
    path = legacy_checkpoint(tmp_path / "count.pth", pkl, count=10 ** 12)
    refused(path, "storage 0 holds 1000000000000 elements, the pickle says 1")


def test_negative_storage_size_is_refused(tmp_path):
    path = zip_checkpoint(tmp_path / "neg.pth", tensor_pickle(-5, (1,), (1,)))
    refused(path, "negative size -5")


def test_bytearray_of_a_size_in_the_pickle_is_refused(tmp_path):
    pkl = b"\x80\x02}" + _p("x") + b"cbuiltins\nbytearray\n(" + _p(10 ** 11) + b"tRs."
    path = zip_checkpoint(tmp_path / "bytes.pth", pkl)
    refused(path, r"bytearray\(100000000000\)")


def test_deflate_bomb_record_is_refused(tmp_path):
    """A compressed record claiming more than deflate can expand to."""
    path = tmp_path / "deflate.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", tensor_pickle(1, (1,), (1,)))
        z.writestr("archive/data/0", b"\0\0\0\0")
    raw = bytearray(path.read_bytes())
    # central directory entry of data.pkl: uncompressed size at offset 24 of the header
    central = raw.rindex(b"PK\x01\x02", 0, raw.rindex(b"PK\x01\x02"))
    raw[central + 24:central + 28] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(raw))
    refused(str(path), "claims 4294967280 bytes from .* compressed bytes")


def test_every_refusal_names_the_file(tmp_path):
    """Garbage, a truncated zip and a forbidden global: the message starts with the path."""
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02" + os.urandom(64))
    cut = zip_checkpoint(tmp_path / "cut.pth", tensor_pickle(1, (1,), (1,)))
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    evil = zip_checkpoint(tmp_path / "evil.pth", b"\x80\x02cos\nsystem\n(" + _p("true")
                          + b"tR.")
    for path in (str(garbage), cut, evil):
        with pytest.raises(PthError) as error:
            load_pth(path)
        assert str(error.value).startswith(path + ": "), str(error.value)


def test_a_sane_crafted_file_still_loads(tmp_path):
    """The writer above makes real checkpoints: a 2 x 2 view of a 4-element storage."""
    storage = struct.pack("<4f", 1, 2, 3, 4)
    path = zip_checkpoint(tmp_path / "ok.pth", tensor_pickle(4, (2, 2), (1, 2)), storage)
    weight = load_pth(path)["weight"]
    assert weight.tolist() == [[1, 3], [2, 4]]
    legacy = legacy_checkpoint(tmp_path / "ok_legacy.pth",
                               tensor_pickle(4, (2, 2), (2, 1), legacy=True), 4, storage)
    assert load_pth(legacy)["weight"].tolist() == [[1, 2], [3, 4]]

