"""Process-wide allocator settings for training on a CPU: less peak memory, some speed.

TensorFlow's oneDNN kernels (on in ``train.py``) allocate tensors from a BFC pool that grows by
doubling regions and never shrinks: the resident memory of a training process is the pool's
high-water mark plus its slack, not the live tensors. ``use_lean_allocator`` hands tensor
memory to glibc's malloc instead (``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1``) and makes every block
of 1 MiB or more its own mmap, returned to the system when freed (``mallopt
(M_MMAP_THRESHOLD)``; glibc otherwise raises that threshold up to 32 MiB at run time and keeps
freed heap memory). Resident memory then follows the live tensors. The price is a page fault
per fresh 4 KiB page: measured on a 2-core CPU, a Mask R-CNN R50-FPN training step at 512x768
took ~20 % longer and peaked ~400 MiB lower (README, performance). It does nothing for GPU
memory. Importing this module does not import TensorFlow.
"""
import ctypes
import ctypes.util
import os
import sys

#: glibc's ``mallopt`` parameter number of M_MMAP_THRESHOLD (malloc.h).
M_MMAP_THRESHOLD = -3
#: Blocks of at least this many bytes are mmapped (and unmapped when freed).
LEAN_MMAP_THRESHOLD = 1 << 20


def _libc():
    """The C library when it is glibc (has ``mallopt``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def use_lean_allocator():
    """Lean allocator settings for this process; call before TensorFlow is imported.

    Returns:
        True when glibc took the mmap threshold; False on another C library (only the
        TensorFlow setting applies then).

    Raises:
        RuntimeError: TensorFlow is already imported (its allocator is chosen at import).
    """
    if "tensorflow" in sys.modules:
        raise RuntimeError("use_lean_allocator() must run before TensorFlow is imported "
                           "(its CPU allocator is chosen then)")
    os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = "1"
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD) == 1)
