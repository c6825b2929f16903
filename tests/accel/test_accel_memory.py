"""keras_maskrcnn.accel.memory: the lean allocator settings take effect (in a fresh process)."""
import os
import subprocess
import sys

import pytest

from keras_maskrcnn.accel import memory

PROBE = r"""
import ctypes, os, sys
from keras_maskrcnn.accel import memory
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))  # glibc raises its dynamic mmap threshold to 8 MiB here
applied = memory.use_lean_allocator() if sys.argv[1] == "lean" else None
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 << 20)
print(applied, libc.mallinfo2().hblkhd - before >= 2 << 20,
      os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR"), "tensorflow" in sys.modules)
"""


def _probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.split()


@pytest.mark.skipif(memory._libc() is None, reason="needs glibc (mallopt)")
def test_lean_allocator_mmaps_megabyte_blocks_and_sets_tensorflow_allocator():
    assert _probe("lean") == ["True", "True", "1", "False"]  # no TensorFlow import either
    assert _probe("default") == ["None", "False", "None", "False"]  # glibc kept it in the heap


def test_refuses_once_tensorflow_is_imported(monkeypatch):
    import tensorflow  # noqa: F401  (the suite has it imported anyway)
    monkeypatch.delenv("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", raising=False)
    with pytest.raises(RuntimeError, match="before TensorFlow is imported"):
        memory.use_lean_allocator()
    assert "TF_ONEDNN_USE_SYSTEM_ALLOCATOR" not in os.environ


def test_environment_with_huge_pages_adds_the_tunable_once():
    add = memory.environment_with_huge_pages
    assert add({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert add({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "X": "1"}
    kept = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}  # the user's own choice wins
    assert add(kept) == kept


RESTART = r"""
import os
from keras_maskrcnn.accel import memory
print("start", os.environ.get("GLIBC_TUNABLES"), flush=True)
memory.restart_with_huge_pages()
print("after", os.environ.get("GLIBC_TUNABLES"))
"""

FAULTS = r"""
import ctypes, resource
from keras_maskrcnn.accel import memory
memory.use_lean_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
libc.memset(libc.malloc(64 << 20), 1, 64 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(code, env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, env=env).stdout.split()


@pytest.mark.skipif(memory._libc() is None or not memory._transparent_huge_pages(),
                    reason="needs glibc and transparent huge pages (not [never])")
def test_restart_with_huge_pages_reexecutes_once_and_cuts_page_faults():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert _run(RESTART, env) == ["start", "None", "start", "glibc.malloc.hugetlb=1",
                                  "after", "glibc.malloc.hugetlb=1"]
    # the effect: touching a fresh 64 MiB mmap costs 16384 faults with 4 KiB pages
    plain = int(_run(FAULTS, env)[0])
    huge = int(_run(FAULTS, memory.environment_with_huge_pages(env))[0])
    assert plain >= 16384 and huge < plain // 4, (plain, huge)


TRIM = r"""
import ctypes
from keras_maskrcnn.accel import memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
blocks = [libc.malloc(64 << 10) for _ in range(2000)]  # 125 MiB of heap blocks (< threshold)
for b in blocks:
    libc.memset(b, 1, 64 << 10)
keep = libc.malloc(64)  # above them all: the heap's top cannot shrink on free
for b in blocks:
    libc.free(b)
before = rss_mib()
released = memory.release_free_memory()
print(released, round(before - rss_mib()))
"""


@pytest.mark.skipif(memory._libc() is None, reason="needs glibc (malloc_trim)")
def test_release_free_memory_returns_freed_heap_pages():
    released, dropped = _run(TRIM, dict(os.environ))
    assert released == "True" and int(dropped) > 100, (released, dropped)  # of 125 MiB freed


def test_lean_allocator_in_use_reads_the_tensorflow_setting(monkeypatch):
    monkeypatch.setenv("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    assert memory.lean_allocator_in_use()
    monkeypatch.delenv("TF_ONEDNN_USE_SYSTEM_ALLOCATOR")
    assert not memory.lean_allocator_in_use()
