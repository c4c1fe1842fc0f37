"""ONNX Runtime backend, with execution providers chosen from what the machine really has.

Provider order: TensorRT EP -> CUDA EP -> CPU. A provider is only requested when ONNX Runtime reports it
*and* its libraries load, so a CPU-only machine gets no CUDA warning spam.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.runtime.backends.base import Backend

_ORT_LOG_ERROR = 3


ort = lazy_import("onnxruntime", "runtime", purpose="running ONNX models")


def available_providers() -> list[str]:
    """Providers ONNX Runtime can actually use here (a GPU build on a CPU-only host reports only CPU)."""
    reported = ort.get_available_providers()
    usable = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in reported and _cuda_device_present():
        usable.insert(0, "CUDAExecutionProvider")
        if "TensorrtExecutionProvider" in reported and _tensorrt_libs_present():
            usable.insert(0, "TensorrtExecutionProvider")
    return usable


def _cuda_device_present() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    import ctypes

    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0:
            return count.value > 0
    return False


def _tensorrt_libs_present() -> bool:
    import ctypes

    for lib in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            continue
    return False


def resolve_providers(device: str = "auto", trt_cache_dir: str | Path | None = None) -> list[Any]:
    """Provider list for ``device`` in ``auto|cpu|cuda|tensorrt``; errors name what is missing."""
    usable = available_providers()
    if device == "cpu":
        chosen = ["CPUExecutionProvider"]
    elif device == "auto":
        chosen = usable
    else:
        wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}.get(device)
        if wanted is None:
            raise BadInputError(f"unknown device {device!r}; expected auto, cpu, cuda or tensorrt")
        if wanted not in usable:
            from edgetl.errors import EnvironmentMissingError

            raise EnvironmentMissingError(
                f"ONNX Runtime cannot use {wanted} on this machine (usable: {', '.join(usable)})",
                hint="install onnxruntime-gpu with a matching CUDA, or use --device cpu",
            )
        chosen = usable[usable.index(wanted):]
    providers: list[Any] = []
    for name in chosen:
        if name == "TensorrtExecutionProvider" and trt_cache_dir is not None:
            providers.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache_dir),
                                     "trt_timing_cache_enable": True}))
        else:
            providers.append(name)
    return providers


#: ONNX Runtime's ``WeightBiasQuantization`` quantizes the float weights of a layer that sits between Q/DQ
#: pairs so it can fuse it into an INT8 kernel: it undoes a "keep this layer in float" decision (and, with
#: 8-bit weights on x86 without VNNI, the fused kernel saturates). Layers kept in float stay in float.
KEEP_FLOAT_LAYERS_FLOAT = ["WeightBiasQuantization"]

#: How a QDQ graph is computed. ``device``: this machine's kernels, as deployment runs them (ONNX Runtime
#: fuses DQ -> op -> Q into integer kernels). ``exact``: graph optimizations off, so every DequantizeLinear
#: feeds a float op: the QDQ graph's integer-exact semantics, which TensorRT and VNNI/AMX CPUs compute.
NUMERICS = ("device", "exact")


def session_options(numerics: str = "device", threads: int = 0) -> Any:
    """ONNX Runtime session options for ``numerics`` (see `NUMERICS`).

    ``device`` on an x86 CPU whose INT8 kernels saturate (`edgetl.runtime.cpu`) asks for the precise U8U8
    kernels, so an 8-bit model computes what it computes on the target.
    """
    from edgetl.runtime.cpu import int8_kernels_saturate

    if numerics not in NUMERICS:
        raise BadInputError(f"unknown numerics {numerics!r}; expected one of {', '.join(NUMERICS)}")
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_LOG_ERROR
    if numerics == "exact":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if int8_kernels_saturate():
            options.add_session_config_entry("session.x64quantprecision", "1")
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxRuntimeBackend(Backend):
    """An ONNX Runtime session over one ``.onnx`` file.

    Args:
        artifact: path of the ONNX model.
        device: ``auto`` (best usable provider), ``cpu``, ``cuda`` or ``tensorrt``.
        threads: intra-op threads (0: ONNX Runtime's default, all cores).
        trt_cache_dir: engine cache directory for the TensorRT EP (kept in the bundle).
        numerics: ``device`` (this machine's kernels) or ``exact`` (see `NUMERICS`).
        graph: the serialized model to run instead of reading ``artifact`` (an equivalent form of it, e.g.
            `edgetl.quantize.exact_form`'s); ``artifact`` still names it in messages and `describe`.
    """

    name = "onnxruntime"

    def __init__(
        self,
        artifact: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        trt_cache_dir: str | Path | None = None,
        numerics: str = "device",
        graph: bytes | None = None,
    ) -> None:
        super().__init__(artifact)
        if not self.artifact.is_file():
            raise BadInputError(f"ONNX model not found: {self.artifact}")
        options = session_options(numerics, threads)
        self.numerics = numerics
        self.providers = resolve_providers("cpu" if numerics == "exact" else device, trt_cache_dir)
        try:
            self.session = ort.InferenceSession(graph if graph is not None else str(self.artifact), options,
                                                providers=self.providers,
                                                disabled_optimizers=KEEP_FLOAT_LAYERS_FLOAT)
        except Exception as exc:  # ORT raises its own exception types
            raise BadInputError(f"{self.artifact}: ONNX Runtime cannot load the model ({exc})") from exc
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._lock = threading.Lock()
        self._closed = False

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("backend is closed")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        # InferenceSession.run is thread-safe; no lock needed on the hot path.
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outputs))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "artifact": str(self.artifact),
            "providers": self.session.get_providers() if not self._closed else [],
            "numerics": self.numerics,
            "input": {"name": self.input_name, "shape": self.input_shape},
            "outputs": self.output_names,
        }

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                del self.session
