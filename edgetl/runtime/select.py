"""Which backend runs a bundle here: the ``auto`` fallback order, and the reason it gives.

Policy (docs/architecture.md): a TensorRT engine built for this GPU -> ONNX Runtime with the best usable
providers (TensorRT EP, CUDA EP) -> ONNX Runtime on CPU. Which artifact each backend runs, and what the
precision ``best`` means there, is `edgetl.runtime.artifacts` (the one resolver every stage uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl import lazy
from edgetl.bundle.manifest import Artifact, Bundle
from edgetl.errors import BadInputError, BundleError, EnvironmentMissingError
from edgetl.lazy import lazy_import
from edgetl.runtime import artifacts

trt_backend = lazy_import("edgetl.runtime.backends.tensorrt", "tensorrt", purpose="TensorRT engines")

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
PRECISIONS = artifacts.PRECISION_CHOICES
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
            engine, why = artifacts.select_engine(bundle, precision=precision)
            if engine is not None:
                return Choice("tensorrt", engine, "cuda", f"TensorRT engine {engine.path}: {why}")
        if backend == "tensorrt":
            raise EnvironmentMissingError(f"cannot use the TensorRT backend: {why}",
                                          hint="run `edgetl compile` on this device, or use --backend onnxruntime")
        trt_note = f"; no TensorRT engine ({why})"
    elif backend == "tensorrt":
        raise BadInputError("the TensorRT backend needs a GPU; it cannot run with --device cpu")
    ort_device, on_gpu = _onnx_device(device)
    chosen, why = artifacts.select_onnx(bundle, precision, on_gpu=on_gpu)
    where = "GPU providers" if on_gpu else "CPU"
    return Choice("onnxruntime", chosen, ort_device, f"ONNX Runtime on {where}, {chosen.path}: {why}{trt_note}")


def _choose_artifact(bundle: Bundle, path: str, device: str) -> Choice:
    art = artifacts.artifact_at(bundle, path)
    if art is None:
        raise BadInputError(f"{bundle.root}: no artifact {path!r} in the bundle",
                            hint="`edgetl info BUNDLE` lists the artifacts")
    backend = _KIND_BACKEND.get(art.kind)
    if backend is None:
        raise BadInputError(f"{art.path} is a {art.kind} artifact, not a runnable model")
    if backend == "onnxruntime":
        dev, _ = _onnx_device(device)
    else:
        dev = "cuda" if backend == "tensorrt" else ("cpu" if device == "auto" else device)
    return Choice(backend, art, dev, f"artifact {art.path} requested")


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
