"""What this machine's CPU means for INT8 numerics: do ONNX Runtime's 8-bit kernels saturate here?

On x86-64 without VNNI, ONNX Runtime's U8S8 matrix kernels (QLinearConv, QGemm, MatMulInteger) add pairs
of 8-bit products in 16-bit registers (``vpmaddubsw``) and saturate: an 8-bit model that is right in exact
arithmetic comes out wrong on such a CPU. VNNI (AVX512-VNNI, AVX-VNNI) and AMX accumulate in 32 bits and are
exact, and so are Arm CPUs and TensorRT. ONNX Runtime's session option ``session.x64quantprecision=1``
switches the affected kernels to U8U8 (no saturation, slower) and changes nothing on CPUs that have VNNI,
so the runtime sets it where the kernels would saturate instead of shipping models with 7-bit weights.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

#: CPU flags (``/proc/cpuinfo``) of instruction sets whose 8-bit dot products accumulate in 32 bits.
EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def int8_kernels_saturate(machine: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """Whether ONNX Runtime's default INT8 CPU kernels saturate here (x86-64 without VNNI or AMX)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = cpu_flags() if flags is None else flags
    if not flags:  # unknown: assume the worst, the precise kernels are only slower
        return True
    return not (flags & EXACT_INT8_FLAGS)


@functools.lru_cache(maxsize=1)
def describe() -> dict[str, object]:
    """This machine's INT8 facts, for reports: what "device numerics" means here."""
    flags = cpu_flags()
    return {"machine": platform.machine(), "int8_dot_product": sorted(flags & EXACT_INT8_FLAGS),
            "int8_kernels_saturate": int8_kernels_saturate(flags=flags)}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, a container's cpuset included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
