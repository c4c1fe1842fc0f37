"""`quantize_bundle`: add an FP16 or INT8 (QDQ) graph to a bundle, next to the FP32 reference."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.bundle.manifest import Bundle, open_bundle
from edgetl.errors import BadInputError, GateFailedError
from edgetl.export.onnx_graph import check_graph, load_onnx, save_onnx
from edgetl.quantize.calibration import (
    DEFAULT_PERCENTILE,
    MIN_WEIGHT_STEP_IMAGES,
    select_calibration,
)
from edgetl.quantize.int8 import TARGETS, Int8Settings, check_support, qdq_summary, quantize_file, unknown_nodes
from edgetl.quantize.qdq_edit import float_outputs, list_units, tensorrt_placement
from edgetl.quantize.shift import int8_reference
from edgetl.quantize.statistics import unbounded_tensors

if TYPE_CHECKING:
    from edgetl.data.imagesets import ImageSet

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16")
#: How a warning about a model that fails its own golden check starts (the CLI and logs key on it).
GOLDEN_FAILED = "GOLDEN CHECK FAILED"
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
    method: str | None = None,
    per_channel: bool = True,
    max_drop: float | None = None,
    val_data: str | Path | None = None,
    seed: int = 0,
    activation_type: str | None = None,
    target: str = "tensorrt",
    reduce_range: bool = False,
    bias_correction: bool = True,
    sequential_correction: bool | None = None,
    weight_scales: str = "max",
    weight_rounding: str = "gptq",
    centre_activations: bool = True,
    percentile: float = DEFAULT_PERCENTILE,
    min_agreement: float | None = None,
    val_size: int | None = None,
    nodes_to_exclude: list[str] | None = None,
    max_kept: int | None = None,
    budget_layers: list[str] | None = None,
    progress: bool = False,
    strict: bool = False,
) -> QuantizeResult:
    """Quantize the bundle's FP32 ONNX model.

    Args:
        bundle_dir: a bundle made by `edgetl.export.export_checkpoint`.
        precision: ``int8`` (QDQ, static, calibrated) or ``fp16``.
        calib_data: calibration images (a dataset: its training split is used, or a folder); defaults to
            the dataset recorded at export.
        calib_size: images drawn, seeded and class-balanced.
        method: calibration method, one of `edgetl.quantize.calibration.METHODS`; default: ``mse-unbounded``
            for both formats (`edgetl.quantize.int8.DEFAULT_METHODS`).
        per_channel: per-channel weight scales.
        max_drop: accuracy budget in points (classifiers: top-1; detectors: mAP@0.5:0.95, scored against the
            dataset's boxes); enables the sensitivity search.
        val_data: labelled images for the budget (default: the validation split of the calibration data;
            detectors: a data.yaml / COCO JSON).
        seed: seed of the calibration and validation draws.
        activation_type: ``int8`` (symmetric, TensorRT-compatible) or ``uint8`` (ONNX Runtime CPU fast path);
            default: the one of ``target``.
        target: ``tensorrt`` (int8 activations; gated in exact numerics) or ``cpu`` (uint8 activations, what
            ONNX Runtime's x86 kernels run fastest; gated in this machine's numerics).
        reduce_range: 7-bit weights on non-depthwise layers, for other runtimes on x86 CPUs without VNNI
            (edgetl's runtime avoids their saturation without it; see `edgetl.runtime.cpu`).
        bias_correction: correct each layer's bias for the mean shift its weight rounding causes (needs
            at least 32 calibration images; skipped with a warning below that).
        sequential_correction: then move each layer's bias by the mean output error that remains in the quantized
            graph, layer by layer in exact numerics, on 128 of the calibration images (`edgetl.quantize.sequential`;
            needs at least 32 of them). ``None``: the task's measured default (`sequential.BY_TASK`: classifiers
            on, detectors off).
        weight_scales: ``max`` or ``mse`` per-channel weight scales.
        weight_rounding: ``gptq`` (codes chosen for each layer's least output error on the calibration images)
            or ``nearest``.
        centre_activations: TensorRT format: centre ReLU6 outputs read by convolutions on zero, an exact rewrite of
            the FP32 graph that gives them all 255 symmetric int8 codes (`edgetl.quantize.shift`).
        percentile: percentile for ``method="percentile"``.
        min_agreement: budget mode also requires this agreement with FP32 (top-1 agreement; detectors: the
            fraction of FP32 detections the candidate matches).
        val_size: images in the budget's validation sample (``None``: the whole validation split, the images
            `edgetl.validate` gates on).
        nodes_to_exclude: layers to keep in float by name, in addition to the budget's choice.
        max_kept: most quantization points (layers' weights, activations) the budget search may keep in float
            (default: all of them; the search stops at the fewest that meet the budget).
        budget_layers: restrict the search to these layers' weights (default: every quantized Conv/Gemm/MatMul
            and every activation).
        progress: show progress bars on stderr.
        strict: a written artifact that fails its own golden check (the bundle's tolerance) raises
            `GateFailedError` (exit 1) instead of only warning.

    Raises:
        BadInputError: no/too few calibration images, unknown precision/method/layer names, corrupt model.
        GateFailedError: budget mode could not reach the budget (the best model found is still written).
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise BadInputError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    activation_type = activation_type or TARGETS[target]
    bundle = open_bundle(bundle_dir)
    if sequential_correction is None:
        from edgetl.quantize.sequential import BY_TASK

        sequential_correction = BY_TASK.get(bundle.task, False)
    ref = bundle.reference_onnx()
    src = bundle.path_of(ref)
    model = load_onnx(src)
    if precision == "fp16":
        result = _fp16(bundle, model)
    else:
        result = _int8(bundle, src, ref.sha256, model, calib_data=calib_data, calib_size=calib_size, method=method,
                       per_channel=per_channel, max_drop=max_drop, val_data=val_data, seed=seed,
                       activation_type=activation_type, reduce_range=reduce_range, percentile=percentile,
                       bias_correction=bias_correction, sequential_correction=sequential_correction,
                       weight_scales=weight_scales, weight_rounding=weight_rounding,
                       centre_activations=centre_activations, min_agreement=min_agreement, val_size=val_size,
                       extra_exclude=nodes_to_exclude or [], max_kept=max_kept, budget_layers=budget_layers,
                       progress=progress)
    result.seconds = time.perf_counter() - start
    check = result.info.get("golden_check")
    if check is not None and not check["passed"]:
        result.warnings.insert(0, f"{GOLDEN_FAILED}: the {precision} model written to {result.path} does not "
                                  f"match the FP32 golden outputs within the bundle's tolerance "
                                  f"({'; '.join(check['failures'])}); `bundle check`, the daemon's swap check and "
                                  f"`compile` will reject it too")
    log_warnings(result.warnings)
    if strict and check is not None and not check["passed"]:
        raise GateFailedError(result.warnings[0], hint="quantize with other settings (budget mode: --max-drop), or "
                                                       "deploy another precision")
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
    info["golden"], info["golden_check"] = _golden_check(bundle, out, "fp16")
    bundle.add_artifact(out, kind="onnx", precision="fp16", created_by="quantize", info=info)
    _record(bundle, "fp16", info)
    bundle.save()
    return QuantizeResult(bundle.root, out, "fp16", info)


def _int8(bundle: Bundle, src: Path, sha: str, model: Any, *, calib_data, calib_size, method, per_channel, max_drop,
          val_data, seed, activation_type, reduce_range, percentile, bias_correction, sequential_correction,
          weight_scales, weight_rounding, centre_activations, min_agreement, val_size, extra_exclude, max_kept,
          budget_layers, progress) -> QuantizeResult:
    settings = Int8Settings(method=method, per_channel=per_channel, activation_type=activation_type,
                            reduce_range=reduce_range, percentile=percentile, bias_correction=bias_correction,
                            weight_scales=weight_scales, weight_rounding=weight_rounding,
                            centre_activations=centre_activations, sequential_correction=sequential_correction)
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-quant-"))
    try:
        return _int8_in(bundle, src, sha, model, settings, tmp, calib_data=calib_data, calib_size=calib_size,
                        max_drop=max_drop, val_data=val_data, seed=seed, min_agreement=min_agreement,
                        val_size=val_size, extra_exclude=extra_exclude, max_kept=max_kept,
                        budget_layers=budget_layers, progress=progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _int8_in(bundle: Bundle, src: Path, sha: str, model: Any, settings: Int8Settings, tmp: Path, *, calib_data,
             calib_size, max_drop, val_data, seed, min_agreement, val_size, extra_exclude, max_kept, budget_layers,
             progress) -> QuantizeResult:
    method, percentile, bias_correction = settings.method, settings.percentile, settings.bias_correction
    weight_scales, reduce_range = settings.weight_scales, settings.reduce_range
    uncentred, original_sha = model, sha
    # Every INT8 step below works on this graph (the TensorRT format's centred rewrite): its FP32 reference.
    model, shift, sha = int8_reference(model, settings, sha)
    if shift is not None:
        src = tmp / "centred.onnx"
        save_onnx(model, src)
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
    source = calib_data or bundle.dataset
    if not source:
        raise BadInputError("no calibration images: the bundle records no dataset",
                            hint="pass --calib-data DIR (the training images)")
    if not Path(source).exists():
        raise BadInputError(f"calibration data not found: {source}", hint="pass --calib-data DIR")
    calib, stats, cache_hit, calib_seconds = _calibrate(bundle, source, model, sha, method=method,
                                                        calib_size=calib_size, seed=seed, progress=progress)
    if shift is not None:
        # Centring helps a tensor only if it reaches above the centre; the others are put back as they were.
        unhelpful = [name for name in shift.tensors if name in stats.tensors and stats.tensors[name].hi <= 0]
        if unhelpful:
            model, shift, sha = int8_reference(uncentred, settings, original_sha, skip=unhelpful)
            save_onnx(model, src)
            calib, stats, cache_hit, calib_seconds = _calibrate(bundle, source, model, sha, method=method,
                                                                calib_size=calib_size, seed=seed, progress=progress)
    if calib.failures:
        warnings.append(f"{len(calib.failures)} of {len(calib.images.paths)} calibration images could not "
                        f"be decoded and were skipped")
    means = stats.input_means if bias_correction else None
    if bias_correction and stats.images < MIN_WEIGHT_STEP_IMAGES:
        means = None
        warnings.append(f"bias correction skipped: {stats.images} calibration images, it needs at least "
                        f"{MIN_WEIGHT_STEP_IMAGES} for a stable estimate of each layer's mean input")
    corrected = means is not None
    if means is None and shift is not None:
        means = shift.neutral_means(stats.input_means)  # what centring adds to weight rounding, and only that

    full = tmp / "full.onnx"
    quantize_file(src, full, settings, ranges=stats.ranges(method, percentile, settings.activation_type,
                                                           unbounded=unbounded_tensors(model)),
                  nodes_to_exclude=extra_exclude + float_tail)
    from edgetl.quantize.weights import refine_weights

    quantized = float_outputs(load_onnx(full), model)
    if settings.tensorrt_compatible:
        quantized = tensorrt_placement(quantized, model)
    moments = stats.patch_moments if settings.weight_rounding == "gptq" else None
    if moments is not None and stats.images < MIN_WEIGHT_STEP_IMAGES:
        moments = None
        warnings.append(f"GPTQ weight rounding skipped (weights rounded to nearest): {stats.images} calibration "
                        f"images, it needs at least {MIN_WEIGHT_STEP_IMAGES} not to fit the rounding to them")
    edits = refine_weights(quantized, model, mse=weight_scales == "mse", input_means=means,
                           reduce_range=reduce_range, moments=moments)
    sequential = _sequential_correction(bundle, calib, quantized, model, settings, warnings)
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
                                            only=budget_layers, numerics=settings.gate_numerics)
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

    info = {
        **settings.to_dict(),
        "calibration": {"images": stats.images, "requested": calib_size, "source": str(calib.images.source),
                        "seed": seed, "cache": calib.cache_path.relative_to(bundle.root).as_posix(),
                        "cache_hit": cache_hit, "undecodable": len(calib.failures),
                        "seconds": round(calib_seconds, 2)},
        "weights": _weights_info(edits.to_dict(), corrected=corrected, compensated=means is not None),
        "sequential_correction_result": sequential,
        "centred_activations": shift.to_dict() if shift is not None else None,
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
                          "units": budget["units"], "numerics": settings.gate_numerics,
                          "int8_layers": summary["int8_layers"], "float_layers": len(summary["float_layers"])}
    gate_first = (settings.gate_numerics, "device" if settings.gate_numerics == "exact" else "exact")
    info["golden"], info["golden_check"] = _golden_check(bundle, out, "int8", numerics=gate_first)
    precision = "mixed" if kept or kept_activations else "int8"
    # Replace any earlier INT8 entry (its precision may differ) before recording this one.
    bundle.manifest["artifacts"] = [a for a in bundle.manifest["artifacts"] if a["path"] != FILES["int8"]]
    bundle.add_artifact(out, kind="onnx", precision=precision, created_by="quantize", info=info)
    bundle.add_artifact(calib.cache_path, kind="calibration", precision="int8", created_by="quantize",
                        info={"kind": "statistics", "images": stats.images, "key": calib.key})
    bundle.add_artifact(calib.meta_path, kind="calibration", precision="int8", created_by="quantize")
    _record(bundle, "int8", {**info, "budget": budget} if budget is not None else info)
    bundle.save()
    return QuantizeResult(bundle.root, out, precision, info, budget, warnings)


def _sequential_correction(bundle: Bundle, calib: Any, quantized: Any, model: Any, settings: Int8Settings,
                           warnings: list[str]) -> dict[str, Any] | None:
    """`edgetl.quantize.sequential` on calibration images spread over the (class-ordered) calibration set; None
    when it is off or skipped (with a warning)."""
    from edgetl.data.imagesets import decode
    from edgetl.quantize.sequential import CHUNK, SEQUENTIAL_IMAGES, correct_biases

    if not settings.sequential_correction:
        return None
    chunk = _fixed_batch(bundle) or CHUNK
    paths = calib.images.paths
    count = min(SEQUENTIAL_IMAGES, len(paths))
    picked = decode(calib.images.subset(np.linspace(0, len(paths) - 1, count).astype(int).tolist()),
                    bundle.preprocess)
    usable = len(picked.batch) - len(picked.batch) % chunk
    if usable < MIN_WEIGHT_STEP_IMAGES:
        warnings.append(f"sequential correction of the biases skipped: {usable} usable calibration images, it needs at "
                        f"least {MIN_WEIGHT_STEP_IMAGES} for a stable estimate of each layer's mean output")
        return None
    log.info("sequential bias correction: each layer's mean output in the quantized graph, %d calibration images",
             usable)
    batch = np.ascontiguousarray(picked.batch[:usable], dtype=np.float32)
    return correct_biases(quantized, model, batch, chunk=chunk).to_dict()


def _weights_info(edits: dict[str, Any], *, corrected: bool, compensated: bool) -> dict[str, Any]:
    """The weight edits as reported: without bias correction proper, the layers whose bias only absorbed what
    centring adds to weight rounding are counted apart."""
    info = {**edits, "bias_correction_applied": corrected}
    if compensated and not corrected:
        info["centring_compensated_layers"] = info["bias_corrected_layers"]
        info["bias_corrected_layers"] = 0
        info["not_bias_corrected"] = []
    return info


def _calibrate(bundle: Bundle, source: Any, model: Any, sha: str, *, method: str, calib_size: int, seed: int,
               progress: bool) -> tuple[Any, Any, bool, float]:
    """The calibration set, its statistics for ``model`` (cached under ``sha``), whether the cache had them, and
    the seconds it took."""
    calib = select_calibration(source, labels=bundle.labels, model_sha256=sha, spec=bundle.preprocess,
                               method=method, size=calib_size, seed=seed, cache_dir=bundle.root / CALIB_DIR)
    t0 = time.perf_counter()
    stats, cache_hit = _statistics(bundle, calib, model, progress=progress)
    seconds = time.perf_counter() - t0
    if not cache_hit:
        calib.save_meta({"seconds": round(seconds, 2)})
    return calib, stats, cache_hit, seconds


def _statistics(bundle: Bundle, calib: Any, model: Any, *, progress: bool) -> tuple[Any, bool]:
    """The calibration statistics, from the bundle's cache or one streamed pass over the images, and whether
    they came from the cache."""
    from edgetl.quantize.statistics import CalibrationStatistics, measure

    if calib.cached:
        try:
            stats = CalibrationStatistics.load(calib.cache_path)
            if stats.patch_moments is not None:
                return stats, True
            log.info("calibration cache %s predates the input-patch moments GPTQ rounding needs; recomputing it",
                     calib.cache_path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("calibration cache %s is unreadable (%s); recomputing it", calib.cache_path, exc)
    log.info("calibration: %d images through the FP32 model, statistics streamed batch by batch",
             len(calib.images.paths))
    stats = measure(model, calib.batches(bundle.preprocess, fixed_batch=_fixed_batch(bundle), progress=progress),
                    input_name=bundle.input_name)
    calib.check_usable()
    stats.images = calib.decoded  # padding of a fixed-batch graph's last batch is not an image
    calib.cache_path.parent.mkdir(parents=True, exist_ok=True)
    stats.save(calib.cache_path)
    return stats, False


def _budget(bundle: Bundle, src: Path, full: Path, quantized: Any, model: Any, *, source, max_drop, min_agreement,
            val_size, seed, max_kept, progress, extra_exclude, only, numerics):
    from edgetl.quantize.budget import search

    sample, scorer, run = validation_sample(bundle, src, source, val_size=val_size, seed=seed, numerics=numerics)
    full_metrics = scorer(run(full, sample.batch), sample)
    units = [u for u in list_units(quantized, model, layers=only) if u.name not in extra_exclude]
    return search(model, quantized, units, sample, run, max_drop=max_drop, min_agreement=min_agreement,
                  full_metrics=full_metrics, weights=_layer_params(model), max_kept=max_kept, progress=progress,
                  scorer=scorer)


def log_warnings(warnings: list[str]) -> None:
    """Log what a quantize result warns about (the CLI prints the log): a failed golden check as an error, since
    `bundle check`, the daemon and `compile` will refuse that model."""
    for note in warnings:
        (log.error if note.startswith(GOLDEN_FAILED) else log.warning)(note)


def validation_sample(bundle: Bundle, src: Path, source: Any, *, val_size: int | None, seed: int, numerics: str,
                      images: ImageSet | None = None):
    """The validation images budget mode and QAT score candidates on, with the FP32 outputs.

    ``images``: the images to draw from instead of ``source``'s validation split (QAT's held-out share of an
    unlabelled folder, `edgetl.quantize.qat.qat_images`); unlabelled images are scored by agreement alone.

    Returns:
        (sample, scorer, run): `edgetl.quantize.budget.Sample`, the task's scorer (top-1 for classifiers, mAP
        against the dataset's boxes for detectors), and ``run(model_path, batch)`` in ``numerics``.
    """
    from edgetl.data.imagesets import balanced_indices, decode, find_images
    from edgetl.quantize.budget import Sample, score

    if images is None:
        images = find_images(source, split="val", labels=bundle.labels)
    if val_size is not None:
        if val_size < 1:
            raise BadInputError(f"val_size must be at least 1, got {val_size}", hint="or None for the whole split")
        images = images.subset(balanced_indices(images.labels, val_size, seed + 1))
    decoded = decode(images, bundle.preprocess, what="validation images")
    if len(decoded.batch) == 0:
        raise BadInputError(f"no decodable validation images in {source} for the accuracy budget")
    labels = np.asarray(decoded.labels) if decoded.labels and decoded.labels[0] is not None else None
    scorer = score
    if bundle.task == "detect":  # mAP against the dataset's boxes instead of top-1
        from edgetl.metrics.detection import budget_scorer, ground_truth_for

        truth = ground_truth_for(decoded.paths, source, bundle.labels)
        if not any(len(t.labels) for t in truth):
            raise BadInputError(f"the {len(truth)} validation images in {source} have no boxes; the mAP budget "
                                "needs labelled images", hint="pass --val-data data.yaml")
        scorer = budget_scorer(truth, decoded.infos, dict(bundle.manifest.get("postprocess") or {}), bundle.labels)
    run = _runner(bundle, all_outputs=bundle.task == "detect", numerics=numerics)
    return Sample(decoded.batch, labels, run(src, decoded.batch), str(images.source)), scorer, run


def _val_source(bundle: Bundle, calib_source: Any) -> Any:
    """Default budget images: a detector needs boxes, so the recorded dataset (not a calibration folder)."""
    recorded = bundle.dataset
    return recorded if bundle.task == "detect" and recorded else calib_source


def _budget_metric(task: str) -> str:
    return "mAP@0.5:0.95" if task == "detect" else "top-1"


def _runner(bundle: Bundle, all_outputs: bool = False, numerics: str = "device"):
    """Run a model through the same backend validation and deployment use, in the target's ``numerics``:
    the first output (logits), or every output by name (``all_outputs``, for detectors)."""
    from edgetl.export.parity import backend_outputs
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    fixed = _fixed_batch(bundle)

    def run(path: Path, batch: np.ndarray) -> np.ndarray:
        graph = None
        if numerics == "exact":  # the same values, fewer passes (`edgetl.quantize.exact_form`)
            from edgetl.quantize.exact_form import integer_pads

            graph = integer_pads(load_onnx(path))[0].SerializeToString()
        with OnnxRuntimeBackend(path, device="cpu", numerics=numerics, graph=graph) as backend:
            outputs = backend_outputs(backend, batch, fixed_batch=fixed, chunk=32)
            return outputs if all_outputs else outputs[backend.output_names[0]]

    return run


def _layer_params(model: Any) -> dict[str, int]:
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    return {n.name: sum(sizes.get(i, 0) for i in n.input[1:]) for n in model.graph.node}


def _golden_check(bundle: Bundle, path: Path, precision: str,
                  numerics: tuple[str, ...] = ("device",)) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Run the new graph on the golden inputs: proves it loads, records how far it is from FP32, and judges it
    by the bundle's tolerance for ``precision`` (`edgetl.bundle.check.TOLERANCES`, the table ``bundle check``,
    the daemon and compile use too).

    Returns the per-output figures (with several ``numerics``, every mode under ``numerics``, so each figure
    says what computed it) and the verdict, judged in the first mode of ``numerics``.
    """
    golden = bundle.manifest.get("golden")
    if not golden:
        return None, None
    from edgetl.bundle.check import compare_outputs, load_golden, tolerance_for
    from edgetl.export.parity import backend_outputs
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    inputs, reference = load_golden(bundle)
    tolerance = tolerance_for(bundle, precision)
    report: dict[str, Any] = {}
    verdict: dict[str, Any] | None = None
    for mode in numerics:
        with OnnxRuntimeBackend(path, device="cpu", numerics=mode) as backend:
            outputs = backend_outputs(backend, inputs, fixed_batch=_fixed_batch(bundle))
        compared = compare_outputs(outputs, reference, tolerance, classify=bundle.task == "classify")
        if verdict is None:
            verdict = {"passed": compared["passed"], "failures": compared["failures"], "tolerance": tolerance,
                       "numerics": mode}
        for name, stats in compared["outputs"].items():
            entry: dict[str, Any] = {"max_abs_diff": stats["max_abs"], "max_rel_diff": stats["max_rel"]}
            if bundle.task == "classify" and "top1_agreement" in stats:
                entry["top1_agreement"] = stats["top1_agreement"]
            if name not in report:
                report[name] = dict(entry)
            if len(numerics) > 1:
                report[name].setdefault("numerics", {})[mode] = entry
    return report, verdict


def _record(bundle: Bundle, precision: str, info: dict[str, Any]) -> None:
    section = dict(bundle.manifest.get("quantization") or {})
    section[precision] = info
    bundle.set_section("quantization", section)


def _fixed_batch(bundle: Bundle) -> int | None:
    """The batch size of a fixed-batch graph, None for a dynamic one."""
    shape = bundle.manifest["input"]
    return None if shape.get("dynamic_batch", True) else int(shape.get("batch_size", 1))
