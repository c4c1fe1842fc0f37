"""`qat_bundle` and `escalate`: quantization-aware fine-tuning into a bundle, and budget mode's escalation.

`qat_bundle` runs PTQ for the TensorRT format first (its calibration scales start the quantizers; the cached
statistics make a rerun skip the images), fine-tunes (`edgetl.quantize.qat`), and writes ``model.int8.onnx``
only when the QAT model is not worse than PTQ's on the validation images.

`escalate` is budget mode with QAT as its last resort: PTQ with the defaults, then PTQ with at most a few
quantization points kept in float, then QAT with every layer INT8; it stops at the first candidate within
``max_drop`` / ``min_agreement`` in the target's numerics, and reports each step's result and cost.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetl.errors import BadInputError, GateFailedError
from edgetl.lazy import lazy_import
from edgetl.metrics.gate import Gate, default_gate
from edgetl.quantize.api import (
    FILES,
    GOLDEN_FAILED,
    QuantizeResult,
    _golden_check,
    _record,
    log_warnings,
    quantize_bundle,
    validation_sample,
)
from edgetl.quantize.int8 import TARGETS, Int8Settings
from edgetl.quantize.qat import QatOutcome, QatSettings, why_worse

onnx = lazy_import("onnx", "train", purpose="quantization-aware fine-tuning")

log = logging.getLogger(__name__)

#: Budget mode's second step keeps at most this many quantization points in float before it tries QAT.
ESCALATION_MAX_KEPT = 3


def gate_numerics(target: str) -> str:
    """The numerics a target is gated in: exact for TensorRT, this machine's kernels for the CPU format."""
    return Int8Settings(activation_type=TARGETS[target]).gate_numerics


def training_source(bundle_dir: str | Path, data: str | Path | None = None) -> Path | None:
    """The dataset QAT would fine-tune on (``data``, else the one recorded at export), if it is on this disk."""
    from edgetl.bundle.manifest import open_bundle

    source = data or open_bundle(bundle_dir, verify=False).dataset
    return Path(source) if source and Path(source).exists() else None


def qat_bundle(
    bundle_dir: str | Path,
    *,
    data: str | Path | None = None,
    settings: QatSettings | None = None,
    calib_data: str | Path | None = None,
    calib_size: int = 300,
    val_data: str | Path | None = None,
    val_size: int | None = None,
    seed: int = 0,
    reduce_range: bool = False,
    target: str = "tensorrt",
    progress: bool = False,
    strict: bool = False,
    ptq_options: Mapping[str, Any] | None = None,
    gate: Gate | None = None,
) -> QuantizeResult:
    """Quantization-aware fine-tuning of the bundle's model to an INT8 QDQ graph in ``target``'s format.

    Args:
        bundle_dir: a bundle made by `edgetl.export.export_checkpoint`.
        data: the images to fine-tune on (default: the dataset recorded at export): a labelled dataset (its
            training split; its classes must be the bundle's labels) or, for a classifier, a folder of unlabelled
            images (the loss needs no labels; every fifth image is held out to choose the epoch, by agreement).
        settings: epochs, learning rate, batch size, images, layers (default: `QatSettings.for_task`).
        calib_data, calib_size: PTQ calibration (default: ``data``).
        val_data, val_size: the validation images each epoch and the final comparison are scored on
            (default: every image of the validation split of ``data``, the images `edgetl validate` gates on).
        seed: seeds the draws and the training.
        reduce_range: start from 7-bit weights on non-depthwise layers (`quantize_bundle`); QAT keeps the
            start's weight bits.
        target: ``tensorrt`` (symmetric int8 activations, scored in exact numerics) or ``cpu`` (uint8
            activations, scored in this machine's kernels): the format and the numerics `validate` gates it in.
        progress: progress bars on stderr.
        strict: a model that fails its own golden check raises `GateFailedError`.
        ptq_options: more `quantize_bundle` settings for the PTQ start (``method``, ``bias_correction``...).
        gate: ``(max drop in points, min agreement or None)`` the model is chosen for: the best epoch is one within
            it when any is, and a QAT model within it replaces a PTQ model outside it (default: the task's
            `edgetl.metrics.gate.default_gate`, what ``validate`` applies; budget mode passes its budget).

    Raises:
        BadInputError: no dataset, classes that differ from the bundle's, a graph QAT cannot run.
    """
    from edgetl.bundle.manifest import open_bundle
    from edgetl.quantize.qat import check_labels

    start = time.perf_counter()
    bundle = open_bundle(bundle_dir)
    settings = settings or QatSettings.for_task(bundle.task, seed=seed)
    source = data or bundle.dataset
    if not source:
        raise BadInputError("no training images for QAT: the bundle records no dataset",
                            hint="pass --data DATASET (the dataset the model was fine-tuned on)")
    if not Path(source).exists():
        raise BadInputError(f"QAT dataset not found: {source}", hint="pass --data DATASET")
    check_labels(source, bundle.labels, bundle.task)
    numerics = gate_numerics(target)
    log.info("QAT: post-training quantization first (%s format); its calibration starts the quantizers",
             "TensorRT" if target == "tensorrt" else "CPU")
    ptq = quantize_bundle(bundle_dir, "int8", calib_data=calib_data or source, calib_size=calib_size, seed=seed,
                          target=target, reduce_range=reduce_range, progress=progress, **(ptq_options or {}))
    with tempfile.TemporaryDirectory(prefix="edgetl-qat-ref-") as tmp:
        bundle = open_bundle(bundle_dir)
        src = _ptq_reference(bundle, ptq.info, Path(tmp))
        outcome, qat_path = _fine_tune(bundle, source, settings, src, val_data=val_data or source,
                                       val_size=val_size, seed=seed, progress=progress, numerics=numerics,
                                       gate=gate or default_gate(bundle.task))
    result = _write(open_bundle(bundle_dir), ptq, outcome, qat_path, settings, numerics=numerics)
    result.seconds = time.perf_counter() - start
    log_warnings(result.warnings)
    check = result.info.get("golden_check")
    if strict and check is not None and not check["passed"]:
        raise GateFailedError(f"the INT8 model at {result.path} fails the bundle's golden check: "
                              f"{'; '.join(check['failures'])}")
    return result


def _ptq_reference(bundle: Any, info: Mapping[str, Any], tmp: Path) -> Path:
    """The FP32 graph PTQ quantized: the bundle's, or its centred rewrite (`edgetl.quantize.shift`), which the
    PTQ graph's layers and biases match."""
    src = bundle.path_of(bundle.reference_onnx())
    tensors = (info.get("centred_activations") or {}).get("tensors")
    if not tensors:
        return src
    from edgetl.quantize.shift import centre_bounded_activations

    centred = tmp / "centred.onnx"
    onnx.save(centre_bounded_activations(onnx.load(str(src)), only=tensors)[0], str(centred))
    return centred


def _fine_tune(bundle: Any, source: Any, settings: QatSettings, src: Path, *, val_data: Any, val_size: int | None,
               seed: int, progress: bool, numerics: str,
               gate: Gate) -> tuple[QatOutcome, Path | None]:
    """QAT of the bundle's PTQ graph against ``src``, the FP32 graph that PTQ quantized."""
    from edgetl.data.imagesets import balanced_indices, decode
    from edgetl.quantize.qat import (
        export_module,
        graph_values,
        loss_tensors,
        module_outputs,
        pick_cut,
        qat_images,
        train_qat,
        worse,
    )
    from edgetl.quantize.qat_graph import QdqModule
    from edgetl.train.cpu_memory import keep_freed_memory

    t0 = time.perf_counter()
    keep_freed_memory()  # the graph module frees each tensor after its last reader: reuse the memory, no page faults
    ptq_path = bundle.root / FILES["int8"]
    reference, quantized = onnx.load(str(src)), onnx.load(str(ptq_path))
    module = QdqModule.create(quantized, reference)
    shared = Path(val_data).resolve() == Path(source).resolve()
    sample, scorer, run = validation_sample(bundle, src, val_data, val_size=val_size, seed=seed, numerics=numerics,
                                            images=qat_images(val_data, bundle.labels, "val", bundle.task, shared))
    images = qat_images(source, bundle.labels, "train", bundle.task, shared)
    if settings.images is not None and settings.images < len(images.paths):
        images = images.subset(balanced_indices(images.labels, settings.images, seed))
    decoded = decode(images, bundle.preprocess, progress=progress, what="QAT training images")
    if len(decoded.batch) == 0:
        raise BadInputError(f"no decodable training images in {source} for QAT")
    names = loss_tensors(quantized, reference, bundle.task)
    log.info("QAT: FP32 targets for %d training images", len(decoded.batch))
    targets = graph_values(src, decoded.batch, names)
    outputs = list(module.output_names)
    classify = bundle.task == "classify"
    cut = pick_cut(module, settings.layers)
    train_inputs, val_inputs, ptq_outputs = decoded.batch, sample.batch, None
    if cut is not None:
        log.info("QAT: training the layers after %s; the graph before it runs once per image", cut[1])
        # In the numerics the result is gated in: with this machine's fused kernels instead (3x faster here),
        # the trained layers see inputs a rounding step away, and the epoch chosen moves by a near-tie image.
        frozen = {"numerics": numerics, "progress": progress, "what": "QAT: frozen layers, once per image"}
        train_inputs = graph_values(ptq_path, train_inputs, [cut[1]], **frozen)[cut[1]]
        # The same pass gives the PTQ model's own outputs on the validation images: its score below.
        values = graph_values(ptq_path, val_inputs, [cut[1], *outputs], **frozen)
        val_inputs = values[cut[1]]
        ptq_outputs = values[outputs[0]] if classify else {name: values[name] for name in outputs}

    def evaluate(mod: Any) -> dict[str, Any]:
        values = module_outputs(mod, val_inputs, outputs, start=cut)
        return scorer(values[outputs[0]] if classify else values, sample)

    _, history, best_epoch, interrupted = train_qat(module, train_inputs, targets, evaluate, settings,
                                                    classify=classify, progress=progress, start=cut, gate=gate)
    ptq_metrics = scorer(run(ptq_path, sample.batch) if ptq_outputs is None else ptq_outputs, sample)
    # Epoch 0 is the PTQ model itself (step 0 reproduces it): when no epoch beat it there is nothing new to export,
    # and writing PTQ's weights back under the name QAT would claim a training that changed nothing.
    path = export_module(module) if best_epoch > 0 else None
    qat_metrics = ptq_metrics if path is None else scorer(run(path, sample.batch), sample)
    kept = "qat" if path is not None and not worse(qat_metrics, ptq_metrics, gate) else "ptq"
    outcome = QatOutcome(kept, _plain(ptq_metrics), _plain(qat_metrics), history, best_epoch, interrupted,
                         time.perf_counter() - t0, len(decoded.batch), gate)
    if kept == "ptq" and path is not None:
        shutil.rmtree(path.parent, ignore_errors=True)
    return outcome, path if kept == "qat" else None


def _write(bundle: Any, ptq: QuantizeResult, outcome: QatOutcome, path: Path | None,
           settings: QatSettings, *, numerics: str) -> QuantizeResult:
    from edgetl.export.onnx_graph import load_onnx, save_onnx
    from edgetl.quantize.int8 import qdq_summary

    qat_info = {**settings.to_dict(), **outcome.to_dict()}
    out = bundle.root / FILES["int8"]
    if path is None:
        why = ("no epoch scored better than the PTQ start" if outcome.best_epoch == 0
               else why_worse(outcome.qat, outcome.ptq, outcome.gate))
        note = f"QAT did not beat PTQ on the validation images ({why}); the PTQ model is kept in {out}"
        info = {**ptq.info, "qat_attempt": qat_info}
        _record(bundle, "int8", info)
        bundle.save()
        return QuantizeResult(bundle.root, out, ptq.precision, info, warnings=[*ptq.warnings, note])
    try:
        model = load_onnx(path)
        save_onnx(model, out)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    info = {**ptq.info, "scheme": "qat", "qat": qat_info, "graph": qdq_summary(model),
            "weights": {**ptq.info["weights"], "note": "trained by QAT; bias correction applies to the PTQ start"}}
    other = "device" if numerics == "exact" else "exact"
    info["golden"], info["golden_check"] = _golden_check(bundle, out, "int8", numerics=(numerics, other))
    bundle.manifest["artifacts"] = [a for a in bundle.manifest["artifacts"] if a["path"] != FILES["int8"]]
    bundle.add_artifact(out, kind="onnx", precision="int8", created_by="quantize", info=info)
    _record(bundle, "int8", info)
    bundle.save()
    warnings = [w for w in ptq.warnings if not w.startswith(GOLDEN_FAILED)]
    check = info["golden_check"]
    if check is not None and not check["passed"]:
        warnings.insert(0, f"{GOLDEN_FAILED}: the QAT model written to {out} does not match the FP32 golden "
                           f"outputs within the bundle's tolerance ({'; '.join(check['failures'])})")
    return QuantizeResult(bundle.root, out, "int8", info, warnings=warnings)


def escalate(
    bundle_dir: str | Path,
    *,
    max_drop: float,
    min_agreement: float | None = None,
    max_kept: int = ESCALATION_MAX_KEPT,
    data: str | Path | None = None,
    settings: QatSettings | None = None,
    calib_size: int = 300,
    val_data: str | Path | None = None,
    val_size: int | None = None,
    seed: int = 0,
    reduce_range: bool = False,
    target: str = "tensorrt",
    progress: bool = False,
    calib_data: str | Path | None = None,
    ptq_options: Mapping[str, Any] | None = None,
) -> tuple[QuantizeResult, list[dict[str, Any]]]:
    """Budget mode with QAT as the last step: PTQ -> PTQ with at most ``max_kept`` points in float -> QAT.

    ``calib_data`` (default: the QAT dataset) and ``ptq_options`` (`quantize_bundle` settings such as ``method``)
    apply to both PTQ steps and to QAT's PTQ start.

    Returns:
        The result of the step that met the budget, and every step tried: ``step``, ``within_budget``,
        ``drop``, ``agreement``, ``seconds``, ``float_layers``, ``float_activations``.

    Raises:
        GateFailedError: no step met the budget (the last step's model is in the bundle).
    """
    from edgetl.bundle.manifest import open_bundle
    from edgetl.quantize.budget import describe_bound, within

    bundle = open_bundle(bundle_dir)
    source = data or bundle.dataset
    steps: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    common = dict(calib_data=calib_data or source, calib_size=calib_size, val_data=val_data or source,
                  val_size=val_size, seed=seed, target=target, max_drop=max_drop, min_agreement=min_agreement,
                  reduce_range=reduce_range, progress=progress)
    result: QuantizeResult | None = None
    with contextlib.suppress(GateFailedError):  # the budget record says what the search reached
        result = quantize_bundle(bundle_dir, "int8", max_kept=max_kept, **common, **(ptq_options or {}))
    budget = open_bundle(bundle_dir).manifest["quantization"]["int8"]["budget"]
    seconds = time.perf_counter() - t0
    first = budget["steps"][0]
    steps.append({"step": "ptq", "within_budget": within(first, max_drop, min_agreement), "drop": first["drop"],
                  "agreement": first["agreement"], "seconds": round(seconds, 2), "float_layers": 0,
                  "float_activations": 0})
    if not steps[0]["within_budget"]:
        final = budget["final"]
        steps.append({"step": f"ptq + at most {max_kept} points in float", "within_budget": budget["within_budget"],
                      "drop": final["drop"], "agreement": final["agreement"], "seconds": round(seconds, 2),
                      "float_layers": len(budget["kept_layers"]), "float_activations": len(budget["kept_activations"]),
                      "note": "one search: the PTQ step and this one share the sensitivity run's time"})
    if budget["within_budget"] and result is not None:
        return result, steps
    log.info("budget mode: PTQ with up to %d points in float misses the budget; trying QAT (every layer INT8)",
             max_kept)
    t1 = time.perf_counter()
    result = qat_bundle(bundle_dir, data=source, settings=settings, calib_data=calib_data, calib_size=calib_size,
                        val_data=val_data or source, val_size=val_size, seed=seed, reduce_range=reduce_range,
                        target=target, progress=progress, ptq_options=ptq_options, gate=(max_drop, min_agreement))
    record = result.info.get("qat") or result.info["qat_attempt"]
    qat = record["qat"]  # the QAT model's metrics, whether or not it was written
    ok = "qat" in result.info and within(qat, max_drop, min_agreement)
    steps.append({"step": "qat", "within_budget": ok, "drop": qat["drop"], "agreement": qat["agreement"],
                  "seconds": round(time.perf_counter() - t1, 2), "float_layers": 0, "float_activations": 0})
    result.budget = {"escalation": steps}
    if not ok:
        raise GateFailedError(
            f"no step met the budget ({describe_bound(max_drop, min_agreement)}): "
            + "; ".join(f"{s['step']}: drop {s['drop']:.2f}, agreement {s['agreement']:.4f}" for s in steps)
            + f"; the model in {result.path} is the last step's",
            hint="raise --max-drop, lower --min-agreement, or give QAT more --qat-epochs")
    return result, steps


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()}
