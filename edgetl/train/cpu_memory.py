"""Keep freed training memory in the process, so a CPU training step does not page-fault.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it to the kernel on ``free``. A training step of a depthwise network allocates activations
and gradients of that size by the dozen (an expanded stride-2 block of EfficientNet-Lite0 at 256 px
and batch 16 is 100 MB), so every step maps them again, and the kernel zeroes each new page on first
touch: on the shapes detector that was 650 000 minor page faults and as much system CPU time as
user time per step. With mmap off for the heap and trimming raised, freed blocks are reused by the
next step (the same sizes recur), and system time falls to a few percent
(``benchmarks/train_throughput.py`` measures both).

This is the in-process form of the advice to run PyTorch CPU training with jemalloc or tcmalloc;
it changes nothing on other C libraries, and only the training commands call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30
_applied = False


def keep_freed_memory() -> bool:
    """Turn off glibc's per-allocation mmap and raise its trim threshold; True when applied.

    Idempotent; a no-op (False) off Linux or on a C library without ``mallopt``.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if ok:
        _applied = True
        log.debug("glibc: mmap off for the heap, trim threshold %d bytes", _TRIM_THRESHOLD)
    return ok
