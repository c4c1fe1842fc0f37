"""`validate_bundle`: run reference and candidate on the same images through the same code, then gate.

Both models go through `edgetl.data.imagesets` (the one preprocessing) and a runtime `Backend`
(`OnnxRuntimeBackend` for ONNX, `TensorRTBackend` for ``.engine`` files), so the only difference measured
is the model itself. Task metrics are pluggable (`TASK_METRICS`): ``classify`` lives here, ``detect`` is
provided by ``edgetl.validate.detection.task_metrics``.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import lazy
from edgetl.bundle.manifest import Bundle, open_bundle
from edgetl.data.imagesets import balanced_indices, decode, find_images
from edgetl.errors import BadInputError
from edgetl.fileio import write_json, write_text
from edgetl.lazy import lazy_import
from edgetl.metrics.classification import classification_agreement, latency_stats, topk_accuracy
from edgetl.metrics.gate import GATE_MAX_MAP_DROP, GATE_MAX_TOP1_DROP, GATE_MIN_AGREEMENT
from edgetl.runtime import artifacts

trt_backend = lazy_import("edgetl.runtime.backends.tensorrt", "tensorrt", purpose="TensorRT engines")
detection_metrics = lazy_import("edgetl.validate.detection", "train", purpose="detector validation")

#: task -> fn(bundle, decoded_images, reference_outputs, candidate_outputs, *, max_top1_drop, min_agreement,
#: max_map_drop, data) -> {"metrics", "agreement", "checks"}; a task ignores the gates that are not its own.
TASK_METRICS: dict[str, Callable[..., dict[str, Any]]] = {}


def register_task(task: str, fn: Callable[..., dict[str, Any]]) -> None:
    """Plug in the metrics of a task (see `classify_metrics` for the contract)."""
    TASK_METRICS[task] = fn


@dataclass
class ValidationReport:
    """Outcome of a validation run.

    Attributes:
        passed: every gate check passed.
        checks: ``[{name, value, limit, op, passed}]``.
        reference, candidate: ``{artifact, precision, backend, bytes, latency}``.
        metrics: task metrics of each (``{"reference": {...}, "candidate": {...}, "delta": {...}}``).
        agreement: output agreement (top-1 agreement, cosine, KL, max abs diff).
        images: how many images, from where, undecodable ones.
        numerics: ``{"gate": mode, "modes": {mode: {passed, checks, metrics, agreement}}, "machine": {...}}``:
            the candidate's results in each numerics computed; ``checks``/``metrics``/``agreement`` above are
            those of the gate's mode.
    """

    passed: bool
    checks: list[dict[str, Any]]
    reference: dict[str, Any]
    candidate: dict[str, Any]
    metrics: dict[str, Any]
    agreement: dict[str, Any]
    images: dict[str, Any]
    numerics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": self.checks, "reference": self.reference,
                "candidate": self.candidate, "metrics": self.metrics, "agreement": self.agreement,
                "images": self.images, "numerics": self.numerics, "created_at": self.created_at}


def validate_bundle(
    bundle_dir: str | Path,
    *,
    candidate: str = "int8",
    reference: str = "fp32",
    data: str | Path | None = None,
    limit: int | None = None,
    max_top1_drop: float = GATE_MAX_TOP1_DROP,
    min_agreement: float = GATE_MIN_AGREEMENT,
    max_map_drop: float = GATE_MAX_MAP_DROP,
    backend_device: str = "cpu",
    latency_runs: int = 20,
    seed: int = 0,
    write: bool = True,
    numerics: str = "both",
) -> ValidationReport:
    """Compare a candidate with the reference on validation images and apply the gate.

    Args:
        bundle_dir: the bundle.
        candidate: ``int8`` | ``fp16`` | ``fp32`` | ``mixed``, or a path to an ``.onnx`` / ``.engine`` file.
        reference: ``fp32`` (the bundle's ONNX reference), or a path (``.onnx``, or an edgetl ``.pt``
            checkpoint run in PyTorch).
        data: validation images (a dataset: its validation split; or a folder). Defaults to the dataset
            recorded in the bundle.
        limit: use at most this many images (seeded, class-balanced).
        max_top1_drop: gate: largest allowed top-1 drop, in points.
        min_agreement: gate: smallest allowed top-1 agreement with the reference.
        max_map_drop: gate (detectors): largest allowed mAP@0.5:0.95 drop, in points; ground truth comes
            from ``data`` or the recorded dataset (a data.yaml / COCO JSON).
        backend_device: device of the ONNX Runtime backend (``cpu`` for reproducible numbers).
        latency_runs: batch-1 timing runs per model.
        write: record the result in the manifest (``validation``), ``report.json`` and ``report.md``.
        numerics: how a quantized ONNX candidate is computed: ``exact`` (the QDQ graph's integer-exact
            semantics: TensorRT, VNNI/AMX CPUs), ``device`` (this machine's ONNX Runtime kernels) or ``both``
            (default). The gate uses the deployment target's: ``exact`` for the TensorRT format, ``device``
            for the CPU format; every figure in the report names the numerics that produced it.

    Returns:
        The report; it does not raise on a failed gate (the CLI turns ``passed=False`` into exit code 1).
    """
    if numerics not in NUMERICS_CHOICES:
        raise BadInputError(f"unknown numerics {numerics!r}; expected one of {', '.join(NUMERICS_CHOICES)}")
    bundle = open_bundle(bundle_dir)
    ref_path, ref_prec = artifacts.select_named(bundle, reference)
    cand_path, cand_prec = artifacts.select_named(bundle, candidate)
    modes, gate_mode = _numerics_plan(bundle, cand_path, numerics)
    source = data or bundle.dataset
    if not source:
        raise BadInputError("no validation images: the bundle records no dataset", hint="pass --data DIR")
    images = find_images(source, split="val", labels=bundle.labels)
    if limit:
        images = images.subset(balanced_indices(images.labels, limit, seed))
    decoded = decode(images, bundle.preprocess, what="validation images")
    if len(decoded.batch) == 0:
        raise BadInputError(f"none of the {len(images.paths)} validation images in {source} could be decoded")

    from edgetl.export.parity import backend_outputs

    fixed = None if bundle.manifest["input"].get("dynamic_batch", True) else bundle.manifest["input"].get(
        "batch_size", 1)
    cand_outs: dict[str, Any] = {}
    ref_backend = _open_backend(ref_path, backend_device)
    try:
        ref_out = backend_outputs(ref_backend, decoded.batch, fixed_batch=fixed)
        for mode in [m for m in modes if m != "device"]:  # extra numerics: outputs only
            with _open_backend(cand_path, backend_device, numerics=mode) as extra:
                cand_outs[mode] = backend_outputs(extra, decoded.batch, fixed_batch=fixed)
        cand_backend = _open_backend(cand_path, backend_device)
        try:
            if "device" in modes:
                cand_outs["device"] = backend_outputs(cand_backend, decoded.batch, fixed_batch=fixed)
            one = decoded.batch[:1] if fixed in (None, 1) else np.repeat(decoded.batch[:1], fixed, axis=0)
            ref_lat, cand_lat = _interleaved_latency(ref_backend, cand_backend, one, latency_runs)
            ref_desc, cand_desc = ref_backend.describe(), cand_backend.describe()
        finally:
            cand_backend.close()
    finally:
        ref_backend.close()

    task_fn = _task_metrics(bundle.task)
    per_mode = {}
    for mode, cand_out in cand_outs.items():
        outcome = task_fn(bundle, decoded, ref_out, cand_out, max_top1_drop=max_top1_drop,
                          min_agreement=min_agreement, max_map_drop=max_map_drop, data=source)
        outcome["passed"] = all(c["passed"] for c in outcome["checks"])
        per_mode[mode] = outcome
    result = per_mode[gate_mode]
    checks = result["checks"]
    report = ValidationReport(
        passed=all(c["passed"] for c in checks),
        checks=checks,
        reference={"artifact": _rel(bundle, ref_path), "precision": ref_prec, "backend": ref_desc.get("backend"),
                   "bytes": ref_path.stat().st_size, "latency_batch1": ref_lat},
        candidate={"artifact": _rel(bundle, cand_path), "precision": cand_prec, "backend": cand_desc.get("backend"),
                   "bytes": cand_path.stat().st_size, "latency_batch1": cand_lat},
        metrics=result["metrics"],
        agreement=result["agreement"],
        images={"count": int(len(decoded.batch)), "source": images.source, "undecodable": len(decoded.failures),
                "undecodable_files": [f"{p}: {why}" for p, why in decoded.failures[:20]],
                "labelled": images.labelled},
        numerics={"gate": gate_mode, "modes": {m: {k: per_mode[m][k] for k in ("passed", "checks", "metrics",
                                                                              "agreement")} for m in per_mode},
                  "machine": _machine()},
    )
    report.candidate["size_ratio"] = report.candidate["bytes"] / max(1, report.reference["bytes"])
    if ref_lat.get("p50_ms") and cand_lat.get("p50_ms"):
        report.candidate["speedup_p50"] = ref_lat["p50_ms"] / cand_lat["p50_ms"]
    if write:
        _write(bundle, report)
    return report


# -- artifacts and backends ----------------------------------------------------------------------
NUMERICS_CHOICES = ("exact", "device", "both")


def _numerics_plan(bundle: Bundle, path: Path, numerics: str) -> tuple[list[str], str]:
    """Which numerics to compute for the candidate at ``path``, and which one gates.

    Only a quantized ONNX graph computes differently in ``exact`` and ``device`` numerics; a float graph, a
    checkpoint or a TensorRT engine (which is the device) runs once. The gate's mode is the deployment
    target's (`Int8Settings.gate_numerics`, recorded with the artifact), unless the caller asked for one
    mode only.
    """
    art = artifacts.artifact_at(bundle, path)
    quantized = path.suffix == ".onnx" and art is not None and artifacts.family(art.precision) == "int8"
    if not quantized:
        return ["device"], "device"
    target = (art.info or {}).get("gate_numerics") or (
        "exact" if (art.info or {}).get("tensorrt_compatible", (art.info or {}).get("activation_type") == "int8")
        else "device")
    modes = ["exact", "device"] if numerics == "both" else [numerics]
    return modes, target if target in modes else modes[0]


def _machine() -> dict[str, Any]:
    from edgetl.runtime.cpu import describe

    return dict(describe())


def _open_backend(path: Path, device: str, numerics: str = "device"):
    if path.suffix == ".engine":
        from edgetl.compile import torch_cuda  # noqa: F401  (registers the torch CUDA fallback, if torch is here)

        return trt_backend.TensorRTBackend(path)
    if path.suffix in (".pt", ".pth"):
        from edgetl.validate.torch_backend import TorchBackend

        return TorchBackend(path)
    from edgetl.export.onnx_graph import load_onnx
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    try:
        return OnnxRuntimeBackend(path, device=device, numerics=numerics)
    except BadInputError:
        load_onnx(path)  # a corrupt file gets the clearer "not a readable ONNX model" message
        raise


def _interleaved_latency(a: Any, b: Any, batch: np.ndarray, runs: int) -> tuple[dict, dict]:
    """Alternate the two models run by run, so machine load hits both alike."""
    for _ in range(3):
        a.infer(batch)
        b.infer(batch)
    ta, tb = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        a.infer(batch)
        t1 = time.perf_counter()
        b.infer(batch)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return latency_stats(ta), latency_stats(tb)


def _rel(bundle: Bundle, path: Path) -> str:
    try:
        return path.resolve().relative_to(bundle.root.resolve()).as_posix()
    except ValueError:
        return str(path)


# -- task metrics ----------------------------------------------------------------------------------
def _task_metrics(task: str) -> Callable[..., dict[str, Any]]:
    if task not in TASK_METRICS and task == "detect":
        detection = lazy.load(detection_metrics)
        if not hasattr(detection, "task_metrics"):
            raise BadInputError("edgetl.validate.detection provides no task_metrics(); detector validation "
                                "is not available in this build")
        register_task("detect", detection.task_metrics)
    if task not in TASK_METRICS:
        raise BadInputError(f"no validation metrics for task {task!r}")
    return TASK_METRICS[task]


def _check(name: str, value: float, limit: float, op: str) -> dict[str, Any]:
    ok = value <= limit + 1e-9 if op == "<=" else value >= limit - 1e-9
    return {"name": name, "value": value, "limit": limit, "op": op, "passed": bool(ok)}


def classify_metrics(bundle: Bundle, decoded: Any, ref_out: dict[str, np.ndarray], cand_out: dict[str, np.ndarray],
                     *, max_top1_drop: float, min_agreement: float, **_: Any) -> dict[str, Any]:
    """Top-1/top-5 of both with deltas (when labelled), logit agreement, and the gate checks."""
    name = next(iter(ref_out))
    ref, cand = ref_out[name], cand_out[name]
    agreement = classification_agreement(ref, cand)
    metrics: dict[str, Any] = {"reference": {}, "candidate": {}, "delta": {}}
    checks = []
    if decoded.labels and all(v is not None for v in decoded.labels):
        labels = np.asarray(decoded.labels)
        for key, k in (("top1", 1), ("top5", 5)):
            r, c = topk_accuracy(ref, labels, k), topk_accuracy(cand, labels, k)
            metrics["reference"][key], metrics["candidate"][key] = r, c
            metrics["delta"][key] = c - r
        drop = 100.0 * (metrics["reference"]["top1"] - metrics["candidate"]["top1"])
        metrics["delta"]["top1_drop_points"] = drop
        checks.append(_check("top1_drop_points", drop, max_top1_drop, "<="))
    checks.append(_check("top1_agreement", agreement["top1_agreement"], min_agreement, ">="))
    return {"metrics": metrics, "agreement": agreement, "checks": checks}


register_task("classify", classify_metrics)


# -- outputs -----------------------------------------------------------------------------------------
def _write(bundle: Bundle, report: ValidationReport) -> None:
    from edgetl.validate.report import render_markdown

    doc = report.to_dict()
    write_json(bundle.root / "report.json", doc)
    write_text(bundle.root / "report.md", render_markdown(bundle, doc))
    from edgetl.bundle.validation import record

    record(bundle, doc)
    bundle.save()
