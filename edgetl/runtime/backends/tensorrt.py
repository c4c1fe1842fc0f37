"""TensorRT backend: run a serialized engine with buffers bound by tensor name.

Lifecycle (like every backend): the constructor deserialises the engine and, for each execution
context of a small pool, creates one CUDA stream, selects its optimisation profile, allocates device
buffers for the profile's largest batch and page-locked host buffers once, and binds every I/O tensor
by name with ``set_tensor_address``. ``infer`` then only copies, enqueues (``execute_async_v3``) and
synchronises. A batch bigger than the profile allows is split into chunks; a batch smaller than the
profile minimum is zero-padded; neither is an error.

Concurrency: each caller borrows a whole context (stream + buffers) from the pool, so N contexts serve
N callers at once. On engines with a dynamic batch, TensorRT lets one optimisation profile serve only
one context at a time, so the pool size is bounded by the profiles the engine was built with
(``edgetl compile --contexts``).

Host code: a version-compatible engine (``edgetl compile --version-compat``) embeds TensorRT's lean
runtime, which TensorRT 10 deserialises only with ``runtime.engine_host_code_allowed = True``. That
is set for exactly the engines whose compatibility key says ``host_code`` (`edgetl.runtime.compat`),
and never where ``EDGETL_TRT_ALLOW_HOST_CODE=0`` forbids it; `edgetl.runtime.artifacts.select_engine`
then skips such engines with a warning and the runtime falls back to ONNX Runtime.

Requires TensorRT 10 or newer (``pip install 'edgetl[tensorrt]'`` asks for ``tensorrt>=10.0``; JetPack
6.1+). Never imports torch unless cuda-python is missing and torch is present (see
`edgetl.runtime.backends.cuda_mem`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl import lazy
from edgetl.errors import BadInputError, EdgetlError, EnvironmentMissingError, MissingDependencyError
from edgetl.lazy import lazy_import
from edgetl.runtime.backends.base import Backend
from edgetl.runtime.backends.cuda_mem import CudaApi, DeviceBuffer, HostBuffer, get_cuda_api

if TYPE_CHECKING:
    from edgetl.bundle.manifest import Bundle

log = logging.getLogger("edgetl.runtime")
tensorrt = lazy_import("tensorrt", "tensorrt", purpose="TensorRT engines")

#: The one message for a machine without TensorRT (the CLI prints it and exits 3).
TENSORRT_MISSING = "TensorRT not found: install edgetl[tensorrt] or use JetPack's python3-libnvinfer"
#: The oldest TensorRT major version edgetl builds and runs engines with (the ``tensorrt`` extra's pin).
MIN_TENSORRT_MAJOR = 10


class TensorRTError(EdgetlError):
    """TensorRT refused an engine or failed at run time."""

    exit_code = 2


def import_tensorrt() -> Any:
    """``import tensorrt`` or raise `MissingDependencyError` (exit 3) with `TENSORRT_MISSING`."""
    try:
        return lazy.load(tensorrt)
    except MissingDependencyError as exc:
        raise MissingDependencyError(TENSORRT_MISSING) from exc


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, imported now: `MissingDependencyError` (exit 3) when it is missing, and
    `EnvironmentMissingError` for releases older than `MIN_TENSORRT_MAJOR`, each saying what to install.
    Entry points (building, opening an engine) call it first; the helpers below use the module proxy."""
    trt = import_tensorrt()
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TENSORRT_MAJOR:
        raise EnvironmentMissingError(
            f"TensorRT {version} is too old: edgetl needs TensorRT {MIN_TENSORRT_MAJOR} or newer",
            hint="install edgetl[tensorrt] (tensorrt>=10) or move to JetPack 6.1+, or use the ONNX Runtime backend",
        )
    return trt


_LOGGERS: dict[int, tuple[Any, Any]] = {}
_LOGGER_LOCK = threading.Lock()


def get_logger() -> Any:
    """One process-wide TensorRT logger that also keeps the last errors for our messages.

    TensorRT reports why a parse, build or deserialisation failed only through its logger, so the
    messages are kept (``logger.recent``) and quoted in the exception we raise.
    """
    trt = import_tensorrt()  # the real module: a test may swap in another, and each gets its own logger class
    with _LOGGER_LOCK:
        known = _LOGGERS.get(id(trt))
        if known is not None and known[0] is trt:
            return known[1]

        class _RecordingLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.recent: list[str] = []
                self.min_severity = trt.ILogger.Severity.WARNING

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(self.min_severity):
                    self.recent.append(f"[{getattr(severity, 'name', severity)}] {msg}")
                    del self.recent[:-50]

            def take(self) -> str:
                text = "; ".join(self.recent[-5:])
                self.recent.clear()
                return text

        logger = _RecordingLogger()
        _LOGGERS[id(trt)] = (trt, logger)
        return logger


# --------------------------------------------------------------------------------------------------
# Batch planning (pure; unit-tested without TensorRT)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of the caller's batch, run as one engine batch of ``size`` (>= stop-start)."""

    start: int
    stop: int
    size: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(n: int, min_batch: int, max_batch: int) -> list[Chunk]:
    """Split ``n`` rows into engine batches within ``[min_batch, max_batch]``.

    Full chunks of ``max_batch``; the remainder runs at its own size when the profile allows it, else
    it is zero-padded up to ``min_batch`` (the padded rows' outputs are dropped).

    Args:
        n: rows in the caller's batch (>= 1).
        min_batch, max_batch: the engine's batch range (equal for a static-batch engine).
    """
    if n < 1:
        raise BadInputError("empty batch: nothing to run")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"bad batch range [{min_batch}, {max_batch}]")
    chunks = []
    start = 0
    while start < n:
        rows = min(max_batch, n - start)
        chunks.append(Chunk(start, start + rows, max(rows, min_batch)))
        start += rows
    return chunks


# --------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------
@dataclass
class _Slot:
    """One execution context with its own stream and buffers (borrowed by one caller at a time)."""

    index: int
    context: Any
    stream: Any
    handle: int
    device: dict[str, DeviceBuffer] = field(default_factory=dict)
    host: dict[str, HostBuffer] = field(default_factory=dict)
    batch: int = -1
    out_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    graph: Any = None
    runs: int = 0


class TensorRTBackend(Backend):
    """Run a TensorRT engine file.

    Args:
        artifact: path of the serialized engine (``engines/*.engine`` in a bundle).
        device: CUDA device index.
        contexts: execution contexts in the pool (concurrent callers). Default: one per optimisation
            profile for a dynamic-batch engine, else 1.
        cuda_graph: capture batch-1 inference (copies + kernels) in a CUDA graph and replay it, which
            removes launch overhead for single-image latency.
        cuda: ``"auto"`` (cuda-python, else torch), ``"cuda-python"``, ``"torch"`` or a `CudaApi`.
        allow_host_code: let TensorRT run the lean runtime embedded in a version-compatible engine
            (``runtime.engine_host_code_allowed``). None (default): when the engine's compatibility
            key in the manifest of the bundle holding it says ``host_code``; an engine no manifest
            vouches for gets no host code. Whatever is passed, ``EDGETL_TRT_ALLOW_HOST_CODE=0`` wins.

    Raises:
        TensorRTError: the engine does not deserialise here, or it needs host code the policy forbids.
        EnvironmentMissingError: TensorRT is older than 10.
    """

    name = "tensorrt"

    def __init__(
        self,
        artifact: str | Path,
        device: int = 0,
        *,
        contexts: int | None = None,
        cuda_graph: bool = False,
        cuda: str | CudaApi = "auto",
        allow_host_code: bool | None = None,
    ) -> None:
        super().__init__(artifact)
        self._closed = True
        self._slots: list[_Slot] = []
        if not self.artifact.is_file():
            raise BadInputError(f"TensorRT engine not found: {self.artifact}")
        trt = require_tensorrt()
        from edgetl.runtime.compat import HOST_CODE_ENV, host_code_allowed, host_code_refusal, needs_host_code

        if allow_host_code is None:
            key = engine_compat_key(self.artifact)
            allow_host_code = key is not None and needs_host_code(key)
        if allow_host_code and not host_code_allowed():
            raise TensorRTError(
                host_code_refusal(str(self.artifact)),
                hint=f"rebuild the engine without --version-compat, unset {HOST_CODE_ENV}, or use ONNX Runtime",
            )
        self.host_code = bool(allow_host_code)
        self.device_index = device
        self.cuda = get_cuda_api(cuda)
        self.cuda.set_device(device)
        self.logger = get_logger()
        self.runtime = trt.Runtime(self.logger)
        if self.host_code:
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if self.engine is None:
            details = self.logger.take() or "no details from TensorRT"
            hint = "engines are tied to a GPU and a TensorRT version: rebuild it here with `edgetl compile`"
            if "host code" in details and not self.host_code:
                hint = ("a version-compatible engine needs host code allowed: open it from its bundle (the "
                        "manifest's compat key says so) or pass allow_host_code=True for an engine you trust")
            raise TensorRTError(
                f"{self.artifact}: TensorRT {trt.__version__} cannot deserialize this engine ({details})", hint=hint
            )
        self._inspect_io()
        self.cuda_graph = bool(cuda_graph) and self.min_batch <= 1
        n_ctx = self._context_count(contexts)
        self._pool: queue.Queue[_Slot] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        try:
            for i in range(n_ctx):
                slot = self._make_slot(i)
                self._slots.append(slot)
                self._pool.put(slot)
        except BaseException:
            self.close()
            raise

    # -- setup ---------------------------------------------------------------------------------
    def _inspect_io(self) -> None:
        trt, engine = tensorrt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise TensorRTError(f"{self.artifact}: expected one input tensor, found {inputs}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n != self.input_name]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        if any(d < 0 for d in shape[1:]):
            raise TensorRTError(f"{self.artifact}: only the batch dimension may be dynamic, input shape is {shape}")
        self.sample_shape = shape[1:]
        self.dynamic = shape[0] < 0
        self.num_profiles = int(getattr(engine, "num_optimization_profiles", 1) or 1)
        if self.dynamic:
            lo, _opt, hi = engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        else:
            self.min_batch = self.max_batch = shape[0]
        self.input_shape = [-1 if self.dynamic else shape[0], *self.sample_shape]

    def _context_count(self, requested: int | None) -> int:
        if self.dynamic:
            if requested is not None and requested > self.num_profiles:
                raise BadInputError(
                    f"{requested} contexts requested but the engine has {self.num_profiles} optimisation "
                    "profile(s); each concurrent context of a dynamic-batch engine needs its own",
                    hint="rebuild with `edgetl compile --contexts N`",
                )
            return requested or self.num_profiles
        return max(1, requested or 1)

    def _make_slot(self, index: int) -> _Slot:
        context = self.engine.create_execution_context()
        if context is None:
            raise TensorRTError(f"TensorRT could not create an execution context ({self.logger.take()})")
        stream = self.cuda.create_stream()
        slot = _Slot(index, context, stream, self.cuda.stream_handle(stream))
        if self.dynamic and not context.set_optimization_profile_async(index, slot.handle):
            raise TensorRTError(f"cannot select optimisation profile {index} ({self.logger.take()})")
        self._set_batch(slot, self.max_batch)
        for name in [self.input_name, *self.output_names]:
            shape = (self.max_batch, *self.sample_shape) if name == self.input_name else slot.out_shapes[name]
            if any(d < 0 for d in shape):
                raise TensorRTError(f"output {name!r} has a data-dependent shape {shape}; not supported")
            host = self.cuda.alloc_host(tuple(shape), self.dtypes[name])
            slot.host[name] = host
            slot.device[name] = self.cuda.alloc_device(host.nbytes)
            if not context.set_tensor_address(name, slot.device[name].ptr):
                raise TensorRTError(f"cannot bind tensor {name!r} ({self.logger.take()})")
        return slot

    def _set_batch(self, slot: _Slot, batch: int) -> None:
        if slot.batch == batch:
            return
        shape = (batch, *self.sample_shape)
        if (self.dynamic or slot.batch < 0) and not slot.context.set_input_shape(self.input_name, shape):
            raise TensorRTError(
                f"TensorRT rejected batch {batch} (profile allows {self.min_batch}..{self.max_batch}): "
                f"{self.logger.take()}"
            )
        slot.out_shapes = {n: tuple(int(d) for d in slot.context.get_tensor_shape(n)) for n in self.output_names}
        slot.batch = batch
        if slot.graph is not None:  # a captured graph is only valid for the shapes it was captured with
            self.cuda.free_graph(slot.graph)
            slot.graph = None

    # -- inference -----------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("backend is closed")
        batch = np.asarray(batch)
        if batch.ndim != len(self.sample_shape) + 1 or tuple(batch.shape[1:]) != self.sample_shape:
            raise BadInputError(
                f"input shape {tuple(batch.shape)} does not match the engine's "
                f"(N, {', '.join(map(str, self.sample_shape))})"
            )
        chunks = plan_chunks(batch.shape[0], self.min_batch, self.max_batch)
        if self.device_index:  # the CUDA runtime's current device is per thread
            self.cuda.set_device(self.device_index)
        slot = self._pool.get()
        try:
            parts = [self._run_chunk(slot, batch[c.start : c.stop], c.size) for c in chunks]
        finally:
            self._pool.put(slot)
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _run_chunk(self, slot: _Slot, rows: np.ndarray, size: int) -> dict[str, np.ndarray]:
        n = rows.shape[0]
        self._set_batch(slot, size)
        host_in = slot.host[self.input_name].array
        host_in[:n] = rows
        if size > n:
            host_in[n:size] = 0
        in_bytes = size * int(np.prod(self.sample_shape)) * self.dtypes[self.input_name].itemsize
        out_bytes = {n: int(np.prod(slot.out_shapes[n])) * self.dtypes[n].itemsize for n in self.output_names}
        if slot.graph is not None:
            self.cuda.launch_graph(slot.graph, slot.stream)
        else:
            self._enqueue(slot, in_bytes, out_bytes)
            if self.cuda_graph and size == 1 and slot.runs >= 1:
                self._capture(slot, in_bytes, out_bytes)
        self.cuda.synchronize(slot.stream)
        slot.runs += 1
        outputs = {}
        for name in self.output_names:
            shape = slot.out_shapes[name]
            flat = slot.host[name].array.reshape(-1)[: int(np.prod(shape))]
            outputs[name] = flat.reshape(shape)[:n].copy()
        return outputs

    def _enqueue(self, slot: _Slot, in_bytes: int, out_bytes: dict[str, int]) -> None:
        self.cuda.htod(slot.device[self.input_name], slot.host[self.input_name], in_bytes, slot.stream)
        if not slot.context.execute_async_v3(slot.handle):
            raise TensorRTError(f"TensorRT inference failed ({self.logger.take() or 'no details'})")
        for name in self.output_names:
            self.cuda.dtoh(slot.host[name], slot.device[name], out_bytes[name], slot.stream)

    def _capture(self, slot: _Slot, in_bytes: int, out_bytes: dict[str, int]) -> None:
        """Record copy-in, enqueue and copy-out for batch 1 (after one normal run, as TensorRT asks)."""
        self.cuda.synchronize(slot.stream)
        self.cuda.begin_capture(slot.stream)
        try:
            self._enqueue(slot, in_bytes, out_bytes)
        finally:
            graph = self.cuda.end_capture(slot.stream)
        slot.graph = graph

    # -- description and cleanup ---------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "artifact": str(self.artifact),
            "tensorrt_version": str(tensorrt.__version__),
            "device": self.device_index,
            "cuda_api": self.cuda.name,
            "input": {"name": self.input_name, "shape": self.input_shape},
            "outputs": self.output_names,
            "batch_range": [self.min_batch, self.max_batch],
            "contexts": len(self._slots),
            "cuda_graph": self.cuda_graph,
            "host_code": self.host_code,
        }

    def close(self) -> None:
        if getattr(self, "_closed", True) and not self._slots:
            return
        self._closed = True
        for slot in self._slots:
            with contextlib.suppress(EdgetlError):
                self.cuda.synchronize(slot.stream)
            if slot.graph is not None:
                self.cuda.free_graph(slot.graph)
            for buf in slot.device.values():
                self.cuda.free_device(buf)
            for hbuf in slot.host.values():
                self.cuda.free_host(hbuf)
            self.cuda.destroy_stream(slot.stream)
            slot.context = None
        self._slots = []
        self.engine = None


# --------------------------------------------------------------------------------------------------
# Opening a bundle's engine (which engine: `edgetl.runtime.artifacts.select_engine`)
# --------------------------------------------------------------------------------------------------
def engine_compat_key(engine: Path, levels: int = 3) -> dict[str, Any] | None:
    """The compatibility key the manifest of the bundle holding ``engine`` records for it, or None.

    Looks in the engine's directory and up to ``levels - 1`` parents for a ``manifest.json`` whose
    artifacts list this file, so that a caller holding only a path (``edgetl validate --model
    engines/x.engine``) opens the engine the way its bundle says.
    """
    target = engine.resolve()
    for root in list(target.parents)[:levels]:
        manifest = root / "manifest.json"
        if not manifest.is_file():
            continue
        try:
            artifacts = json.loads(manifest.read_text(encoding="utf-8")).get("artifacts") or []
        except (OSError, ValueError, AttributeError):
            continue
        for entry in artifacts:
            path, compat = (entry.get("path"), entry.get("compat")) if isinstance(entry, dict) else (None, None)
            if isinstance(path, str) and isinstance(compat, dict) and (root / path).resolve() == target:
                return compat
    return None


def open_engine_or_fallback(
    bundle: Bundle,
    precision: str = "best",
    *,
    device: int = 0,
    cuda_graph: bool = False,
    contexts: int | None = None,
) -> tuple[Backend, str]:
    """The TensorRT engine that matches this machine, else ONNX Runtime on the bundle's ONNX graph.

    The ONNX Runtime fallback keeps the TensorRT execution provider's engine cache inside the bundle
    (``engines/ort-trt-cache``), so a device that has TensorRT libraries but no matching engine still
    builds its engines only once.

    Returns:
        ``(backend, reason)`` with the reason the runtime reports in ``describe()``.
    """
    from edgetl.runtime.artifacts import fallback_onnx, select_engine
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgetl.runtime.compat import ORT_TRT_CACHE_DIR, needs_host_code

    artifact, reason = select_engine(bundle, precision, device=device)
    if artifact is not None:
        try:
            backend = TensorRTBackend(
                bundle.path_of(artifact),
                device,
                contexts=contexts,
                cuda_graph=cuda_graph,
                allow_host_code=needs_host_code(artifact.compat),
            )
            return backend, f"TensorRT engine {artifact.path}: {reason}"
        except EdgetlError as exc:
            reason = f"{artifact.path} matched but did not load ({exc.message})"
    onnx = fallback_onnx(bundle, precision)
    backend = OnnxRuntimeBackend(bundle.path_of(onnx), device="auto", trt_cache_dir=bundle.root / ORT_TRT_CACHE_DIR)
    return backend, f"{reason}; falling back to ONNX Runtime on {onnx.path}"
