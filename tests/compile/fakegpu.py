"""A recording fake of the TensorRT Python API and of cuda-python's runtime bindings.

Contract tests only: these fakes check that edgetl calls TensorRT and CUDA in a legal order, with
existing tensor names, with optimisation profiles that cover the shapes it sets, one stream per
execution context, synchronisation before host reads (copies and kernels run only when the stream is
synchronised), and buffers that are large enough. A broken rule is recorded in
``FakeGpu.violations`` *and* raised, so a test fails even if the code under test swallows errors.
"Running" an engine executes its ONNX graph with ONNX Runtime on the CPU. Nothing here proves that
TensorRT itself works: the ``tensorrt``/``gpu`` marked tests do that on a real GPU.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class ContractViolation(Exception):
    """edgetl called the fake TensorRT/CUDA API in a way the real one forbids."""


class FakeGpu:
    """Shared state of one fake GPU: memory, streams, graphs, TensorRT objects, and the violation log."""

    def __init__(self, *, trt_version: str = "10.3.0.26", dla_cores: int = 0, unsupported_ops: tuple[str, ...] = (),
                 nms_fields: tuple[str, ...] | None = None):
        """``nms_fields``: the attributes this EfficientNMS_TRT declares (default: all; an older plugin
        lacks ``class_agnostic`` and, like the real one, ignores it silently when given)."""
        self.nms_fields = {n: t for n, t in EFFICIENT_NMS_FIELDS.items() if nms_fields is None or n in nms_fields}
        self.ignored_fields: list[str] = []
        self.trt_version = trt_version
        self.major = int(trt_version.split(".")[0])
        self.dla_cores = dla_cores
        self.unsupported_ops = set(unsupported_ops)
        self.violations: list[str] = []
        self.calls: list[str] = []
        self.mem: dict[int, tuple[str, int, Any]] = {}  # ptr -> (kind device|host, nbytes, ctypes buffer)
        self.freed: set[int] = set()
        self.streams: dict[int, FakeStream] = {}
        self.next_stream = 0x5000
        self.graphs: dict[int, list] = {}
        self.next_graph = 0x9000
        self.executions = 0
        self.builds: list[dict[str, Any]] = []
        self.contexts: list[Any] = []
        self.plugins_initialised = False
        self.runtimes: list[Any] = []
        self.trt = _make_trt_module(self)
        self.cudart = _make_cudart_module(self)

    # -- bookkeeping --------------------------------------------------------------------------
    def violate(self, message: str) -> None:
        self.violations.append(message)
        raise ContractViolation(message)

    def record(self, call: str) -> None:
        self.calls.append(call)

    def alloc(self, kind: str, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(int(nbytes), 1))
        ptr = ctypes.addressof(buf)
        self.mem[ptr] = (kind, int(nbytes), buf)
        self.freed.discard(ptr)  # the host allocator may hand out a freed address again
        return ptr

    def check_ptr(self, ptr: int, kind: str, nbytes: int, what: str) -> None:
        ptr = int(ptr)
        if ptr in self.freed:
            self.violate(f"{what}: pointer {ptr:#x} used after free")
        if ptr not in self.mem:
            self.violate(f"{what}: {ptr:#x} is not a {kind} allocation")
        have_kind, have_bytes, _ = self.mem[ptr]
        if have_kind != kind:
            self.violate(f"{what}: expected {kind} memory, got {have_kind} memory")
        if nbytes > have_bytes:
            self.violate(f"{what}: {nbytes} bytes do not fit in a {have_bytes}-byte allocation")

    def read(self, ptr: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()

    def write(self, ptr: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).tobytes()
        ctypes.memmove(ptr, data, len(data))

    def live_allocations(self) -> int:
        return len(self.mem)

    def stream(self, handle: Any, what: str) -> FakeStream:
        handle = int(handle)
        if handle not in self.streams:
            self.violate(f"{what}: {handle:#x} is not a live CUDA stream")
        return self.streams[handle]


@dataclass
class FakeStream:
    handle: int
    pending: list = field(default_factory=list)
    capturing: list | None = None

    def enqueue(self, op: Any) -> None:
        (self.capturing if self.capturing is not None else self.pending).append(op)


# ==================================================================================================
# cuda-python (cuda.bindings.runtime)
# ==================================================================================================
class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInsufficientDriver = 35
    cudaErrorStreamCaptureUnsupported = 900


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


def _make_cudart_module(gpu: FakeGpu) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = cudaMemcpyKind
    rt.cudaStreamCaptureMode = cudaStreamCaptureMode
    rt.cudaStreamNonBlocking = 1
    ok = cudaError_t.cudaSuccess

    def cudaSetDevice(index):
        gpu.record("cudaSetDevice")
        return (ok,) if index == 0 else (cudaError_t.cudaErrorInvalidValue,)

    def cudaMalloc(nbytes):
        gpu.record("cudaMalloc")
        return ok, gpu.alloc("device", nbytes)

    def cudaMallocHost(nbytes):
        gpu.record("cudaMallocHost")
        return ok, gpu.alloc("host", nbytes)

    def _free(ptr, kind):
        ptr = int(ptr)
        if ptr not in gpu.mem or gpu.mem[ptr][0] != kind:
            gpu.violate(f"free of {ptr:#x}, which is not a live {kind} allocation")
        for stream in gpu.streams.values():
            if stream.pending:
                gpu.violate("memory freed while a stream still has queued work")
        del gpu.mem[ptr]
        gpu.freed.add(ptr)
        return (ok,)

    def cudaFree(ptr):
        gpu.record("cudaFree")
        return _free(ptr, "device")

    def cudaFreeHost(ptr):
        gpu.record("cudaFreeHost")
        return _free(ptr, "host")

    def cudaStreamCreateWithFlags(flags):
        gpu.record("cudaStreamCreateWithFlags")
        gpu.next_stream += 0x10
        gpu.streams[gpu.next_stream] = FakeStream(gpu.next_stream)
        return ok, gpu.next_stream

    def cudaStreamDestroy(stream):
        gpu.record("cudaStreamDestroy")
        s = gpu.stream(stream, "cudaStreamDestroy")
        if s.pending:
            gpu.violate("stream destroyed with queued work (missing synchronize)")
        del gpu.streams[s.handle]
        return (ok,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        gpu.record(f"cudaMemcpyAsync({kind.name})")
        s = gpu.stream(stream, "cudaMemcpyAsync")
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            gpu.check_ptr(src, "host", count, "H2D source")
            gpu.check_ptr(dst, "device", count, "H2D destination")
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            gpu.check_ptr(src, "device", count, "D2H source")
            gpu.check_ptr(dst, "host", count, "D2H destination")
        else:
            gpu.violate(f"unexpected copy kind {kind}")
        s.enqueue(lambda: ctypes.memmove(int(dst), int(src), int(count)))
        return (ok,)

    def cudaStreamSynchronize(stream):
        gpu.record("cudaStreamSynchronize")
        s = gpu.stream(stream, "cudaStreamSynchronize")
        if s.capturing is not None:
            gpu.violate("cudaStreamSynchronize on a stream that is capturing a graph")
        ops, s.pending = s.pending, []
        for op in ops:
            op()
        return (ok,)

    def cudaStreamBeginCapture(stream, mode):
        gpu.record("cudaStreamBeginCapture")
        s = gpu.stream(stream, "cudaStreamBeginCapture")
        if s.pending:
            gpu.violate("graph capture started with un-synchronised work on the stream")
        s.capturing = []
        return (ok,)

    def cudaStreamEndCapture(stream):
        gpu.record("cudaStreamEndCapture")
        s = gpu.stream(stream, "cudaStreamEndCapture")
        if s.capturing is None:
            gpu.violate("cudaStreamEndCapture without cudaStreamBeginCapture")
        gpu.next_graph += 1
        gpu.graphs[gpu.next_graph] = s.capturing
        s.capturing = None
        return ok, gpu.next_graph

    def cudaGraphInstantiate(graph, flags):
        gpu.record("cudaGraphInstantiate")
        if graph not in gpu.graphs:
            gpu.violate("cudaGraphInstantiate of an unknown graph")
        gpu.next_graph += 1
        gpu.graphs[gpu.next_graph] = list(gpu.graphs[graph])
        return ok, gpu.next_graph

    def cudaGraphLaunch(exe, stream):
        gpu.record("cudaGraphLaunch")
        s = gpu.stream(stream, "cudaGraphLaunch")
        for op in gpu.graphs[exe]:
            s.enqueue(op)
        return (ok,)

    def cudaGraphExecDestroy(exe):
        gpu.graphs.pop(exe, None)
        return (ok,)

    def cudaGraphDestroy(graph):
        gpu.graphs.pop(graph, None)
        return (ok,)

    for fn in (cudaSetDevice, cudaMalloc, cudaMallocHost, cudaFree, cudaFreeHost, cudaStreamCreateWithFlags,
               cudaStreamDestroy, cudaMemcpyAsync, cudaStreamSynchronize, cudaStreamBeginCapture,
               cudaStreamEndCapture, cudaGraphInstantiate, cudaGraphLaunch, cudaGraphExecDestroy, cudaGraphDestroy):
        setattr(rt, fn.__name__, fn)
    return rt


# ==================================================================================================
# tensorrt
# ==================================================================================================
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8, "BOOL": bool}
_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 6: "INT32", 7: "INT64", 3: "INT8", 9: "BOOL"}


@dataclass
class FakeTensor:
    name: str
    shape: tuple[int, ...]
    dtype: Any


class FakeNetwork:
    def __init__(self, gpu: FakeGpu, flags: int) -> None:
        self.gpu, self.flags = gpu, flags
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.parsed = False
        self.onnx_path: str | None = None
        self.has_qdq = False
        self.strongly_typed = bool(flags & (1 << 1)) or gpu.major >= 11
        self.plugins: list[FakePluginLayer] = []
        self.plugin_tensors: list[FakeTensor] = []
        self.unmarked: list[FakeTensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> FakeTensor:
        return self.inputs[i]

    def get_output(self, i: int) -> FakeTensor:
        return self.outputs[i]

    # -- plugin layers (EfficientNMS) ------------------------------------------------------------
    def _owns(self, tensor: Any) -> bool:
        return any(tensor is t for t in [*self.inputs, *self.outputs, *self.unmarked, *self.plugin_tensors])

    def add_plugin_v2(self, inputs: list, plugin: Any) -> FakePluginLayer:
        self.gpu.record("add_plugin_v2")
        if not self.parsed:
            self.gpu.violate("add_plugin_v2 before the ONNX graph was parsed")
        if not isinstance(plugin, FakePlugin):
            self.gpu.violate("add_plugin_v2 needs a plugin from IPluginCreator.create_plugin")
        for t in inputs:
            if not isinstance(t, FakeTensor) or not self._owns(t):
                self.gpu.violate(f"add_plugin_v2 input {getattr(t, 'name', t)!r} is not a tensor of this network")
        layer = plugin.make_layer(list(inputs))
        self.plugins.append(layer)
        self.plugin_tensors.extend(layer.outputs)
        return layer

    def mark_output(self, tensor: FakeTensor) -> None:
        if not self._owns(tensor):
            self.gpu.violate(f"mark_output of {getattr(tensor, 'name', tensor)!r}, not a tensor of this network")
        if any(tensor is t for t in self.outputs):
            self.gpu.violate(f"{tensor.name!r} is already a network output")
        self.outputs.append(tensor)

    def unmark_output(self, tensor: FakeTensor) -> None:
        if not any(tensor is t for t in self.outputs):
            self.gpu.violate(f"unmark_output of {getattr(tensor, 'name', tensor)!r}, which is not a network output")
        self.outputs = [t for t in self.outputs if t is not tensor]
        self.unmarked.append(tensor)


#: EfficientNMS_TRT version 1: attribute -> PluginFieldType name (TensorRT's plugin config).
EFFICIENT_NMS_FIELDS = {
    "score_threshold": "FLOAT32", "iou_threshold": "FLOAT32", "max_output_boxes": "INT32",
    "background_class": "INT32", "score_activation": "INT32", "class_agnostic": "INT32", "box_coding": "INT32",
}
EFFICIENT_NMS_REQUIRED = set(EFFICIENT_NMS_FIELDS) - {"class_agnostic"}
EFFICIENT_NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


class FakePlugin:
    """An EfficientNMS_TRT instance made by the fake creator, with its checked attributes."""

    def __init__(self, gpu: FakeGpu, params: dict[str, float | int]) -> None:
        self.gpu, self.params = gpu, params

    def make_layer(self, inputs: list[FakeTensor]) -> FakePluginLayer:
        if len(inputs) != 2:
            self.gpu.violate(f"EfficientNMS_TRT takes boxes and scores (2 inputs without anchors), got {len(inputs)}")
        boxes, scores = inputs
        if len(boxes.shape) != 3 or boxes.shape[2] != 4:
            self.gpu.violate(f"EfficientNMS_TRT boxes must be (N, A, 4), got {boxes.shape} ({boxes.name!r})")
        if len(scores.shape) != 3 or scores.shape[1] != boxes.shape[1]:
            self.gpu.violate(f"EfficientNMS_TRT scores must be (N, A, C) matching boxes, got {scores.shape}")
        if boxes.dtype.name not in ("FLOAT", "HALF") or scores.dtype.name != boxes.dtype.name:
            self.gpu.violate("EfficientNMS_TRT boxes and scores must share a float type")
        n, k = boxes.shape[0], int(self.params["max_output_boxes"])
        dt = self.gpu.trt.DataType
        outputs = [FakeTensor(EFFICIENT_NMS_OUTPUTS[0], (n, 1), dt.INT32),
                   FakeTensor(EFFICIENT_NMS_OUTPUTS[1], (n, k, 4), boxes.dtype),
                   FakeTensor(EFFICIENT_NMS_OUTPUTS[2], (n, k), boxes.dtype),
                   FakeTensor(EFFICIENT_NMS_OUTPUTS[3], (n, k), dt.INT32)]
        return FakePluginLayer(self, [boxes, scores], outputs)


@dataclass
class FakePluginLayer:
    plugin: FakePlugin
    inputs: list[FakeTensor]
    outputs: list[FakeTensor]
    name: str = "plugin"

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, i: int) -> FakeTensor:
        return self.outputs[i]


def efficient_nms(boxes: np.ndarray, scores: np.ndarray, params: dict[str, Any]) -> list[np.ndarray]:
    """What EfficientNMS_TRT computes (fixed-size, zero-padded outputs), in numpy for the fake engine."""
    from edgetl.runtime.detection import nms_numpy

    n, k = boxes.shape[0], int(params["max_output_boxes"])
    num = np.zeros((n, 1), np.int32)
    det_boxes = np.zeros((n, k, 4), np.float32)
    det_scores = np.zeros((n, k), np.float32)
    det_classes = np.zeros((n, k), np.int32)
    for i in range(n):
        s = scores[i]
        if params["class_agnostic"]:
            cls = s.argmax(1)
            anchor = np.flatnonzero(s[np.arange(len(s)), cls] > params["score_threshold"])
            cls = cls[anchor]
        else:
            anchor, cls = np.nonzero(s > params["score_threshold"])
        conf = s[anchor, cls]
        keep = nms_numpy(boxes[i][anchor], conf, params["iou_threshold"],
                         None if params["class_agnostic"] else cls, k)
        m = len(keep)
        num[i, 0] = m
        det_boxes[i, :m], det_scores[i, :m], det_classes[i, :m] = boxes[i][anchor[keep]], conf[keep], cls[keep]
    return [num, det_boxes, det_scores, det_classes]


@dataclass
class FakeParserError:
    index: int
    op: str
    name: str
    message: str
    code_value: Any

    def desc(self) -> str:
        return self.message

    def node(self) -> int:
        return self.index

    def node_name(self) -> str:
        return self.name

    def node_operator(self) -> str:
        return self.op

    def code(self) -> Any:
        return self.code_value


class FakeProfile:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
        lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
            self.gpu.violate(f"profile for {name!r} is not min <= opt <= max: {lo} {mid} {hi}")
        self.shapes[name] = (lo, mid, hi)


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return b"FAKE-TIMING:" + str(len(self.data)).encode()


class FakeConfig:
    def __init__(self, gpu: FakeGpu, builder: Any) -> None:
        self.gpu, self.builder = gpu, builder
        self.flags: set[str] = set()
        self.pools: dict[Any, int] = {}
        self.profiles: list[FakeProfile] = []
        self.builder_optimization_level = 3
        self.default_device_type = gpu.trt.DeviceType.GPU
        self.DLA_core = -1
        self.hardware_compatibility_level = gpu.trt.HardwareCompatibilityLevel.NONE
        self.int8_calibrator = None
        self.calibration_profile: FakeProfile | None = None
        self.timing_cache: FakeTimingCache | None = None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        if pool is not self.gpu.trt.MemoryPoolType.WORKSPACE:
            self.gpu.violate(f"unexpected memory pool {pool}")
        self.pools[pool] = int(size)

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag.name)

    def get_flag(self, flag: Any) -> bool:
        return flag.name in self.flags

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: FakeProfile) -> bool:
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        return FakeTimingCache(data)

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.timing_cache


class FakeHostMemory:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __bytes__(self) -> bytes:
        return self.data

    @property
    def nbytes(self) -> int:
        return len(self.data)


def _make_trt_module(gpu: FakeGpu) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = gpu.trt_version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # importlib.util.find_spec works on it

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self) -> None:
            self._init = True

        def log(self, severity: Any, msg: str) -> None:  # pragma: no cover - overridden
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    trt.Logger = ILogger

    flag_names = ["GPU_FALLBACK", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "REFIT"]
    if gpu.major < 11:
        flag_names += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = enum.Enum("BuilderFlag", flag_names)
    creation = ["STRONGLY_TYPED"] if gpu.major >= 10 else []
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, **({"STRONGLY_TYPED": 1} if creation else {})}
    )
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
    trt.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", list(_NP))
    trt.ErrorCode = enum.Enum("ErrorCode", ["SUCCESS", "UNSUPPORTED_NODE", "INVALID_GRAPH"])
    trt.nptype = lambda dt: _NP[dt.name]

    if gpu.major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                self._base_init = True

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    def _log(logger: Any, severity: Severity, msg: str) -> None:
        if not getattr(logger, "_init", False):
            gpu.violate("custom ILogger subclass did not call ILogger.__init__")
        logger.log(severity, msg)

    # -- builder side -------------------------------------------------------------------------
    class Builder:
        def __init__(self, logger: Any) -> None:
            gpu.record("Builder")
            self.logger = logger
            self.num_DLA_cores = gpu.dla_cores

        def create_network(self, flags: int = 0) -> FakeNetwork:
            gpu.record("create_network")
            explicit = bool(flags & 1)
            if gpu.major < 10 and not explicit:
                gpu.violate("TensorRT < 10 parses ONNX only into an EXPLICIT_BATCH network")
            if gpu.major >= 10 and explicit:
                gpu.violate("EXPLICIT_BATCH is deprecated and ignored since TensorRT 10: do not pass it")
            return FakeNetwork(gpu, flags)

        def create_builder_config(self) -> FakeConfig:
            gpu.record("create_builder_config")
            return FakeConfig(gpu, self)

        def create_optimization_profile(self) -> FakeProfile:
            return FakeProfile(gpu)

        def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> FakeHostMemory | None:
            gpu.record("build_serialized_network")
            return _build(self, network, config)

    class OnnxParser:
        def __init__(self, network: FakeNetwork, logger: Any) -> None:
            if not isinstance(network, FakeNetwork):
                gpu.violate("OnnxParser needs the network from Builder.create_network")
            self.network, self.logger = network, logger
            self.errors: list[FakeParserError] = []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> FakeParserError:
            return self.errors[i]

        def parse(self, data: bytes, path: str | None = None) -> bool:  # pragma: no cover - not used
            gpu.violate("use parse_from_file so external weights resolve next to the model")
            return False

        def parse_from_file(self, path: str) -> bool:
            import onnx

            gpu.record("parse_from_file")
            if self.network.parsed:
                gpu.violate("a network can be parsed once")
            model = onnx.load(path)
            for i, node in enumerate(model.graph.node):
                if node.op_type in gpu.unsupported_ops:
                    self.errors.append(FakeParserError(i, node.op_type, node.name, f"no importer for {node.op_type}",
                                                       trt.ErrorCode.UNSUPPORTED_NODE))
            if self.errors:
                return False
            inits = {t.name for t in model.graph.initializer}

            def tensor(vi: Any) -> FakeTensor:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
                return FakeTensor(vi.name, dims, getattr(trt.DataType, _ONNX_TO_TRT[vi.type.tensor_type.elem_type]))

            self.network.inputs = [tensor(v) for v in model.graph.input if v.name not in inits]
            self.network.outputs = [tensor(v) for v in model.graph.output]
            self.network.has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
            self.network.onnx_path = str(path)
            self.network.parsed = True
            return True

    def _build(builder: Any, network: FakeNetwork, config: FakeConfig) -> FakeHostMemory | None:
        if not network.parsed:
            gpu.violate("build_serialized_network before the ONNX graph was parsed")
        if config.builder is not builder:
            gpu.violate("builder config comes from another builder")
        if trt.MemoryPoolType.WORKSPACE not in config.pools:
            gpu.violate("no workspace limit set (set_memory_pool_limit(WORKSPACE, ...))")
        if network.strongly_typed and ({"FP16", "INT8"} & config.flags):
            gpu.violate("precision flags on a strongly typed network")
        dynamic = [t for t in network.inputs if any(d < 0 for d in t.shape)]
        if dynamic and not config.profiles:
            gpu.violate("network has dynamic inputs but no optimisation profile was added")
        for k, profile in enumerate(config.profiles):
            for t in network.inputs:
                if t.name not in profile.shapes and t in dynamic:
                    gpu.violate(f"profile {k} lacks dynamic input {t.name!r}")
            for name, (lo, _opt, hi) in profile.shapes.items():
                tensor = next((t for t in network.inputs if t.name == name), None)
                if tensor is None:
                    gpu.violate(f"profile {k} names {name!r}, which is not a network input")
                for d, (a, b) in enumerate(zip(lo, hi)):
                    if tensor.shape[d] >= 0 and not a == b == tensor.shape[d]:
                        gpu.violate(f"profile {k} changes static dimension {d} of {name!r}")
        if "INT8" in config.flags and not network.has_qdq:
            if config.int8_calibrator is None:
                gpu.violate("INT8 without a QDQ graph needs an int8_calibrator")
            if dynamic and config.calibration_profile is None:
                gpu.violate("calibrating a dynamic-shape network needs set_calibration_profile")
            _calibrate(config, network)
        if config.default_device_type == trt.DeviceType.DLA:
            if "GPU_FALLBACK" not in config.flags:
                gpu.violate("DLA build without GPU_FALLBACK")
            if not {"FP16", "INT8"} & config.flags:
                gpu.violate("DLA needs FP16 or INT8")
            if not 0 <= config.DLA_core < gpu.dla_cores:
                gpu.violate(f"DLA_core {config.DLA_core} does not exist")
        profiles = [{n: [list(s) for s in shapes] for n, shapes in p.shapes.items()} for p in config.profiles]
        if not profiles:
            profiles = [{t.name: [list(t.shape)] * 3 for t in network.inputs}]
        nms_params = None
        for layer in network.plugins:
            unmarked = {t.name for t in network.unmarked}
            for t in layer.inputs:
                if t.name not in unmarked:
                    gpu.violate(f"plugin input {t.name!r} is still a network output (unmark_output it)")
            for t in layer.outputs:
                if not any(t is o for o in network.outputs):
                    gpu.violate(f"plugin output {t.name!r} is not marked as a network output")
            nms_params = {"params": layer.plugin.params, "inputs": [t.name for t in layer.inputs],
                          "outputs": [t.name for t in layer.outputs]}
        blob = {
            "magic": "FAKE-TRT",
            "version": gpu.trt_version,
            "onnx": network.onnx_path,
            "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network.inputs],
            "outputs": [[t.name, list(t.shape), t.dtype.name] for t in network.outputs],
            "profiles": profiles,
            "flags": sorted(config.flags),
            "version_compatible": "VERSION_COMPATIBLE" in config.flags,
            "nms": nms_params,
        }
        gpu.builds.append(blob)
        return FakeHostMemory(json.dumps(blob).encode())

    def _calibrate(config: FakeConfig, network: FakeNetwork) -> None:
        cal = config.int8_calibrator
        if not getattr(cal, "_base_init", False):
            gpu.violate("calibrator did not call IInt8EntropyCalibrator2.__init__")
        if cal.read_calibration_cache():
            return
        name = network.inputs[0].name
        batches = 0
        while True:
            ptrs = cal.get_batch([name])
            if ptrs is None:
                break
            if len(ptrs) != 1:
                gpu.violate("get_batch must return one device pointer per input name")
            gpu.check_ptr(int(ptrs[0]), "device", 4, "calibration batch")
            batches += 1
        if batches == 0:
            gpu.violate("calibrator produced no batches")
        cal.write_calibration_cache(FakeHostMemory(f"FAKE-CALIB batches={batches}".encode()))

    # -- runtime side -------------------------------------------------------------------------
    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            self.engine_host_code_allowed = False
            gpu.runtimes.append(self)

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            gpu.record("deserialize_cuda_engine")
            try:
                blob = json.loads(bytes(data))
            except (ValueError, UnicodeDecodeError):
                _log(self.logger, Severity.ERROR, "Serialization assertion: magic tag does not match")
                return None
            if blob.get("version") != gpu.trt_version and not blob.get("version_compatible"):
                _log(self.logger, Severity.ERROR,
                     f"The engine plan file is not compatible with this version of TensorRT, expecting library "
                     f"version {gpu.trt_version} got {blob.get('version')}")
                return None
            if blob.get("version_compatible") and not self.engine_host_code_allowed:
                _log(self.logger, Severity.ERROR, "engine host code not allowed: set engine_host_code_allowed")
                return None
            return FakeEngine(blob)

    class FakeEngine:
        def __init__(self, blob: dict[str, Any]) -> None:
            self.blob = blob
            self.io = {n: (tuple(s), getattr(trt.DataType, dt), trt.TensorIOMode.INPUT) for n, s, dt in blob["inputs"]}
            self.io.update({n: (tuple(s), getattr(trt.DataType, dt), trt.TensorIOMode.OUTPUT)
                            for n, s, dt in blob["outputs"]})
            self.names = list(self.io)
            self.profiles_in_use: dict[int, FakeContext] = {}
            self._session = None

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.blob["profiles"])

        def _known(self, name: str, what: str) -> None:
            if name not in self.io:
                gpu.violate(f"{what}: unknown tensor name {name!r} (engine has {self.names})")

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            self._known(name, "get_tensor_mode")
            return self.io[name][2]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            self._known(name, "get_tensor_shape")
            return self.io[name][0]

        def get_tensor_dtype(self, name: str) -> Any:
            self._known(name, "get_tensor_dtype")
            return self.io[name][1]

        def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
            self._known(name, "get_tensor_profile_shape")
            if self.io[name][2] != trt.TensorIOMode.INPUT:
                gpu.violate("profile shapes exist for inputs only")
            return [tuple(s) for s in self.blob["profiles"][index][name]]

        def create_execution_context(self) -> FakeContext:
            ctx = FakeContext(self)
            gpu.contexts.append(ctx)
            return ctx

        def session(self) -> Any:
            if self._session is None:
                import onnxruntime as ort

                self._session = ort.InferenceSession(self.blob["onnx"], providers=["CPUExecutionProvider"])
            return self._session

    class FakeContext:
        def __init__(self, engine: FakeEngine) -> None:
            self.engine = engine
            self.dynamic = any(d < 0 for n in engine.names for d in engine.io[n][0]
                               if engine.io[n][2] == trt.TensorIOMode.INPUT)
            self.profile: int | None = None
            if not self.dynamic or 0 not in engine.profiles_in_use:
                self._take(0)  # TensorRT gives the first context profile 0 implicitly
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.stream: int | None = None
            self.enqueues = 0

        def _take(self, index: int) -> None:
            if self.dynamic:
                holder = self.engine.profiles_in_use.get(index)
                if holder is not None and holder is not self:
                    gpu.violate(f"optimisation profile {index} is already used by another execution context")
                if self.profile is not None:
                    self.engine.profiles_in_use.pop(self.profile, None)
                self.engine.profiles_in_use[index] = self
            self.profile = index

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            gpu.record("set_optimization_profile_async")
            gpu.stream(stream, "set_optimization_profile_async")
            if not 0 <= index < self.engine.num_optimization_profiles:
                gpu.violate(f"profile {index} does not exist")
            self._take(index)
            self.shapes.clear()
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            gpu.record("set_input_shape")
            self.engine._known(name, "set_input_shape")
            if self.engine.io[name][2] != trt.TensorIOMode.INPUT:
                gpu.violate(f"set_input_shape on output {name!r}")
            if self.profile is None:
                gpu.violate("set_input_shape before an optimisation profile was selected for this context")
            shape = tuple(int(d) for d in shape)
            lo, _opt, hi = self.engine.blob["profiles"][self.profile][name]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                gpu.violate(f"shape {shape} for {name!r} is outside profile {self.profile} [{lo} .. {hi}]")
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            self.engine._known(name, "context.get_tensor_shape")
            base = self.engine.io[name][0]
            if self.engine.io[name][2] == trt.TensorIOMode.INPUT:
                return self.shapes.get(name, base)
            batch = next(iter(self.shapes.values()), (-1,))[0]
            return tuple(batch if d < 0 else d for d in base)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            gpu.record("set_tensor_address")
            self.engine._known(name, "set_tensor_address")
            gpu.check_ptr(int(ptr), "device", 1, f"set_tensor_address({name!r})")
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            gpu.record("execute_async_v3")
            s = gpu.stream(stream_handle, "execute_async_v3")
            if self.stream is None:
                for other in gpu.contexts:
                    if other is not self and other.stream == int(stream_handle):
                        gpu.violate("two execution contexts share one CUDA stream")
                self.stream = int(stream_handle)
            elif self.stream != int(stream_handle):
                gpu.violate("an execution context switched CUDA streams")
            if s.capturing is not None and self.enqueues == 0:
                gpu.violate("graph capture of a context that never ran: enqueue once before capturing")
            inputs = [n for n in self.engine.names if self.engine.io[n][2] == trt.TensorIOMode.INPUT]
            for name in inputs:
                if any(d < 0 for d in self.get_tensor_shape(name)):
                    gpu.violate(f"execute before set_input_shape({name!r})")
            missing = [n for n in self.engine.names if n not in self.addresses]
            if missing:
                gpu.violate(f"execute before set_tensor_address for {missing}")
            shapes = {n: self.get_tensor_shape(n) for n in self.engine.names}
            for name in self.engine.names:
                nbytes = int(np.prod(shapes[name])) * np.dtype(trt.nptype(self.engine.io[name][1])).itemsize
                gpu.check_ptr(self.addresses[name], "device", nbytes, f"binding {name!r}")
            self.enqueues += 1
            engine, addresses = self.engine, dict(self.addresses)
            fp16 = "FP16" in engine.blob["flags"]

            def run() -> None:
                feeds = {n: gpu.read(addresses[n], np.dtype(trt.nptype(engine.io[n][1])), shapes[n]) for n in inputs}
                if fp16:
                    feeds = {n: v.astype(np.float16).astype(v.dtype) for n, v in feeds.items()}
                outs = engine.session().run(None, feeds)
                nms = engine.blob.get("nms")
                if nms:  # the graph's outputs feed the plugin; the engine returns the plugin's
                    graph = dict(zip([o.name for o in engine.session().get_outputs()], outs))
                    produced = dict(zip(nms["outputs"], efficient_nms(*(graph[n] for n in nms["inputs"]),
                                                                        nms["params"])))
                    outs = [produced[name] if name in produced else graph[name]
                            for name, *_ in engine.blob["outputs"]]
                for (name, *_), value in zip(engine.blob["outputs"], outs):
                    if fp16 and value.dtype == np.float32:
                        value = value.astype(np.float16).astype(np.float32)
                    gpu.write(addresses[name], value.astype(trt.nptype(engine.io[name][1])))
                gpu.executions += 1

            s.enqueue(run)
            return True

    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.Runtime = Runtime
    trt.ICudaEngine = FakeEngine
    # -- plugins (libnvinfer_plugin) --------------------------------------------------------------
    trt.PluginFieldType = enum.Enum("PluginFieldType", ["FLOAT16", "FLOAT32", "FLOAT64", "INT8", "INT16", "INT32",
                                                        "CHAR", "DIMS", "UNKNOWN"])
    _FIELD_DTYPES = {"FLOAT32": np.float32, "INT32": np.int32, "FLOAT64": np.float64, "INT8": np.int8,
                     "INT16": np.int16, "FLOAT16": np.float16}

    class PluginField:
        def __init__(self, name: str, data: Any = None, type: Any = None) -> None:
            if not isinstance(name, str):
                gpu.violate(f"PluginField name must be a str, got {name!r}")
            if type is None:
                gpu.violate(f"PluginField {name!r} without a PluginFieldType")
            self.name, self.data, self.type = name, data, type

    class PluginFieldCollection(list):
        pass

    class IPluginCreator:
        def __init__(self, name: str, version: str) -> None:
            self.name, self.plugin_version, self.plugin_namespace = name, version, ""

        @property
        def field_names(self) -> PluginFieldCollection:
            """The attributes the plugin declares (TensorRT: ``IPluginCreator.field_names``)."""
            return PluginFieldCollection(PluginField(n, None, getattr(trt.PluginFieldType, t))
                                         for n, t in gpu.nms_fields.items())

        def create_plugin(self, name: str, field_collection: Any) -> FakePlugin:
            gpu.record("create_plugin")
            if not isinstance(field_collection, PluginFieldCollection):
                gpu.violate("create_plugin needs a PluginFieldCollection")
            params: dict[str, Any] = {}
            for f in field_collection:
                if not isinstance(f, PluginField):
                    gpu.violate(f"create_plugin got {f!r}, not a PluginField")
                want = gpu.nms_fields.get(f.name)
                if want is None and f.name in EFFICIENT_NMS_FIELDS:  # a newer version's field: ignored silently
                    gpu.ignored_fields.append(f.name)
                    continue
                if want is None:
                    gpu.violate(f"EfficientNMS_TRT has no attribute {f.name!r} (has {sorted(gpu.nms_fields)})")
                if f.type.name != want:
                    gpu.violate(f"EfficientNMS_TRT attribute {f.name!r} is {want}, got {f.type.name}")
                data = np.asarray(f.data)
                if data.dtype != _FIELD_DTYPES[want] or data.size != 1:
                    gpu.violate(f"EfficientNMS_TRT attribute {f.name!r} needs one {want} value, "
                                f"got {data.dtype} x {data.size}")
                params[f.name] = data.reshape(-1)[0].item()
            missing = EFFICIENT_NMS_REQUIRED - set(params)
            if missing:
                gpu.violate(f"EfficientNMS_TRT attributes missing: {sorted(missing)}")
            params.setdefault("class_agnostic", 0)
            return FakePlugin(gpu, params)

    class PluginRegistry:
        def __init__(self) -> None:
            self.creators = {("EfficientNMS_TRT", "1"): IPluginCreator("EfficientNMS_TRT", "1")}

        def _lookup(self, name: str, version: str, namespace: str = "") -> IPluginCreator | None:
            gpu.record("get_creator")
            if not gpu.plugins_initialised:
                gpu.violate(f"{name} looked up before init_libnvinfer_plugins registered the plugin library")
            return self.creators.get((name, version)) if namespace == "" else None

        get_plugin_creator = _lookup  # TensorRT 8.x; deprecated in 10
        if gpu.major >= 10:
            get_creator = _lookup

    registry = PluginRegistry()

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        gpu.record("init_libnvinfer_plugins")
        if not getattr(logger, "_init", False):
            gpu.violate("init_libnvinfer_plugins needs a TensorRT logger")
        gpu.plugins_initialised = True
        return True

    trt.PluginField = PluginField
    trt.PluginFieldCollection = PluginFieldCollection
    trt.IPluginCreator = IPluginCreator
    trt.get_plugin_registry = lambda: registry
    trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    return trt


def install(monkeypatch: Any, gpu: FakeGpu, *, device_name: str = "Orin", cc: str = "8.7", integrated: bool = True
            ) -> None:
    """Make ``import tensorrt`` / ``cuda.bindings.runtime`` return the fakes and the GPU probe report a device."""
    import sys

    from edgetl.compile import builder
    from edgetl.runtime import compat

    monkeypatch.setitem(sys.modules, "tensorrt", gpu.trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", gpu.cudart)
    device = compat.DeviceInfo(device_name, cc, integrated)
    monkeypatch.setattr(compat, "probe_device", lambda index=0: device)
    monkeypatch.setattr(builder, "probe_device", lambda index=0: device)


def engine_path_exists(path: Path) -> bool:
    return Path(path).is_file()
