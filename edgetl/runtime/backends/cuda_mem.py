"""The few CUDA calls the TensorRT backend needs: device buffers, pinned host buffers, streams, graphs.

Two implementations share one small interface:

* `CudaPythonApi` over NVIDIA's cuda-python runtime bindings (``cuda.bindings.runtime``, or the older
  ``cuda.cudart``): what a device image installs (``edgetl[tensorrt]``); no torch needed.
* `TorchCudaApi` over torch CUDA tensors, used only when cuda-python is missing and torch is already
  installed (a training workstation). It is imported lazily, never on the device path.

Every cuda-python call returns ``(error, value...)``; `_check` turns a non-success code into an
edgetl error that names the failing call, so a broken driver never surfaces as a tuple unpacking bug.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl import lazy
from edgetl.errors import EdgetlError, EnvironmentMissingError, MissingDependencyError
from edgetl.runtime import extensions


class CudaError(EdgetlError):
    """A CUDA runtime call failed (exit code 3: the machine's GPU stack is the problem)."""

    exit_code = 3


@dataclass
class DeviceBuffer:
    """Device memory: ``ptr`` is the address bound to TensorRT; ``owner`` keeps it alive."""

    ptr: int
    nbytes: int
    owner: Any = None


@dataclass
class HostBuffer:
    """Page-locked host memory viewed as a numpy array (``array``); ``owner`` keeps it alive."""

    array: np.ndarray
    ptr: int
    nbytes: int
    owner: Any = None


class CudaApi:
    """Interface of the CUDA helpers; see the two implementations below."""

    name = "none"

    def set_device(self, index: int) -> None:
        raise NotImplementedError

    def create_stream(self) -> Any:
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        raise NotImplementedError

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        raise NotImplementedError

    def htod(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        raise NotImplementedError

    def dtoh(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def begin_capture(self, stream: Any) -> None:
        raise NotImplementedError

    def end_capture(self, stream: Any) -> Any:
        raise NotImplementedError

    def launch_graph(self, graph: Any, stream: Any) -> None:
        raise NotImplementedError

    def free_graph(self, graph: Any) -> None:
        raise NotImplementedError

    def free_device(self, buf: DeviceBuffer) -> None:
        raise NotImplementedError

    def free_host(self, buf: HostBuffer) -> None:
        raise NotImplementedError

    def destroy_stream(self, stream: Any) -> None:
        raise NotImplementedError


def _import_cudart() -> Any:
    for module in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python 12.x names, newest first
        try:
            return lazy.require(module, "tensorrt", purpose="running TensorRT engines")
        except MissingDependencyError:
            continue
    raise MissingDependencyError(
        "cuda-python is not installed (needed to run TensorRT engines)", hint="pip install 'edgetl[tensorrt]'"
    )


class CudaPythonApi(CudaApi):
    """CUDA through cuda-python's runtime bindings (``cudaMalloc``, ``cudaMemcpyAsync``...)."""

    name = "cuda-python"

    def __init__(self, cudart: Any | None = None) -> None:
        self.rt = cudart if cudart is not None else _import_cudart()

    def _check(self, result: Any, call: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != int(self.rt.cudaError_t.cudaSuccess):
            name = getattr(err, "name", str(err))
            missing = ("cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInvalidDevice")
            if name in missing:
                raise EnvironmentMissingError(
                    f"{call} failed: {name}: no usable CUDA GPU or driver on this machine",
                    hint="run on a machine with an NVIDIA GPU and driver, or use the ONNX Runtime backend",
                )
            raise CudaError(f"CUDA call {call} failed: {name}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def set_device(self, index: int) -> None:
        self._check(self.rt.cudaSetDevice(index), "cudaSetDevice")

    def create_stream(self) -> Any:
        # A non-blocking stream does not synchronise with the legacy default stream.
        flags = self.rt.cudaStreamNonBlocking
        return self._check(self.rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        ptr = self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc")
        return DeviceBuffer(int(ptr), int(nbytes))

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dtype.itemsize
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        raw = (ctypes.c_char * max(nbytes, 1)).from_address(ptr)
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        return HostBuffer(array, ptr, nbytes, raw)

    def htod(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream), "cudaMemcpyAsync(H2D)")

    def dtoh(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream), "cudaMemcpyAsync(D2H)")

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            exe = self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except EdgetlError:
            self.rt.cudaGraphDestroy(graph)
            raise
        return (graph, exe)

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph[1], stream), "cudaGraphLaunch")

    def free_graph(self, graph: Any) -> None:
        self.rt.cudaGraphExecDestroy(graph[1])
        self.rt.cudaGraphDestroy(graph[0])

    def free_device(self, buf: DeviceBuffer) -> None:
        self.rt.cudaFree(buf.ptr)

    def free_host(self, buf: HostBuffer) -> None:
        self.rt.cudaFreeHost(buf.ptr)

    def destroy_stream(self, stream: Any) -> None:
        self.rt.cudaStreamDestroy(stream)


def get_cuda_api(kind: str | CudaApi = "auto") -> CudaApi:
    """The CUDA helper to use: ``"auto"`` (cuda-python, else a registered fallback such as ``"torch"``),
    ``"cuda-python"``, a registered name (`edgetl.runtime.extensions`), or an instance."""
    if isinstance(kind, CudaApi):
        return kind
    if kind == "cuda-python":
        return CudaPythonApi()
    if kind != "auto":
        factory = extensions.cuda_api_factory(kind)
        if factory is None:
            known = ", ".join(["auto", "cuda-python", *extensions.cuda_api_names()])
            raise ValueError(f"unknown CUDA API {kind!r}; expected one of {known}")
        return factory()
    try:
        return CudaPythonApi()
    except MissingDependencyError as first:
        for name in extensions.cuda_api_names():
            return extensions.cuda_api_factory(name)()  # type: ignore[misc]
        raise first from None
