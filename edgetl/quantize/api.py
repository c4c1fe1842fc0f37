"""`quantize_bundle`: add an FP16 or INT8 (QDQ) graph to a bundle, next to the FP32 reference."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bundle.manifest import Bundle, open_bundle
from edgetl.errors import BadInputError, GateFailedError
from edgetl.export.onnx_graph import check_graph, load_onnx, save_onnx
from edgetl.quantize.calibration import DEFAULT_PERCENTILE, make_reader, select_calibration
from edgetl.quantize.int8 import Int8Settings, check_support, qdq_summary, quantize_file, unknown_nodes
from edgetl.quantize.qdq_edit import float_outputs, list_units

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16")
FILES = {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
CALIB_DIR = "calibration"


@dataclass
class QuantizeResult:
    """What `quantize_bundle` wrote.

    Attributes:
        bundle_dir, path: the bundle and the new graph.
        precision: ``fp16``, ``int8``, or ``mixed`` (INT8 with layers kept in float).
        info: the artifact's info (settings, calibration, kept layers...).
        budget: the accuracy-budget search (``None`` without ``max_drop``).
        warnings: what the user should know (undecodable images, float-only ops...).
        seconds: wall time.
    """

    bundle_dir: Path
    path: Path
    precision: str
    info: dict[str, Any]
    budget: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle_dir), "path": str(self.path), "precision": self.precision,
                "info": self.info, "budget": self.budget, "warnings": self.warnings, "seconds": self.seconds}


def quantize_bundle(
    bundle_dir: str | Path,
    precision: str = "int8",
    *,
    calib_data: str | Path | None = None,
    calib_size: int = 300,
    method: str = "entropy",
    per_channel: bool = True,
    max_drop: float | None = None,
    val_data: str | Path | None = None,
    seed: int = 0,
    activation_type: str = "int8",
    reduce_range: bool = True,
    percentile: float = DEFAULT_PERCENTILE,
    min_agreement: float | None = None,
    val_size: int = 200,
    nodes_to_exclude: list[str] | None = None,
    max_kept: int | None = None,
    budget_layers: list[str] | None = None,
    progress: bool = False,
) -> QuantizeResult:
    """Quantize the bundle's FP32 ONNX model.

    Args:
        bundle_dir: a bundle made by `edgetl.export.export_checkpoint`.
        precision: ``int8`` (QDQ, static, calibrated) or ``fp16``.
        calib_data: calibration images (a dataset: its training split is used, or a folder); defaults to
            the dataset recorded at export.
        calib_size: images drawn, seeded and class-balanced.
        method: calibration method ``minmax`` | ``entropy`` | ``percentile``.
        per_channel: per-channel weight scales.
        max_drop: accuracy budget in points (classifiers: top-1; detectors: mAP@0.5:0.95, scored against the
            dataset's boxes); enables the sensitivity search.
        val_data: labelled images for the budget (default: the validation split of the calibration data;
            detectors: a data.yaml / COCO JSON).
        seed: seed of the calibration and validation draws.
        activation_type: ``int8`` (symmetric, TensorRT-compatible) or ``uint8`` (ONNX Runtime CPU fast path).
        reduce_range: 7-bit weights (default). ONNX Runtime's INT8 kernels on x86 CPUs without VNNI sum pairs of
            8-bit products in 16 bits and saturate; 7-bit weights cannot. Costs a little precision elsewhere.
        percentile: percentile for ``method="percentile"``.
        min_agreement: budget mode also requires this agreement with FP32 (top-1 agreement; detectors: the
            fraction of FP32 detections the candidate matches).
        val_size: images in the budget's validation sample.
        nodes_to_exclude: layers to keep in float by name, in addition to the budget's choice.
        max_kept: most quantization points (layers' weights, activations) the budget search may keep in float
            (default: all of them; the search stops at the fewest that meet the budget).
        budget_layers: restrict the search to these layers' weights (default: every quantized Conv/Gemm/MatMul
            and every activation).
        progress: show progress bars on stderr.

    Raises:
        BadInputError: no/too few calibration images, unknown precision/method/layer names, corrupt model.
        GateFailedError: budget mode could not reach the budget (the best model found is still written).
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    bundle = open_bundle(bundle_dir)
    ref = bundle.reference_onnx()
    src = bundle.path_of(ref)
    model = load_onnx(src)
    if precision == "fp16":
        result = _fp16(bundle, model)
    else:
        result = _int8(bundle, src, ref.sha256, model, calib_data=calib_data, calib_size=calib_size, method=method,
                       per_channel=per_channel, max_drop=max_drop, val_data=val_data, seed=seed,
                       activation_type=activation_type, reduce_range=reduce_range, percentile=percentile,
                       min_agreement=min_agreement, val_size=val_size, extra_exclude=nodes_to_exclude or [],
                       max_kept=max_kept, budget_layers=budget_layers, progress=progress)
    result.seconds = time.perf_counter() - start
    for note in result.warnings:
        log.warning(note)
    if result.budget is not None and not result.budget["within_budget"]:
        final = result.budget["final"]
        raise GateFailedError(
            f"INT8 model is not within the accuracy budget with {len(result.budget['kept_layers'])} layer(s) and "
            f"{len(result.budget['kept_activations'])} activation(s) of {result.budget['units']} quantization "
            f"points in float: {_budget_metric(bundle.task)} drop {final['drop']:.2f} points (budget {max_drop}), "
            f"agreement {final['agreement']:.4f}; the best model found was written to {result.path}",
            hint="raise --max-drop, lower --min-agreement, try another --method, or deploy FP16",
        )
    return result


def _fp16(bundle: Bundle, model: Any) -> QuantizeResult:
    from edgetl.quantize.fp16 import convert_fp16

    converted, info = convert_fp16(model)
    out = bundle.root / FILES["fp16"]
    save_onnx(converted, out)
    check_graph(out, str(out))
    info["golden"] = _golden_check(bundle, out)
    bundle.add_artifact(out, kind="onnx", precision="fp16", created_by="quantize", info=info)
    _record(bundle, "fp16", info)
    bundle.save()
    return QuantizeResult(bundle.root, out, "fp16", info)


def _int8(bundle: Bundle, src: Path, sha: str, model: Any, *, calib_data, calib_size, method, per_channel, max_drop,
          val_data, seed, activation_type, reduce_range, percentile, min_agreement, val_size, extra_exclude, max_kept,
          budget_layers, progress) -> QuantizeResult:
    settings = Int8Settings(method=method, per_channel=per_channel, activation_type=activation_type,
                            reduce_range=reduce_range, percentile=percentile)
    support = check_support(model)
    warnings: list[str] = []
    if support["float_only_nodes"]:
        what = ", ".join(f"{op} x{n}" for op, n in support["float_only_ops"].items())
        warnings.append(f"{support['float_only_nodes']} node(s) have no INT8 kernel and stay in float: {what}")
    missing = unknown_nodes(model, extra_exclude + list(budget_layers or []))
    if missing:
        raise BadInputError(f"no such layer(s) in the model: {missing}", hint="`edgetl info` lists the layers")
    # A detector's decode (box coordinates in pixels, DFL softmax, sigmoid) stays float; its convs are INT8.
    float_tail: list[str] = []
    if bundle.task == "detect":
        from edgetl.detect.nms_onnx import decode_tail_nodes

        float_tail = [n for n in decode_tail_nodes(model) if n not in extra_exclude]
    source = calib_data or bundle.manifest.get("provenance", {}).get("dataset")
    if not source:
        raise BadInputError("no calibration images: the bundle records no dataset",
                            hint="pass --calib-data DIR (the training images)")
    if not Path(source).exists():
        raise BadInputError(f"calibration data not found: {source}", hint="pass --calib-data DIR")
    calib = select_calibration(source, labels=bundle.labels, model_sha256=sha, spec=bundle.preprocess,
                               method=method, size=calib_size, seed=seed, cache_dir=bundle.root / CALIB_DIR,
                               percentile=percentile)
    cache_hit = calib.cached
    reader = None
    if not cache_hit:
        calib.load(bundle.preprocess, progress=progress)
        if calib.failures:
            warnings.append(f"{len(calib.failures)} of {len(calib.images.paths)} calibration images could not "
                            f"be decoded and were skipped")
        fixed = None if bundle.manifest["input"].get("dynamic_batch", True) else bundle.manifest["input"].get(
            "batch_size", 1)
        # Histogram calibrators (entropy, percentile) need equal-sized batches: feed one image at a time.
        chunk = 8 if method == "minmax" else 1
        reader = make_reader(calib.batch, bundle.input_name, chunk=chunk, fixed_batch=fixed)
        calib.cache_path.parent.mkdir(parents=True, exist_ok=True)
        calib.cache_path.unlink(missing_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="edgetl-quant-"))
    try:
        full = tmp / "full.onnx"
        t0 = time.perf_counter()
        quantize_file(src, full, settings, reader=reader, cache_path=calib.cache_path,
                      nodes_to_exclude=extra_exclude + float_tail)
        calib_seconds = time.perf_counter() - t0
        if not cache_hit:
            calib.save_meta({"seconds": round(calib_seconds, 2)})
        quantized = float_outputs(load_onnx(full), model)
        save_onnx(quantized, full)
        kept: list[str] = list(extra_exclude)
        kept_activations: list[str] = []
        budget = None
        final = full
        if max_drop is not None:
            budget_outcome, candidate = _budget(bundle, src, full, quantized, model,
                                                source=val_data or _val_source(bundle, source), max_drop=max_drop,
                                                min_agreement=min_agreement, val_size=val_size, seed=seed,
                                                max_kept=max_kept, progress=progress, extra_exclude=extra_exclude,
                                                only=budget_layers)
            budget = budget_outcome.to_dict()
            if candidate is not None:
                final = candidate
                quantized = load_onnx(candidate)
                kept += budget_outcome.kept_layers
                kept_activations = budget_outcome.kept_activations
        out = bundle.root / FILES["int8"]
        summary = qdq_summary(quantized)
        save_onnx(quantized, out)
        if final != full:
            shutil.rmtree(final.parent, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    info = {
        **settings.to_dict(),
        "calibration": {"images": calib.used(), "requested": calib_size, "source": str(calib.images.source),
                        "seed": seed, "cache": calib.cache_path.relative_to(bundle.root).as_posix(),
                        "cache_hit": cache_hit, "undecodable": len(calib.failures)},
        "kept_layers": kept,
        "kept_activations": kept_activations,
        "graph": summary,
    }
    if float_tail:
        info["float_decode_nodes"] = len(float_tail)
    if budget is not None:
        info["budget"] = {"max_drop": max_drop, "min_agreement": min_agreement,
                          "within_budget": budget["within_budget"], "final": budget["final"],
                          "kept_layers": budget["kept_layers"], "kept_activations": budget["kept_activations"],
                          "units": budget["units"]}
    info["golden"] = _golden_check(bundle, out)
    precision = "mixed" if kept or kept_activations else "int8"
    # Replace any earlier INT8 entry (its precision may differ) before recording this one.
    bundle.manifest["artifacts"] = [a for a in bundle.manifest["artifacts"] if a["path"] != FILES["int8"]]
    bundle.add_artifact(out, kind="onnx", precision=precision, created_by="quantize", info=info)
    bundle.add_artifact(calib.cache_path, kind="calibration", precision="int8", created_by="quantize",
                        info={"method": method, "images": calib.used(), "key": calib.key})
    bundle.add_artifact(calib.meta_path, kind="calibration", precision="int8", created_by="quantize")
    _record(bundle, "int8", {**info, "budget": budget} if budget is not None else info)
    bundle.save()
    return QuantizeResult(bundle.root, out, precision, info, budget, warnings)


def _budget(bundle: Bundle, src: Path, full: Path, quantized: Any, model: Any, *, source, max_drop, min_agreement,
            val_size, seed, max_kept, progress, extra_exclude, only):
    from edgetl.quantize.budget import Sample, score, search
    from edgetl.validate.samples import balanced_indices, decode, find_images

    images = find_images(source, split="val", labels=bundle.labels)
    images = images.subset(balanced_indices(images.labels, val_size, seed + 1))
    decoded = decode(images, bundle.preprocess, what="validation images")
    if len(decoded.batch) == 0:
        raise BadInputError(f"no decodable validation images in {source} for the accuracy budget")
    labels = np.asarray(decoded.labels) if decoded.labels and decoded.labels[0] is not None else None
    scorer = score
    if bundle.task == "detect":  # mAP against the dataset's boxes instead of top-1
        from edgetl.validate.detection import budget_scorer, ground_truth_for

        truth = ground_truth_for(decoded.paths, source, bundle.labels)
        if not any(len(t.labels) for t in truth):
            raise BadInputError(f"the {len(truth)} validation images in {source} have no boxes; the mAP budget "
                                "needs labelled images", hint="pass --val-data data.yaml")
        scorer = budget_scorer(truth, decoded.infos, dict(bundle.manifest.get("postprocess") or {}), bundle.labels)
    run = _runner(bundle, all_outputs=bundle.task == "detect")
    sample = Sample(decoded.batch, labels, run(src, decoded.batch), str(images.source))
    full_metrics = scorer(run(full, decoded.batch), sample)
    units = [u for u in list_units(quantized, model, layers=only) if u.name not in extra_exclude]
    return search(model, quantized, units, sample, run, max_drop=max_drop, min_agreement=min_agreement,
                  full_metrics=full_metrics, weights=_layer_params(model), max_kept=max_kept, progress=progress,
                  scorer=scorer)


def _val_source(bundle: Bundle, calib_source: Any) -> Any:
    """Default budget images: a detector needs boxes, so the recorded dataset (not a calibration folder)."""
    recorded = bundle.manifest.get("provenance", {}).get("dataset")
    return recorded if bundle.task == "detect" and recorded else calib_source


def _budget_metric(task: str) -> str:
    return "mAP@0.5:0.95" if task == "detect" else "top-1"


def _runner(bundle: Bundle, all_outputs: bool = False):
    """Run a model through the same backend validation and deployment use: the first output (logits), or
    every output by name (``all_outputs``, for detectors)."""
    from edgetl.export.parity import backend_outputs
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    fixed = _fixed_batch(bundle)

    def run(path: Path, batch: np.ndarray) -> np.ndarray:
        with OnnxRuntimeBackend(path, device="cpu") as backend:
            outputs = backend_outputs(backend, batch, fixed_batch=fixed, chunk=32)
            return outputs if all_outputs else outputs[backend.output_names[0]]

    return run


def _layer_params(model: Any) -> dict[str, int]:
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    return {n.name: sum(sizes.get(i, 0) for i in n.input[1:]) for n in model.graph.node}


def _golden_check(bundle: Bundle, path: Path) -> dict[str, Any] | None:
    """Run the new graph on the golden inputs: proves it loads and records how far it is from FP32."""
    golden = bundle.manifest.get("golden")
    if not golden:
        return None
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgetl.validate.metrics import classification_agreement

    inputs = np.load(bundle.root / golden["input"])
    with OnnxRuntimeBackend(path, device="cpu") as backend:
        fixed = None if bundle.manifest["input"].get("dynamic_batch", True) else bundle.manifest["input"].get(
            "batch_size", 1)
        from edgetl.export.parity import backend_outputs

        outputs = backend_outputs(backend, inputs, fixed_batch=fixed)
    report: dict[str, Any] = {}
    for name, rel in golden["outputs"].items():
        ref = np.load(bundle.root / rel)
        report[name] = {"max_abs_diff": float(np.abs(ref - outputs[name]).max())}
        if bundle.task == "classify":
            report[name]["top1_agreement"] = classification_agreement(ref, outputs[name])["top1_agreement"]
    return report


def _record(bundle: Bundle, precision: str, info: dict[str, Any]) -> None:
    section = dict(bundle.manifest.get("quantization") or {})
    section[precision] = info
    bundle.set_section("quantization", section)


def _fixed_batch(bundle: Bundle) -> int | None:
    """The batch size of a fixed-batch graph, None for a dynamic one."""
    shape = bundle.manifest["input"]
    return None if shape.get("dynamic_batch", True) else int(shape.get("batch_size", 1))
