"""The golden smoke test run: every runnable artifact of a bundle on its saved inputs, against the reference.

The samples, the tolerance table and the comparison are the bundle's (`edgetl.bundle.check`); running
artifacts needs backends, so the run lives here, in the runtime, above the bundle layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.bundle.check import compare_outputs, load_golden, tolerance_for
from edgetl.bundle.manifest import Artifact, Bundle, open_bundle
from edgetl.errors import BundleError, EnvironmentMissingError
from edgetl.runtime import artifacts
from edgetl.runtime.predictor import load

_KINDS = {"auto": ("onnx", "engine"), "onnxruntime": ("onnx",), "tensorrt": ("engine",), "torch": ("checkpoint",)}


def _candidates(bundle: Bundle, backend: str, precision: str) -> list[Artifact]:
    return artifacts.matching(bundle, _KINDS.get(backend, ("onnx",)), precision)


def check(
    bundle_dir: str | Path | Bundle,
    backend: str = "auto",
    precision: str = "all",
    *,
    device: str = "auto",
    verify: bool = True,
) -> dict[str, Any]:
    """Smoke-test runnable artifacts of a bundle against its golden samples.

    Args:
        bundle_dir: a bundle directory or an open `Bundle`.
        backend: ``auto`` (every ONNX model, and engines when TensorRT is usable), ``onnxruntime``,
            ``tensorrt`` or ``torch``.
        precision: ``all`` or one of ``fp32``, ``fp16``, ``int8``.
        device: device for the backends (``auto``, ``cpu``, ``cuda``).
        verify: check artifact hashes first.

    Returns:
        ``{"bundle", "passed", "results": [{artifact, precision, backend, tolerance, outputs, passed,
        failures | skipped}]}``. An engine that cannot run here (no TensorRT/GPU) is reported as
        skipped, not failed.
    """
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else open_bundle(bundle_dir, verify=verify)
    x, reference = load_golden(bundle)
    results: list[dict[str, Any]] = []
    candidates = _candidates(bundle, backend, precision)
    if not candidates:
        raise BundleError(f"{bundle.root}: no {precision} artifact for backend {backend} in the bundle")
    for art in candidates:
        entry: dict[str, Any] = {"artifact": art.path, "precision": art.precision, "kind": art.kind}
        tol = tolerance_for(bundle, art.precision)
        entry["tolerance"] = tol
        try:
            predictor = load(bundle, artifact=art.path, device=device, verify=False)
        except EnvironmentMissingError as exc:
            entry.update(skipped=exc.message, passed=None)
            results.append(entry)
            continue
        with predictor:
            entry["backend"] = predictor.choice.backend
            entry.update(compare_outputs(predictor.predict_batch(x), reference, tol,
                                         classify=bundle.task == "classify"))
        results.append(entry)
    ran = [r for r in results if r["passed"] is not None]
    return {
        "bundle": str(bundle.root),
        "samples": int(x.shape[0]),
        "passed": bool(ran) and all(r["passed"] for r in ran),
        "results": results,
    }
