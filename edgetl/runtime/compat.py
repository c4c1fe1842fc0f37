"""Engine compatibility keys: which GPU and TensorRT version an engine was built for, and whether it runs here.

A TensorRT engine is compiled machine code for one GPU architecture and one TensorRT release. The
compile stage records a *compatibility key* with every engine (manifest ``artifacts[].compat``) and
names the file after it (``engines/<cc>-trt<version>-<precision>.engine``); the runtime compares the
key with the GPU and TensorRT it finds, picks a matching engine, and otherwise says exactly why not,
so the caller can fall back to ONNX Runtime instead of crashing inside deserialisation.

Host code: a version-compatible engine (``--version-compat``) carries TensorRT's lean runtime
inside it, which TensorRT 10 runs only when ``IRuntime.engine_host_code_allowed`` is set. The key
records this as ``host_code``, so every place that opens the engine (runtime, validate, serve, the
compile-time golden check) allows it for that engine alone. A machine may forbid host code
altogether with ``EDGETL_TRT_ALLOW_HOST_CODE=0``: such engines then do not match here, and the
runtime falls back to ONNX Runtime, saying why.

This module is torch-free and imports neither tensorrt nor CUDA libraries at import time; the GPU is
probed through the CUDA driver library with ctypes.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import asdict, dataclass
from typing import Any

from edgetl import lazy
from edgetl.errors import MissingDependencyError

#: Where ONNX Runtime's TensorRT execution provider keeps its engine cache inside a bundle.
ORT_TRT_CACHE_DIR = "engines/ort-trt-cache"
#: The TensorRT timing cache kept in a bundle, reused by every later build on a similar GPU.
TIMING_CACHE_DIR = "engines/timing"

# CUDA driver API attribute ids (cuda.h: CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/_MINOR, _INTEGRATED).
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76
_ATTR_INTEGRATED = 18

#: Set to 0 (or false/no/off) to forbid engines that run host code (version-compatible engines) here.
HOST_CODE_ENV = "EDGETL_TRT_ALLOW_HOST_CODE"

#: Version-compatible engines may cross these major-version boundaries (TensorRT support matrix);
#: within one major version any later runtime works.
_CROSS_MAJOR_OK = {(8, 9), (8, 10), (9, 10), (10, 11)}


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine is built for or run on.

    Args:
        name: the CUDA device name (``"Orin"``, ``"NVIDIA GeForce RTX 4090"``).
        compute_capability: ``"major.minor"`` (``"8.7"`` for Jetson Orin).
        integrated: True for Jetson-class integrated GPUs (shared memory with the CPU).
    """

    name: str
    compute_capability: str
    integrated: bool = False

    @property
    def sm(self) -> str:
        """``"sm87"``: the compute capability as it appears in engine file names."""
        return "sm" + self.compute_capability.replace(".", "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when ``import tensorrt`` fails (imported now, not before)."""
    try:
        return str(lazy.require("tensorrt", "tensorrt").__version__)
    except MissingDependencyError:
        return None


def probe_device(index: int = 0) -> DeviceInfo | None:
    """Name and compute capability of CUDA device ``index`` via the driver library, or None without a GPU.

    Uses ``libcuda`` through ctypes so that engine selection works before (and without) cuda-python.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return None
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            if cuda.cuInit(0) != 0:
                return None
            count = ctypes.c_int(0)
            if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or index >= count.value:
                return None
            dev = ctypes.c_int(0)
            if cuda.cuDeviceGet(ctypes.byref(dev), index) != 0:
                return None
            name = ctypes.create_string_buffer(256)
            cuda.cuDeviceGetName(name, 256, dev)
            major, minor, integrated = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
            cuda.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, dev)
            cuda.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, dev)
            cuda.cuDeviceGetAttribute(ctypes.byref(integrated), _ATTR_INTEGRATED, dev)
        except AttributeError:
            return None
        return DeviceInfo(name.value.decode(errors="replace"), f"{major.value}.{minor.value}", bool(integrated.value))
    return None


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; junk parts count as 0."""
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def short_version(version: str) -> str:
    """The first three parts of a TensorRT version (``"10.3.0"``): the part that decides compatibility."""
    return ".".join(str(p) for p in parse_version(version)[:3])


def compat_key(
    device: DeviceInfo,
    tensorrt_version: str,
    precision: str,
    profile: dict[str, Any] | None,
    *,
    dla_core: int | None = None,
    hardware_compat: bool = False,
    version_compat: bool = False,
) -> dict[str, Any]:
    """The compatibility record stored with an engine in the manifest.

    Args:
        device: the GPU the engine was built on.
        tensorrt_version: ``tensorrt.__version__`` at build time.
        precision: the requested build precision (``fp32|fp16|int8|best``).
        profile: the optimisation profile, ``{"input": name, "min": [...], "opt": [...], "max": [...]}``.
        dla_core: the DLA core the engine targets, or None for the GPU.
        hardware_compat: built with ``HardwareCompatibilityLevel.AMPERE_PLUS`` (runs on any Ampere+ dGPU).
        version_compat: built with ``BuilderFlag.VERSION_COMPATIBLE`` (runs on later TensorRT releases);
            such an engine needs host code allowed when it is deserialised (``host_code`` in the key).
    """
    return {
        "compute_capability": device.compute_capability,
        "device_name": device.name,
        "tensorrt_version": short_version(tensorrt_version),
        "precision": precision,
        "profile": profile or {},
        "dla_core": dla_core,
        "hardware_compat": bool(hardware_compat),
        "version_compat": bool(version_compat),
        # TensorRT 10 embeds the lean runtime in every version-compatible engine (edgetl never sets
        # EXCLUDE_LEAN_RUNTIME), and deserialising it needs runtime.engine_host_code_allowed.
        "host_code": bool(version_compat),
    }


def needs_host_code(compat: dict[str, Any]) -> bool:
    """Whether an engine with this key runs host code (keys written before ``host_code``: version-compatible)."""
    return bool(compat.get("host_code", compat.get("version_compat", False)))


def host_code_allowed() -> bool:
    """The machine's policy: False when `HOST_CODE_ENV` is set to 0/false/no/off."""
    return os.environ.get(HOST_CODE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def host_code_refusal(path: str) -> str:
    """The one sentence explaining why an engine that needs host code is not opened here."""
    return (
        f"{path} is version-compatible and runs host code (the lean runtime inside it), which "
        f"{HOST_CODE_ENV}=0 forbids on this machine"
    )


def engine_relpath(compat: dict[str, Any]) -> str:
    """``engines/sm87-trt10.3.0-fp16.engine`` (``-dla0`` / ``-hwcompat`` / ``-vc`` suffixes when set)."""
    cc = "sm" + str(compat["compute_capability"]).replace(".", "")
    if compat.get("hardware_compat"):
        cc = "ampere+"
    name = f"{cc}-trt{compat['tensorrt_version']}-{compat['precision']}"
    if compat.get("dla_core") is not None:
        name += f"-dla{compat['dla_core']}"
    if compat.get("version_compat"):
        name += "-vc"
    return f"engines/{name}.engine"


@dataclass(frozen=True)
class CompatCheck:
    """The verdict on one engine for this machine.

    Attributes:
        ok: the engine can be deserialised and run here.
        reason: one sentence a user can act on (why it matches, or what differs and what to do).
        exact: same GPU model and same TensorRT version (no portability mode needed).
    """

    ok: bool
    reason: str
    exact: bool = False


def check_compat(
    compat: dict[str, Any],
    device: DeviceInfo | None,
    tensorrt_version: str | None,
    *,
    allow_host_code: bool | None = None,
) -> CompatCheck:
    """Decide whether an engine with key ``compat`` runs on ``device`` under TensorRT ``tensorrt_version``.

    Args:
        allow_host_code: whether engines that run host code may be opened; None reads `HOST_CODE_ENV`.

    Rules (TensorRT's engine portability rules, plus this machine's host-code policy):
      * without a GPU or without TensorRT nothing runs;
      * an engine that runs host code (version-compatible) does not run where host code is forbidden;
      * the compute capability must be equal, unless the engine is hardware-compatible (Ampere+), which
        needs compute capability >= 8.0 here;
      * the TensorRT version (major.minor.patch) must be equal, unless the engine is version-compatible,
        which needs a runtime at least as new, in the same major version or a supported major step;
      * a DLA engine needs a Jetson-class (integrated) GPU with the same compute capability.
    """
    if device is None:
        return CompatCheck(False, "no CUDA GPU is visible on this machine")
    if not tensorrt_version:
        return CompatCheck(False, "TensorRT is not installed on this machine")
    if needs_host_code(compat) and not (host_code_allowed() if allow_host_code is None else allow_host_code):
        return CompatCheck(False, host_code_refusal("the engine") + "; rebuild it without --version-compat")
    built_cc = str(compat.get("compute_capability", "?"))
    built_trt = str(compat.get("tensorrt_version", "?"))
    built_name = str(compat.get("device_name", "?"))
    here_trt = short_version(tensorrt_version)
    rebuild = "rebuild it here with `edgetl compile`"

    if compat.get("dla_core") is not None and not device.integrated:
        return CompatCheck(
            False, f"engine targets DLA core {compat['dla_core']} but {device.name} has no DLA; {rebuild}"
        )
    if compat.get("hardware_compat"):
        if parse_version(device.compute_capability)[0] < 8:
            return CompatCheck(
                False,
                f"hardware-compatible engine needs an Ampere or newer GPU (compute capability >= 8.0); "
                f"{device.name} is {device.compute_capability}; {rebuild}",
            )
    elif built_cc != device.compute_capability:
        return CompatCheck(
            False,
            f"engine was built for compute capability {built_cc} ({built_name}); this GPU is "
            f"{device.name} ({device.compute_capability}); {rebuild}",
        )

    if built_trt != here_trt:
        if not compat.get("version_compat"):
            return CompatCheck(
                False, f"engine was built with TensorRT {built_trt}; this machine has TensorRT {here_trt}; {rebuild}"
            )
        built_v, here_v = parse_version(built_trt), parse_version(here_trt)
        if here_v < built_v:
            return CompatCheck(
                False,
                f"version-compatible engine from TensorRT {built_trt} cannot run on the older TensorRT {here_trt}; "
                f"{rebuild}",
            )
        if built_v[0] != here_v[0] and (built_v[0], here_v[0]) not in _CROSS_MAJOR_OK:
            return CompatCheck(
                False,
                f"TensorRT {here_trt} cannot run version-compatible engines from TensorRT {built_v[0]}; {rebuild}",
            )

    exact = built_trt == here_trt and built_name == device.name and built_cc == device.compute_capability
    if exact:
        reason = f"built for this GPU ({device.name}, {device.compute_capability}) and TensorRT {here_trt}"
    else:
        notes = []
        if built_name != device.name:
            notes.append(f"built on {built_name}, tactics were tuned for that GPU")
        if built_trt != here_trt:
            notes.append(f"version-compatible engine from TensorRT {built_trt}")
        if compat.get("hardware_compat"):
            notes.append("hardware-compatible (Ampere+)")
        reason = "compatible: " + "; ".join(notes)
    return CompatCheck(True, reason, exact)
