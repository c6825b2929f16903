"""Process-wide allocator settings for training on a CPU: less peak memory, some speed.

Not a step of the method (``keras_maskrcnn.accel``; ``train.py --low-memory``). Nothing here
concerns GPU memory. Importing this module does not import TensorFlow.

TensorFlow's oneDNN kernels allocate tensors from a BFC pool that grows by doubling regions and
never shrinks: the resident memory of a training process is the pool's high-water mark plus
its slack, not the live tensors. ``use_lean_allocator`` hands tensor memory to glibc's malloc
instead (``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1``) and makes every block of at least
``LEAN_MMAP_THRESHOLD`` bytes its own mmap, returned to the system when freed (``mallopt
(M_MMAP_THRESHOLD)``; glibc otherwise raises that threshold at run time and keeps freed heap
memory). Resident memory then follows the live tensors. The price is a page fault per fresh
page, and the step is slower with small pages. ``restart_with_huge_pages`` re-executes the
process with glibc's ``glibc.malloc.hugetlb=1`` tunable (read only at process start), which
advises transparent huge pages for those mmaps: one fault per huge page. The step stays
slower than with oneDNN's pool (bench/README.md, "Measurements behind the CPU kernels").
``train.py --low-memory`` does both.
"""
import ctypes
import ctypes.util
import os
import sys

#: glibc's ``mallopt`` parameter number of M_MMAP_THRESHOLD (malloc.h).
M_MMAP_THRESHOLD = -3
#: Blocks of at least this many bytes are mmapped (and unmapped when freed).
LEAN_MMAP_THRESHOLD = 1 << 20
#: glibc (>= 2.35) tunable: madvise(MADV_HUGEPAGE) on malloc's mmaps; older glibc ignores it.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


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


def lean_allocator_in_use():
    """True when this process' TensorFlow allocates from malloc (``use_lean_allocator``)."""
    return os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR") == "1"


def release_free_memory():
    """``malloc_trim(0)``: glibc returns the free pages inside its heaps to the system.

    Blocks under the mmap threshold live in malloc's heaps, and a freed one stays resident
    until reused: without a trim the lean-mode training peak grew step by step (figures in
    bench/README.md). ``accel.callbacks.ReleaseFreeMemory`` calls it after each step.

    Returns:
        True when glibc released memory; False otherwise (or on another C library).
    """
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))


def environment_with_huge_pages(environ=None):
    """A copy of ``environ`` (default ``os.environ``) with ``HUGE_PAGES_TUNABLE`` added to
    ``GLIBC_TUNABLES`` (colon-separated; a hugetlb setting already there is kept)."""
    env = dict(os.environ if environ is None else environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
        env["GLIBC_TUNABLES"] = ":".join(tunables + [HUGE_PAGES_TUNABLE])
    return env


def restart_with_huge_pages():
    """Re-executes this process' command line with ``environment_with_huge_pages()``.

    Returns (does nothing) when the environment already has a hugetlb tunable, so the
    restarted process goes on; does not return otherwise. Also returns on a C library other
    than glibc, or when the kernel has transparent huge pages off. For a command-line entry
    point, before any work: a notebook's kernel cannot be restarted this way.
    """
    env = environment_with_huge_pages()
    if env == dict(os.environ) or _libc() is None or not _transparent_huge_pages():
        return
    print(f"restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} (transparent huge pages "
          "for malloc's mmaps)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def _transparent_huge_pages():
    """True unless the kernel reports transparent huge pages as "[never]" (or has none)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False
