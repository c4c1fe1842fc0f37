"""CUDA memory through torch tensors, for TensorRT where torch is installed but cuda-python is not.

A workstation convenience (calibration during ``edgetl compile``, TensorRT validation on a machine set up
for training): devices install cuda-python with the ``tensorrt`` extra and never torch. Importing this
module registers the helper with the runtime (`edgetl.runtime.extensions`) as ``"torch"``, which
`edgetl.runtime.backends.cuda_mem.get_cuda_api` then uses when cuda-python is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl import lazy
from edgetl.errors import EnvironmentMissingError
from edgetl.lazy import lazy_import
from edgetl.runtime import extensions
from edgetl.runtime.backends.cuda_mem import CudaApi, DeviceBuffer, HostBuffer

torch = lazy_import("torch", "train", purpose="CUDA memory through torch")


class TorchCudaApi(CudaApi):
    """CUDA through torch tensors: a fallback where torch is installed but cuda-python is not."""

    name = "torch"

    def __init__(self) -> None:
        self.torch = lazy.load(torch)
        if not self.torch.cuda.is_available():
            raise EnvironmentMissingError("torch reports no CUDA GPU (torch.cuda.is_available() is False)")
        self.device = self.torch.device("cuda", 0)

    def set_device(self, index: int) -> None:
        self.device = self.torch.device("cuda", index)
        self.torch.cuda.set_device(self.device)

    def create_stream(self) -> Any:
        return self.torch.cuda.Stream(device=self.device)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        t = self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8, device=self.device)
        return DeviceBuffer(int(t.data_ptr()), int(nbytes), t)

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype) -> HostBuffer:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dtype.itemsize
        t = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, pin_memory=True)
        array = t.numpy()[:nbytes].view(dtype).reshape(shape)
        return HostBuffer(array, int(t.data_ptr()), nbytes, t)

    def htod(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            dst.owner[:nbytes].copy_(src.owner[:nbytes], non_blocking=True)

    def dtoh(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            dst.owner[:nbytes].copy_(src.owner[:nbytes], non_blocking=True)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def begin_capture(self, stream: Any) -> None:
        graph = self.torch.cuda.CUDAGraph()
        self._capturing = graph
        with self.torch.cuda.stream(stream):
            graph.capture_begin()

    def end_capture(self, stream: Any) -> Any:
        graph = self._capturing
        with self.torch.cuda.stream(stream):
            graph.capture_end()
        return graph

    def launch_graph(self, graph: Any, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            graph.replay()

    def free_graph(self, graph: Any) -> None:
        graph.reset()

    def free_device(self, buf: DeviceBuffer) -> None:
        buf.owner = None

    def free_host(self, buf: HostBuffer) -> None:
        buf.owner = None

    def destroy_stream(self, stream: Any) -> None:
        return None


if lazy.available("torch"):  # offered only where it can run
    extensions.register_cuda_api("torch", TorchCudaApi)
