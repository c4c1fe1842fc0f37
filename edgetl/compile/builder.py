"""Build TensorRT engines from a bundle's ONNX graphs (``edgetl compile``).

One build:
  1. pick the source graph for the precision (the QDQ graph for INT8 = explicit quantization; the
     FP16 graph on TensorRT 11, where precision lives in the graph; else the FP32 reference),
  2. parse it with TensorRT's ONNX parser, reporting each failing node by index, name and operator,
  3. configure the builder: workspace pool, precision flags (TensorRT 10) or a strongly typed
     network (TensorRT 11), an entropy calibrator for INT8 without a QDQ graph (TensorRT 10 only),
     DLA core with GPU fallback, optimisation profiles for a dynamic batch, optimisation level,
     hardware / version compatibility, and the bundle's timing cache,
  4. serialise the engine to ``engines/<cc>-trt<ver>-<prec>.engine`` atomically and record its
     compatibility key in the manifest,
  5. run it on the bundle's golden samples and record the agreement with the FP32 outputs (a
     version-compatible engine is opened with host code allowed, as its compatibility key says).

Requires TensorRT 10 or newer, like the runtime. TensorRT is imported when a build starts, never at
import time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bundle.manifest import Artifact, Bundle, open_bundle
from edgetl.compile.nms import INFO_NAME, NMS_OUTPUTS, add_efficient_nms, check_nms_request
from edgetl.errors import BadInputError, EnvironmentMissingError, GateFailedError
from edgetl.fileio import write_bytes
from edgetl.lazy import lazy_import
from edgetl.runtime import artifacts
from edgetl.runtime.backends.tensorrt import TensorRTError, get_logger, require_tensorrt
from edgetl.runtime.compat import (
    HOST_CODE_ENV,
    TIMING_CACHE_DIR,
    DeviceInfo,
    compat_key,
    engine_relpath,
    host_code_allowed,
    host_code_refusal,
    needs_host_code,
    probe_device,
    short_version,
)

trt = lazy_import("tensorrt", "tensorrt", purpose="building TensorRT engines")

PRECISIONS = artifacts.PRECISION_CHOICES


@dataclass(frozen=True)
class BuildOptions:
    """Everything that shapes one engine build.

    Args:
        precision: ``fp32``, ``fp16``, ``int8`` or ``best`` (every precision TensorRT may choose from).
        workspace_mb: the builder's workspace memory pool (MiB).
        dla_core: build for this DLA core (Jetson Xavier/Orin), with layers DLA cannot run on the GPU.
        batch: ``(min, opt, max)`` batch sizes of the optimisation profile when the batch is dynamic.
        builder_level: builder optimisation level 0-5; higher builds slower, may run faster.
        hardware_compat: build for every Ampere or newer GPU (``HardwareCompatibilityLevel.AMPERE_PLUS``).
        version_compat: build an engine later TensorRT releases can run (``BuilderFlag.VERSION_COMPATIBLE``).
        contexts: identical optimisation profiles, one per concurrent execution context at run time.
        calib_data: images for INT8 calibration when the bundle has no QDQ graph.
        calib_size: how many calibration images at most.
    """

    precision: str = "fp16"
    workspace_mb: int = 1024
    dla_core: int | None = None
    batch: tuple[int, int, int] = (1, 8, 32)
    builder_level: int = 3
    hardware_compat: bool = False
    version_compat: bool = False
    contexts: int = 2
    calib_data: str | Path | None = None
    calib_size: int = 300

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise BadInputError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.workspace_mb <= 0:
            raise BadInputError(f"--workspace must be a positive number of MiB, got {self.workspace_mb}")
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise BadInputError(f"--batch must be min,opt,max with 1 <= min <= opt <= max, got {lo},{opt},{hi}")
        if not 0 <= self.builder_level <= 5:
            raise BadInputError(f"--builder-level must be 0..5, got {self.builder_level}")
        if self.contexts < 1:
            raise BadInputError(f"--contexts must be >= 1, got {self.contexts}")
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise BadInputError(f"--dla-core must be >= 0, got {self.dla_core}")
            if self.precision == "fp32":
                raise BadInputError(
                    "DLA runs FP16 and INT8 only: use --precision fp16, int8 or best with --dla-core"
                )
            if lo != hi:
                raise BadInputError(
                    f"DLA engines need a fixed batch, got --batch {lo},{opt},{hi}",
                    hint="pass --batch N,N,N (e.g. --batch 1,1,1) with --dla-core",
                )
            if self.hardware_compat:
                raise BadInputError(
                    "--hardware-compat engines run on the GPU only; drop --dla-core or --hardware-compat"
                )


@dataclass
class CompileResult:
    """What `compile_bundle` built.

    Attributes:
        bundle_dir: the bundle.
        engine: path of the engine file.
        artifact: the manifest entry (with ``compat`` and ``info``).
        golden: agreement with the FP32 golden outputs (``passed`` may be None when there are none).
        seconds: build time.
        notes: decisions the user should know about (source graph, skipped options).
    """

    bundle_dir: Path
    engine: Path
    artifact: Artifact
    golden: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle_dir),
            "engine": str(self.engine),
            "precision": self.artifact.precision,
            "compat": self.artifact.compat,
            "bytes": self.artifact.bytes,
            "build_seconds": round(self.seconds, 2),
            "golden": self.golden,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------------
# Precision plan
# --------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    source: Artifact
    flags: list[str]
    strongly_typed: bool
    calibrate: bool
    effective: str
    notes: list[str]


def weak_typing_supported() -> bool:
    """TensorRT 10 accepts precision builder flags; TensorRT 11 builds strongly typed networks only."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def _qdq_graph(bundle: Bundle) -> Artifact | None:
    found = artifacts.matching(bundle, "onnx", "int8")
    return found[0] if found else None


def plan_precision(bundle: Bundle, precision: str, *, dla: bool = False) -> _Plan:
    """Choose the source graph and builder flags for ``precision`` on this TensorRT."""
    qdq = _qdq_graph(bundle)
    fp16_graph = (artifacts.matching(bundle, "onnx", "fp16") or [None])[0]
    ref = bundle.reference_onnx()
    notes: list[str] = []
    weak = weak_typing_supported()
    if not weak:  # TensorRT 11+: precision is what the graph says
        if precision == "fp32":
            return _Plan(ref, [], True, False, "fp32", notes)
        if precision == "fp16" or (precision == "best" and qdq is None):
            if fp16_graph is None:
                if precision == "best":
                    notes.append("no QDQ or FP16 graph in the bundle: building the FP32 graph")
                    return _Plan(ref, [], True, False, "fp32", notes)
                raise BadInputError(
                    f"TensorRT {trt.__version__} builds strongly typed networks only, and the bundle has no FP16 graph",
                    hint=f"run `edgetl quantize {bundle.root} --precision fp16` first",
                )
            return _Plan(fp16_graph, [], True, False, "fp16", notes)
        if qdq is None:
            raise BadInputError(
                f"TensorRT {trt.__version__} has no INT8 calibration (implicit quantization was removed), "
                "and the bundle has no QDQ graph",
                hint=f"run `edgetl quantize {bundle.root} --precision int8` first",
            )
        notes.append(f"explicit INT8 quantization from {qdq.path}")
        return _Plan(qdq, [], True, False, "int8", notes)

    if precision == "fp32":
        return _Plan(ref, [], False, False, "fp32", notes)
    if precision == "fp16":
        return _Plan(ref, ["FP16"], False, False, "fp16", notes)
    if qdq is not None:
        notes.append(f"explicit INT8 quantization from {qdq.path}")
        flags = ["INT8", "FP16"] if (precision == "best" or dla) else ["INT8"]
        return _Plan(qdq, flags, False, False, "int8", notes)
    if precision == "best":
        notes.append("no QDQ graph: INT8 layers calibrated with TensorRT's entropy calibrator")
    else:
        notes.append("no QDQ graph in the bundle: INT8 by entropy calibration (implicit quantization, "
                     "deprecated in TensorRT 10.1; `edgetl quantize --precision int8` gives a QDQ graph)")
    flags = ["INT8", "FP16"] if (precision == "best" or dla) else ["INT8"]
    return _Plan(ref, flags, False, True, "int8", notes)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------
def parse_onnx(builder: Any, onnx_path: Path, *, strongly_typed: bool) -> tuple[Any, Any]:
    """Create the network and parse ``onnx_path``; a parse failure lists every failing node."""
    flags = 0  # TensorRT 10 networks are explicit-batch always (EXPLICIT_BATCH is deprecated and ignored)
    creation = trt.NetworkDefinitionCreationFlag
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    logger = get_logger()
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    if not ok:
        problems = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BadInputError(
            f"TensorRT's ONNX parser rejected {onnx_path.name} ({len(problems)} error(s)):\n  "
            + "\n  ".join(problems or [logger.take() or "no details"]),
            hint="unsupported operators: re-export with another opset (`edgetl export --opset`), "
            "or simplify the graph; TensorRT's ONNX operator support list names what each version parses",
        )
    return network, parser


def _describe_parser_error(err: Any) -> str:
    parts = []
    node = err.node() if callable(getattr(err, "node", None)) else -1
    if node is not None and int(node) >= 0:
        where = f"node {int(node)}"
        name = err.node_name() if callable(getattr(err, "node_name", None)) else ""
        op = err.node_operator() if callable(getattr(err, "node_operator", None)) else ""
        if name:
            where += f" {name!r}"
        if op:
            where += f" ({op})"
        parts.append(where)
    code = err.code() if callable(getattr(err, "code", None)) else None
    if code is not None:
        parts.append(str(getattr(code, "name", code)))
    parts.append(str(err.desc()))
    return ": ".join(parts)


def network_input(network: Any) -> tuple[str, tuple[int, ...]]:
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise BadInputError(f"the graph has {network.num_inputs} inputs ({names}); edgetl models have one")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape[1:]):
        raise BadInputError(f"input {tensor.name!r} has dynamic non-batch dimensions {shape}; only the batch may vary")
    return tensor.name, shape


# --------------------------------------------------------------------------------------------------
# Builder configuration
# --------------------------------------------------------------------------------------------------
def configure(
    builder: Any,
    network: Any,
    options: BuildOptions,
    plan: _Plan,
    *,
    device: DeviceInfo,
) -> tuple[Any, dict[str, Any]]:
    """A builder config for ``options``; returns it and the optimisation profile recorded in the key."""
    config = builder.create_builder_config()
    workspace = int(options.workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(options.builder_level)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))

    if options.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if options.dla_core >= cores:
            raise EnvironmentMissingError(
                f"--dla-core {options.dla_core} requested but this device has {cores} DLA core(s)",
                hint="DLA exists on Jetson AGX Xavier / Orin (not on Orin Nano); drop --dla-core",
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    if options.hardware_compat:
        if int(device.compute_capability.split(".")[0]) < 8 or device.integrated:
            raise EnvironmentMissingError(
                f"--hardware-compat needs an Ampere or newer discrete GPU; this is {device.name} "
                f"({device.compute_capability})"
            )
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options.version_compat:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)

    name, shape = network_input(network)
    if shape[0] < 0:
        lo, opt, hi = options.batch
        dims = [tuple([b, *shape[1:]]) for b in (lo, opt, hi)]
        for _ in range(options.contexts):
            profile = builder.create_optimization_profile()
            profile.set_shape(name, *dims)
            if config.add_optimization_profile(profile) < 0:
                raise TensorRTError(f"TensorRT rejected the optimisation profile {dims} for {name!r}")
        profile_record = {"input": name, "min": list(dims[0]), "opt": list(dims[1]), "max": list(dims[2]),
                          "count": options.contexts}
    else:
        profile_record = {"input": name, "min": list(shape), "opt": list(shape), "max": list(shape), "count": 1}
    return config, profile_record


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
def compile_bundle(
    bundle_dir: str | Path,
    precision: str = "fp16",
    *,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    batch: tuple[int, int, int] | list[int] = (1, 8, 32),
    builder_level: int = 3,
    hardware_compat: bool = False,
    version_compat: bool = False,
    contexts: int = 2,
    calib_data: str | Path | None = None,
    calib_size: int = 300,
    device: int = 0,
    golden_gate: bool = True,
    nms: str = "keep",
) -> CompileResult:
    """Build a TensorRT engine for this GPU from a bundle and record it in the manifest.

    Args:
        bundle_dir: a bundle made by ``edgetl export`` (and optionally ``edgetl quantize``).
        precision, workspace_mb, dla_core, batch, builder_level, hardware_compat, version_compat,
        contexts, calib_data, calib_size: see `BuildOptions`.
        device: CUDA device index to build for.
        golden_gate: raise `GateFailedError` (exit 1) after recording the engine when it disagrees
            with the golden outputs beyond the manifest's tolerance.
        nms: ``keep`` the graph's outputs as they are, or ``trt``: end a detector's engine in
            TensorRT's EfficientNMS plugin (`edgetl.compile.nms`); the engine then outputs the
            ``nms`` layout and its artifact says so (``info["postprocess"]``).

    Raises:
        MissingDependencyError: TensorRT is not installed (exit 3).
        EnvironmentMissingError: no GPU, no such DLA core, unsupported portability mode (exit 3).
        BadInputError / BundleError: bad options, a bundle without what the precision needs, a graph
            TensorRT cannot parse (exit 2).
    """
    if nms != "keep":  # a usage error is exit 2 whether or not TensorRT is installed
        _check_nms(bundle_dir, nms)
    if version_compat and not host_code_allowed():
        raise BadInputError(
            host_code_refusal("a --version-compat engine"),
            hint=f"build without --version-compat, or unset {HOST_CODE_ENV} where host code is acceptable",
        )
    require_tensorrt()
    batch = tuple(int(b) for b in batch)
    if len(batch) == 1:
        batch = (batch[0], batch[0], batch[0])
    if len(batch) != 3:
        raise BadInputError(f"--batch takes min,opt,max (or one size), got {batch}")
    options = BuildOptions(precision, workspace_mb, dla_core, batch, builder_level,  # type: ignore[arg-type]
                           hardware_compat, version_compat, contexts, calib_data, calib_size)
    options.check()
    bundle = open_bundle(bundle_dir)
    gpu = probe_device(device)
    if gpu is None:
        raise EnvironmentMissingError(
            "no CUDA GPU is visible: TensorRT engines are built on the GPU they will run on",
            hint="run `edgetl compile` on the Jetson / GPU machine itself",
        )

    started = time.perf_counter()
    logger = get_logger()
    from edgetl.compile import torch_cuda  # noqa: F401  (registers the torch fallback where torch is installed)
    from edgetl.runtime.backends.cuda_mem import get_cuda_api

    cuda = get_cuda_api("auto")
    cuda.set_device(device)
    builder = trt.Builder(logger)
    if builder is None:
        raise TensorRTError(f"TensorRT could not create a builder ({logger.take()})")
    plan = plan_precision(bundle, options.precision, dla=options.dla_core is not None)
    if plan.calibrate and options.precision == "best" and not _calibration_possible(bundle, options):
        plan = _Plan(plan.source, ["FP16"], False, False, "fp16",
                     ["no QDQ graph and no calibration images: `best` builds FP16 (pass --calib-data for INT8)"])
    network, _parser = parse_onnx(builder, bundle.path_of(plan.source), strongly_typed=plan.strongly_typed)
    nms_info: dict[str, Any] | None = None
    if nms == "trt":
        nms_info = add_efficient_nms(network, dict(bundle.manifest.get("postprocess") or {}), logger)
        plan.notes.append(f"NMS in the engine: {nms_info['plugin']} (outputs {', '.join(NMS_OUTPUTS)})")
    config, profile = configure(builder, network, options, plan, device=gpu)

    key = compat_key(gpu, trt.__version__, options.precision, profile, dla_core=options.dla_core,
                     hardware_compat=options.hardware_compat, version_compat=options.version_compat)
    rel = engine_relpath(key)
    if nms_info is not None:  # its own file: an NMS engine and a plain one for the same GPU may coexist
        rel = rel[: -len(".engine")] + "-nms.engine"
    timing_path = bundle.root / TIMING_CACHE_DIR / f"{gpu.sm}-trt{short_version(trt.__version__)}.cache"
    timing = _attach_timing_cache(config, timing_path)

    calibrator = None
    calib_info: dict[str, Any] = {}
    if plan.calibrate:
        calibrator, calib_info = _attach_calibrator(builder, config, network, bundle, options, cuda, key)

    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise TensorRTError(
            f"TensorRT failed to build the {options.precision} engine: {logger.take() or 'no details'}",
            hint="try a larger --workspace, a lower --builder-level, or another --precision",
        )
    engine_path = write_bytes(bundle.root / rel, bytes(serialized))
    if timing is not None:
        write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - started

    golden = golden_agreement(engine_path, bundle, plan.effective, device=device,
                              allow_host_code=needs_host_code(key), nms=nms_info is not None)
    info = {
        "source": plan.source.path,
        "flags": plan.flags + (["STRONGLY_TYPED"] if plan.strongly_typed else []),
        "workspace_mb": options.workspace_mb,
        "builder_level": options.builder_level,
        "build_seconds": round(seconds, 2),
        "timing_cache": timing_path.relative_to(bundle.root).as_posix() if timing is not None else None,
        "golden": golden,
        "notes": plan.notes,
    }
    if calib_info:
        info["calibration"] = calib_info
    if nms_info is not None:
        # The runtime post-processes this engine's outputs with the "nms" layout; the ONNX artifacts
        # keep the manifest's "boxes_scores".
        info["nms"] = INFO_NAME
        info["nms_plugin"] = nms_info
        info["postprocess"] = {"outputs": "nms"}
    artifact = bundle.add_artifact(engine_path, kind="engine", precision=plan.effective, created_by="compile",
                                   compat=key, info=info)
    if timing is not None and timing_path.is_file():
        bundle.add_artifact(timing_path, kind="other", created_by="compile",
                            info={"what": "TensorRT timing cache", "gpu": gpu.name})
    bundle.save()
    result = CompileResult(bundle.root, engine_path, artifact, golden, seconds, plan.notes)
    if golden_gate and golden.get("passed") is False:
        raise GateFailedError(
            f"{rel} disagrees with the FP32 golden outputs: {golden.get('summary')}",
            hint="the engine is kept but marked failed, so the runtime will not pick it; "
            "try --precision fp16, or re-quantize with more calibration data",
        )
    return result


def _check_nms(bundle_dir: str | Path, nms: str) -> None:
    bundle = open_bundle(bundle_dir, verify=False)  # hashes are checked when the build opens it again
    check_nms_request(bundle.task, dict(bundle.manifest.get("postprocess") or {}), nms)


def _attach_timing_cache(config: Any, path: Path) -> Any:
    """Load (or start) the bundle's timing cache so later builds reuse measured tactics."""
    if not hasattr(config, "create_timing_cache"):
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        cache = config.create_timing_cache(b"")  # a cache from another TensorRT build: start fresh
        config.set_timing_cache(cache, True)
    return cache


def _attach_calibrator(
    builder: Any, config: Any, network: Any, bundle: Bundle, options: BuildOptions, cuda: Any,
    key: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    from edgetl.compile.calibrator import iter_batches, make_entropy_calibrator

    name, shape = network_input(network)
    calib_batch = min(8, options.batch[2]) if shape[0] < 0 else shape[0]
    cache_rel = _calibration_cache_rel(key["precision"])
    cache_path = bundle.root / cache_rel
    sources = _calibration_sources(bundle, options)
    if not cache_path.is_file() and len(sources) < calib_batch:
        raise BadInputError(
            f"INT8 calibration needs at least {calib_batch} images; found {len(sources)}",
            hint="pass --calib-data DIR (images from the training distribution), "
            f"or run `edgetl quantize {bundle.root} --precision int8` to get a QDQ graph instead",
        )
    batches = iter_batches(sources, bundle.preprocess, calib_batch)
    calibrator = make_entropy_calibrator(cuda, batches, batch_size=calib_batch,
                                         sample_shape=tuple(shape[1:]), cache_path=cache_path)
    config.int8_calibrator = calibrator
    if shape[0] < 0:
        fixed = (calib_batch, *shape[1:])
        profile = builder.create_optimization_profile()
        profile.set_shape(name, fixed, fixed, fixed)
        config.set_calibration_profile(profile)
    return calibrator, {"method": "entropy", "images": len(sources), "batch": calib_batch, "cache": cache_rel}


def _calibration_cache_rel(precision: str) -> str:
    return f"calibration/tensorrt-entropy-{precision}.cache"


def _calibration_possible(bundle: Bundle, options: BuildOptions) -> bool:
    cached = (bundle.root / _calibration_cache_rel(options.precision)).is_file()
    return cached or len(_calibration_sources(bundle, options)) >= min(8, options.batch[2])


def _calibration_sources(bundle: Bundle, options: BuildOptions) -> list[Any]:
    """Calibration images: ``--calib-data``, else what the bundle's ``calibration`` section records."""
    from edgetl.compile.calibrator import list_images

    if options.calib_data is not None:
        if not Path(options.calib_data).exists():
            raise BadInputError(f"--calib-data {options.calib_data}: no such file or directory")
        return list(list_images(options.calib_data, options.calib_size))
    section = bundle.manifest.get("calibration") or {}
    images = section.get("images") if isinstance(section, dict) else None
    if isinstance(images, list):
        paths = [p if Path(p).is_absolute() else bundle.root / p for p in images]
        return [p for p in paths if Path(p).is_file()][: options.calib_size]
    source = section.get("source") if isinstance(section, dict) else None
    if isinstance(source, str) and Path(source).exists():
        return list(list_images(source, options.calib_size))
    return []


# --------------------------------------------------------------------------------------------------
# Golden-sample agreement
# --------------------------------------------------------------------------------------------------
#: Share of the host-NMS detections (on the FP32 golden outputs) an NMS engine must reproduce (same
#: class, IoU >= 0.5), both ways. Lower precisions may move scores across the threshold.
NMS_MIN_AGREEMENT = {"fp32": 0.95, "fp16": 0.9, "int8": 0.8}


def golden_agreement(
    engine_path: Path, bundle: Bundle, precision: str, *, device: int = 0, allow_host_code: bool = False,
    nms: bool = False,
) -> dict[str, Any]:
    """Run the engine on ``golden/input.npy`` and compare with the FP32 outputs under the manifest tolerance.

    An engine with NMS inside (``nms=True``) has other outputs than the graph the golden outputs came
    from: then host NMS runs on the golden ``boxes``/``scores`` and the detections are compared.
    """
    section = bundle.manifest.get("golden")
    if not isinstance(section, dict) or not section.get("input"):
        return {"passed": None, "summary": "the bundle has no golden samples"}
    from edgetl.runtime.backends.tensorrt import TensorRTBackend

    inputs = np.load(bundle.root / section["input"])
    expected = {name: np.load(bundle.root / rel) for name, rel in (section.get("outputs") or {}).items()}
    with TensorRTBackend(engine_path, device, contexts=1, allow_host_code=allow_host_code) as backend:
        got = backend.infer(inputs)
    if nms:
        return compare_detections(got, expected, dict(bundle.manifest.get("postprocess") or {}),
                                  NMS_MIN_AGREEMENT.get(precision, 0.8))
    from edgetl.bundle.check import tolerance_for

    return compare_outputs(got, expected, tolerance_for(bundle, precision), classify=bundle.task == "classify")


def compare_detections(
    got: dict[str, np.ndarray], expected: dict[str, np.ndarray], postprocess: dict[str, Any], min_agreement: float
) -> dict[str, Any]:
    """Detections of an NMS engine vs host NMS on the reference ``boxes``/``scores``, matched box by box."""
    from edgetl.metrics.detection import box_agreement
    from edgetl.runtime.detection import postprocess_detections

    if not {"boxes", "scores"} <= set(expected):
        return {"passed": None, "summary": "the golden outputs have no boxes/scores to compare detections with"}
    samples = int(expected["boxes"].shape[0])
    missing = [n for n in NMS_OUTPUTS if n not in got]
    if missing:
        return {"samples": samples, "passed": False, "summary": f"engine outputs lack {missing}"}
    infos = [None] * samples
    reference = postprocess_detections(expected, {**postprocess, "outputs": "boxes_scores"}, infos)
    candidate = postprocess_detections(got, {**postprocess, "outputs": "nms"}, infos)
    agreement = box_agreement(reference, candidate)
    worst = min(agreement["recall_of_reference"], agreement["precision_vs_reference"])
    passed = worst >= min_agreement
    summary = (f"detections agree with host NMS ({agreement['matched']}/{agreement['reference_boxes']} matched)"
               if passed else f"only {worst:.3f} of the detections agree with host NMS (< {min_agreement})")
    return {"samples": samples, "detections": agreement, "tolerance": {"min_agreement": min_agreement},
            "passed": passed, "summary": summary}


def compare_outputs(
    got: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerance: dict[str, float], *, classify: bool
) -> dict[str, Any]:
    """The bundle's golden comparison (`edgetl.bundle.check.compare_outputs`) with the engine's summary.

    Top-1 agreement gates classifier outputs only; a detector's raw outputs are held to ``max_abs``.
    """
    from edgetl.bundle.check import compare_outputs as compare_golden

    result = compare_golden(got, expected, tolerance, classify=classify)
    failures = result["failures"]
    samples = int(next(iter(expected.values())).shape[0]) if expected else 0
    summary = "; ".join(failures) if failures else (
        "within tolerance" if tolerance else "no tolerance recorded for this precision"
    )
    return {"samples": samples, "outputs": result["outputs"], "tolerance": tolerance, "passed": result["passed"],
            "summary": summary}


__all__ = ["BuildOptions", "CompileResult", "compare_outputs", "compile_bundle", "golden_agreement"]
