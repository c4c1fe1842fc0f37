"""Which artifact runs on which backend: the ``auto`` policy, and the reason it gives.

Policy (docs/architecture.md): a TensorRT engine built for this GPU -> ONNX Runtime with the best usable
providers (TensorRT EP, CUDA EP) -> ONNX Runtime on CPU. The precision ``best`` is the fastest
precision that is safe to use: on a GPU FP16, then an INT8 graph that passed validation, then FP32;
on a CPU an INT8 graph that passed validation *and* runs faster than FP32 there (the CPU format, see
`_fast_on_cpu`), then FP32 (FP16 graphs are slow on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl import lazy
from edgetl.bundle.manifest import Artifact, Bundle
from edgetl.errors import BadInputError, BundleError, EnvironmentMissingError
from edgetl.lazy import lazy_import

trt_backend = lazy_import("edgetl.runtime.backends.tensorrt", "tensorrt", purpose="TensorRT engines")

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
PRECISIONS = ("best", "fp32", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda")
_KIND_BACKEND = {"onnx": "onnxruntime", "engine": "tensorrt", "checkpoint": "torch"}


@dataclass(frozen=True)
class Choice:
    """A resolved backend choice.

    Args:
        backend: ``onnxruntime``, ``tensorrt`` or ``torch``.
        artifact: the bundle artifact to load.
        device: the device argument handed to the backend.
        reason: one sentence saying why, for ``Predictor.describe()`` and the CLI.
    """

    backend: str
    artifact: Artifact
    device: str
    reason: str


def validated_precisions(bundle: Bundle) -> set[str]:
    """Precisions of the artifacts whose current validation record passed (`edgetl.bundle.validation`)."""
    from edgetl.bundle.validation import passed_artifacts

    passed = passed_artifacts(bundle)
    found = {a.precision for a in bundle.artifacts if a.path in passed}
    if "int8" in found or "mixed" in found:
        found |= {"int8", "mixed"}
    return found


def _fast_on_cpu(bundle: Bundle, art: Artifact) -> bool:
    """Whether ONNX Runtime's CPU kernels run this INT8 graph faster than FP32: the CPU format (uint8
    activations, fused into QLinearConv) does; the TensorRT format (symmetric int8 activations) keeps separate
    Q/DQ nodes there and runs at about 0.7x FP32, unless a validation on this bundle measured otherwise."""
    from edgetl.bundle.validation import current

    if (art.info or {}).get("activation_type", "int8") == "uint8":
        return True
    speedup = (current(bundle).get(art.path) or {}).get("speedup_p50")
    return isinstance(speedup, (int, float)) and speedup > 1.0


def _tensorrt_module():
    """``edgetl.runtime.backends.tensorrt`` if both it and ``tensorrt`` import, else ``(None, why)``."""
    if not lazy.available("edgetl.runtime.backends.tensorrt"):
        return None, "this edgetl build has no TensorRT backend"
    if not lazy.available("tensorrt"):
        return None, "TensorRT is not installed (pip install 'edgetl[tensorrt]')"
    try:
        return lazy.load(trt_backend), ""
    except Exception as exc:  # a broken TensorRT install must not stop ONNX Runtime
        return None, f"TensorRT failed to import ({type(exc).__name__}: {exc})"


def _match(bundle: Bundle, kind: str, precision: str) -> list[Artifact]:
    wanted = ("int8", "mixed") if precision == "int8" else (precision,)
    return [a for a in bundle.find(kind=kind) if a.precision in wanted]


def _pick_onnx(bundle: Bundle, precision: str, on_gpu: bool) -> tuple[Artifact, str]:
    onnx = bundle.find(kind="onnx")
    if not onnx:
        raise BundleError(f"{bundle.root}: the bundle has no ONNX model", hint="run `edgetl export` first")
    if precision != "best":
        found = _match(bundle, "onnx", precision)
        if not found:
            have = sorted({a.precision for a in onnx})
            raise BundleError(
                f"{bundle.root}: no {precision} ONNX model in the bundle (it has: {', '.join(have)})",
                hint=f"run `edgetl quantize {bundle.root} --precision {precision}` or pick another --precision",
            )
        return found[0], f"{precision} requested"
    validated = validated_precisions(bundle)
    order = ["fp16", "int8", "fp32"] if on_gpu else ["int8", "fp32"]
    skipped = []
    for prec in order:
        found = _match(bundle, "onnx", prec)
        if not found:
            continue
        if prec == "int8" and "int8" not in validated:
            skipped.append("the INT8 model has not passed `edgetl validate`")
            continue
        if prec == "int8" and not on_gpu and not _fast_on_cpu(bundle, found[0]):
            skipped.append("the INT8 model is in the TensorRT format (symmetric activations), which ONNX Runtime "
                           "runs slower than FP32 on a CPU; `edgetl quantize --target cpu` makes the CPU format")
            continue
        why = {"fp16": "FP16 is the fastest safe precision on a GPU",
               "int8": "the INT8 model passed validation",
               "fp32": "FP32 reference"}[prec]
        if skipped:
            why += f" ({'; '.join(skipped)})"
        return found[0], why
    return onnx[0], "first ONNX model in the bundle"


def _onnx_device(device: str) -> tuple[str, bool]:
    """The ONNX Runtime device string and whether a GPU provider will be used."""
    from edgetl.runtime.backends.onnxruntime import available_providers

    usable = available_providers()
    gpu = "CUDAExecutionProvider" in usable
    if device == "cuda" and not gpu:
        raise EnvironmentMissingError(
            "--device cuda requested, but ONNX Runtime has no usable CUDA provider on this machine "
            f"(usable: {', '.join(usable)})",
            hint="install onnxruntime-gpu with a CUDA/cuDNN matching the driver, or use --device cpu / auto",
        )
    if device == "cpu":
        return "cpu", False
    return ("cuda" if device == "cuda" else "auto"), gpu


def choose(
    bundle: Bundle,
    *,
    backend: str = "auto",
    precision: str = "best",
    device: str = "auto",
    artifact: str | None = None,
    checkpoint: str | Path | None = None,
) -> Choice:
    """Resolve ``backend``/``precision``/``device`` (or one named ``artifact``) into a `Choice`.

    Raises:
        BadInputError: an unknown option value, or the bundle lacks what was asked for (exit 2).
        EnvironmentMissingError: the machine lacks what was asked for: CUDA, TensorRT, torch (exit 3).
    """
    for value, allowed, what in ((backend, BACKENDS, "backend"), (precision, PRECISIONS, "precision"),
                                 (device, DEVICES, "device")):
        if value not in allowed:
            raise BadInputError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    if artifact is not None:
        return _choose_artifact(bundle, artifact, device)
    if backend == "torch":
        return _choose_torch(bundle, device, checkpoint)
    trt_note = ""
    if backend in ("auto", "tensorrt") and device != "cpu":
        module, why = _tensorrt_module()
        if module is not None:
            engine, why = module.select_engine(bundle, precision=precision)
            if engine is not None:
                return Choice("tensorrt", engine, "cuda", f"TensorRT engine {engine.path}: {why}")
        if backend == "tensorrt":
            raise EnvironmentMissingError(f"cannot use the TensorRT backend: {why}",
                                          hint="run `edgetl compile` on this device, or use --backend onnxruntime")
        trt_note = f"; no TensorRT engine ({why})"
    elif backend == "tensorrt":
        raise BadInputError("the TensorRT backend needs a GPU; it cannot run with --device cpu")
    ort_device, on_gpu = _onnx_device(device)
    chosen, why = _pick_onnx(bundle, precision, on_gpu)
    where = "GPU providers" if on_gpu else "CPU"
    return Choice("onnxruntime", chosen, ort_device, f"ONNX Runtime on {where}, {chosen.path}: {why}{trt_note}")


def _choose_artifact(bundle: Bundle, path: str, device: str) -> Choice:
    for art in bundle.artifacts:
        if art.path == path or Path(art.path).name == path:
            backend = _KIND_BACKEND.get(art.kind)
            if backend is None:
                raise BadInputError(f"{art.path} is a {art.kind} artifact, not a runnable model")
            if backend == "onnxruntime":
                dev, _ = _onnx_device(device)
            else:
                dev = "cuda" if backend == "tensorrt" else ("cpu" if device == "auto" else device)
            return Choice(backend, art, dev, f"artifact {art.path} requested")
    raise BadInputError(f"{bundle.root}: no artifact {path!r} in the bundle",
                        hint="`edgetl info BUNDLE` lists the artifacts")


def _choose_torch(bundle: Bundle, device: str, checkpoint: str | Path | None = None) -> Choice:
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise BadInputError(f"checkpoint not found: {checkpoint}")
        art = Artifact(path=str(Path(checkpoint).resolve()), kind="checkpoint")
        return Choice("torch", art, "cpu" if device == "auto" else device, f"PyTorch reference on {checkpoint}")
    found = bundle.find(kind="checkpoint")
    if found:
        return Choice("torch", found[0], "cpu" if device == "auto" else device, "PyTorch reference on the checkpoint")
    ckpt = bundle.manifest.get("provenance", {}).get("checkpoint")
    if isinstance(ckpt, str) and Path(ckpt).is_file():
        art = Artifact(path=str(Path(ckpt).resolve()), kind="checkpoint")
        return Choice("torch", art, "cpu" if device == "auto" else device,
                      f"PyTorch reference on the training checkpoint {ckpt} (not inside the bundle)")
    raise BundleError(f"{bundle.root}: the bundle carries no PyTorch checkpoint for the torch backend",
                      hint="use --backend onnxruntime, or export with the checkpoint included")
