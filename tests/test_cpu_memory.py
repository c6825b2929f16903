"""keras_maskrcnn.cpu_memory: the lean allocator settings take effect (in a fresh process)."""
import os
import subprocess
import sys

import pytest

from keras_maskrcnn import cpu_memory

PROBE = r"""
import ctypes, os, sys
from keras_maskrcnn import cpu_memory
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))  # glibc raises its dynamic mmap threshold to 8 MiB here
applied = cpu_memory.use_lean_allocator() if sys.argv[1] == "lean" else None
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 << 20)
print(applied, libc.mallinfo2().hblkhd - before >= 2 << 20,
      os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR"), "tensorflow" in sys.modules)
"""


def _probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.split()


@pytest.mark.skipif(cpu_memory._libc() is None, reason="needs glibc (mallopt)")
def test_lean_allocator_mmaps_megabyte_blocks_and_sets_tensorflow_allocator():
    assert _probe("lean") == ["True", "True", "1", "False"]  # no TensorFlow import either
    assert _probe("default") == ["None", "False", "None", "False"]  # glibc kept it in the heap


def test_refuses_once_tensorflow_is_imported(monkeypatch):
    import tensorflow  # noqa: F401  (the suite has it imported anyway)
    monkeypatch.delenv("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", raising=False)
    with pytest.raises(RuntimeError, match="before TensorFlow is imported"):
        cpu_memory.use_lean_allocator()
    assert "TF_ONEDNN_USE_SYSTEM_ALLOCATOR" not in os.environ
