"""`Predictor`: a bundle, one backend, and the bundle's own pre- and post-processing.

Images go through `edgetl.preprocess` (the one implementation, driven by the manifest's spec), are
batched within the model's batch limit, run on the backend, and come back as typed results.
One predictor may be shared by many threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bundle.manifest import Bundle, open_bundle
from edgetl.errors import BadInputError, EdgetlError
from edgetl.preprocess import DEFAULT_MAX_PIXELS, preprocess
from edgetl.runtime import extensions
from edgetl.runtime.backends.base import Backend
from edgetl.runtime.results import ClassificationResult, PredictionError
from edgetl.runtime.select import Choice, choose

#: Batch size used when the model accepts any batch (dynamic batch axis, ONNX Runtime).
DEFAULT_MAX_BATCH = 16


def load(
    bundle: str | Path | Bundle,
    backend: str = "auto",
    precision: str = "best",
    device: str = "auto",
    verify: bool = True,
    *,
    artifact: str | None = None,
    checkpoint: str | Path | None = None,
    threads: int = 0,
    max_batch: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Predictor:
    """Open a bundle and load the model on the best (or the requested) backend.

    Args:
        bundle: a bundle directory or an open `Bundle`.
        backend: ``auto`` (TensorRT engine -> ONNX Runtime GPU -> ONNX Runtime CPU), ``onnxruntime``,
            ``tensorrt`` or ``torch`` (reference only; needs PyTorch and a checkpoint).
        precision: ``best`` (see `edgetl.runtime.select`), ``fp32``, ``fp16`` or ``int8``.
        device: ``auto``, ``cpu`` or ``cuda``.
        verify: check every artifact's sha256 before loading (skip only for trusted bundles).
        artifact: load this artifact path (relative to the bundle) instead of choosing one.
        checkpoint: the training checkpoint for ``backend="torch"`` when the bundle carries none.
        threads: intra-op threads for ONNX Runtime (0: its default).
        max_batch: largest batch sent to the backend (default: the model's limit, at most 16).
        max_pixels: refuse larger input images before decoding them.

    Raises:
        BundleError: the bundle is malformed, corrupt, or lacks the requested precision (exit 2).
        EnvironmentMissingError: the requested device/backend is not available here (exit 3).
    """
    if isinstance(bundle, Bundle):
        if verify:
            bundle.verify()
    else:
        bundle = open_bundle(bundle, verify=verify)
    picked = choose(bundle, backend=backend, precision=precision, device=device, artifact=artifact,
                    checkpoint=checkpoint)
    engine = _open_backend(bundle, picked, threads)
    return Predictor(bundle, engine, picked, max_batch=max_batch, max_pixels=max_pixels)


def _open_backend(bundle: Bundle, picked: Choice, threads: int) -> Backend:
    path = bundle.path_of(picked.artifact)
    if picked.backend == "onnxruntime":
        from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

        cache = bundle.root / "engines" / "ort-trt-cache"
        return OnnxRuntimeBackend(path, device=picked.device, threads=threads, trt_cache_dir=cache)
    if picked.backend == "tensorrt":
        from edgetl.runtime.backends.tensorrt import TensorRTBackend
        from edgetl.runtime.compat import needs_host_code

        # A version-compatible engine runs host code; its compatibility key says so (policy permitting).
        return TensorRTBackend(path, allow_host_code=needs_host_code(picked.artifact.compat))
    return extensions.require_backend(picked.backend)(path, device=picked.device, threads=threads)


def artifact_postprocess(bundle: Bundle, artifact: Any) -> dict[str, Any]:
    """The manifest's postprocess section, with what one artifact overrides in ``info["postprocess"]``.

    A TensorRT engine compiled with ``--nms trt`` ends in EfficientNMS, so its outputs take the
    ``nms`` layout while the bundle's ONNX graphs keep ``boxes_scores``.
    """
    spec = dict(bundle.manifest.get("postprocess") or {})
    info = getattr(artifact, "info", None)
    override = info.get("postprocess") if isinstance(info, dict) else None
    if isinstance(override, dict):
        spec.update(override)
    return spec


def _source_name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__}>"


class Predictor:
    """Run a bundle's model on images. Create it with `edgetl.runtime.load`.

    Attributes:
        bundle: the open `Bundle`.
        task: ``classify`` or ``detect``.
        labels: class names in output order.
        input_name, output_names: the model's tensor names.
        input_shape: ``[batch, 3, height, width]`` (batch is the largest batch sent at once).
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        choice: Choice,
        *,
        max_batch: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.choice = choice
        self.task = bundle.task
        self.labels = bundle.labels
        self.spec = bundle.preprocess
        self.postprocess = artifact_postprocess(bundle, choice.artifact)
        self.input_name = backend.input_name
        self.output_names = list(backend.output_names)
        self.max_pixels = max_pixels
        limit = self._model_batch_limit()
        self.max_batch = max(1, min(max_batch or limit, limit))
        h, w = self.spec.size
        self.input_shape = [self.max_batch, 3, h, w]
        # ONNX Runtime sessions are thread-safe; other backends (TensorRT contexts, torch) get a lock.
        self._lock = threading.Lock() if backend.name != "onnxruntime" else None
        self._closed = False

    def _model_batch_limit(self) -> int:
        limit = getattr(self.backend, "max_batch", None)
        if isinstance(limit, int) and limit > 0:
            return limit
        shape = getattr(self.backend, "input_shape", None)
        if shape and isinstance(shape[0], int) and shape[0] > 0:
            return shape[0]
        if not self.bundle.manifest.get("input", {}).get("dynamic_batch", True):
            return 1
        return int(self.bundle.manifest.get("input", {}).get("max_batch") or DEFAULT_MAX_BATCH)

    # -- raw batches -----------------------------------------------------------------------
    def predict_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a preprocessed ``NCHW`` float32 batch; returns raw outputs by name.

        Larger batches than the model accepts are split and the outputs concatenated.
        """
        self._check_open()
        batch = np.asarray(batch, dtype=np.float32)
        h, w = self.spec.size
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise BadInputError(f"expected an N x 3 x {h} x {w} float32 batch, got shape {batch.shape}")
        if batch.shape[0] == 0:
            raise BadInputError("empty batch")
        parts = [self._infer(batch[i : i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._lock is None:
            return self.backend.infer(batch)
        with self._lock:
            return self.backend.infer(batch)

    # -- images ----------------------------------------------------------------------------
    def predict(self, x: Any, top_k: int = 5, bgr: bool = False, *, on_error: str = "raise") -> Any:
        """Predict one image or a list of images.

        Args:
            x: a path, encoded bytes, a PIL image, an ``HxWx3`` uint8 array (RGB), or a list of them.
            top_k: how many classes to return in ``top_k`` (classification).
            bgr: numpy arrays are in BGR order (OpenCV).
            on_error: ``raise`` the first bad input's `BadInputError`, or ``return`` a `PredictionError`
                in its place and predict the rest.

        Returns:
            A `ClassificationResult` or a detection result for one input; a list for a list.
        """
        if on_error not in ("raise", "return"):
            raise BadInputError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        single = not isinstance(x, (list, tuple))
        sources: Sequence[Any] = [x] if single else list(x)
        results: list[Any] = [None] * len(sources)
        arrays: list[np.ndarray] = []
        infos: list[Any] = []
        where: list[int] = []
        for i, source in enumerate(sources):
            try:
                chw, info = preprocess(source, self.spec, bgr=bgr, max_pixels=self.max_pixels)
            except EdgetlError as exc:
                if on_error == "raise":
                    raise
                results[i] = PredictionError(_source_name(source), str(exc))
                continue
            arrays.append(chw)
            infos.append(info)
            where.append(i)
        if arrays:
            outputs = self.predict_batch(np.stack(arrays))
            for i, result in zip(where, self._postprocess(outputs, infos, top_k)):
                results[i] = result
        return results[0] if single else results

    def _postprocess(self, outputs: dict[str, np.ndarray], infos: list[Any], top_k: int) -> list[Any]:
        if self.task == "detect":
            from edgetl.runtime.detection import postprocess_detections

            return list(postprocess_detections(outputs, self.postprocess, infos, self.labels))
        name = "logits" if "logits" in outputs else self.output_names[0]
        scores = np.asarray(outputs[name], dtype=np.float32).reshape(len(infos), -1)
        if self.postprocess.get("type", "softmax") == "softmax":
            shifted = scores - scores.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            scores = exp / exp.sum(axis=1, keepdims=True)
        k = max(1, min(int(top_k), scores.shape[1]))
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:k]
            top = [(self._label(int(j)), float(row[j])) for j in order]
            results.append(ClassificationResult(top[0][0], int(order[0]), top[0][1], top))
        return results

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    # -- lifecycle ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What runs where and why: backend, artifact, precision, providers, batch limit, reason."""
        info = self.backend.describe() if not self._closed else {}
        return {
            "bundle": str(self.bundle.root),
            "name": self.bundle.name,
            "task": self.task,
            "backend": self.choice.backend,
            "artifact": self.choice.artifact.path,
            "precision": self.choice.artifact.precision,
            "device": self.choice.device,
            "providers": info.get("providers", []),
            "max_batch": self.max_batch,
            "input_shape": self.input_shape,
            "why": self.choice.reason,
            "details": info,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise BadInputError("this predictor is closed; load the bundle again")

    def close(self) -> None:
        """Free the backend's sessions and device memory. Idempotent."""
        if not self._closed:
            self._closed = True
            self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({self.bundle.name!r}, {self.choice.backend}, {self.choice.artifact.path})"
