"""``edgetl quantize BUNDLE --precision fp16|int8``: add a quantized graph to a bundle."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say
from edgetl.cli.options import precision_option
from edgetl.quantize.calibration import METHODS
from edgetl.quantize.int8 import WEIGHT_ROUNDINGS, WEIGHT_SCALES
from edgetl.quantize.qat import TASK_DEFAULTS
from edgetl.tables import format_table


def _qat_default(key: str) -> str:
    """A QAT setting's default per task, for --help (`TASK_DEFAULTS` is the one place it is decided; ``None`` is
    "all": every layer, every image)."""
    tasks = (("classifiers", TASK_DEFAULTS["classify"]), ("detectors", TASK_DEFAULTS["detect"]))
    return ", ".join(f"{task} {'all' if values[key] is None else format(values[key], 'g')}" for task, values in tasks)


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@precision_option("int8", ("int8", "fp16"))
@click.option("--calib-data", type=click.Path(), default=None,
              help="Calibration images (dataset: its training split; or a folder). Default: the training dataset.")
@click.option("--calib-size", type=int, default=300, show_default=True, help="Images, seeded and class-balanced.")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="Calibration method (ranges from streamed statistics; see docs/quantize.md). "
                   "[default: mse-unbounded]")
@click.option("--percentile", type=float, default=99.999, show_default=True, help="For --method percentile.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales.")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="tensorrt: symmetric int8 activations (TensorRT's format, gated in exact numerics); cpu: uint8 "
                   "activations, what ONNX Runtime's x86 kernels run fastest (gated in this machine's numerics).")
@click.option("--activations", "activation_type", type=click.Choice(["int8", "uint8"]), default=None,
              help="Override the target's activation type (int8: symmetric; uint8: asymmetric).")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Correct each layer's bias for the mean shift of its rounded weights.")
@click.option("--sequential-correction/--no-sequential-correction", default=None,
              help="Then move each layer's bias by the mean output error left in the quantized graph, layer by layer "
                   "in exact numerics (128 calibration images). Default: on for classifiers, off for detectors "
                   "(measured: docs/quantize.md).")
@click.option("--weight-scales", type=click.Choice(WEIGHT_SCALES), default="max", show_default=True,
              help="Per-channel weight scales: largest magnitude, or least squared error.")
@click.option("--weight-rounding", type=click.Choice(WEIGHT_ROUNDINGS), default="gptq", show_default=True,
              help="gptq: each layer's codes chosen for the least output error on the calibration images; nearest: "
                   "each weight to its nearest code.")
@click.option("--centre-activations/--no-centre-activations", default=True, show_default=True,
              help="TensorRT format: centre each ReLU6 output read by convolutions on zero (an exact rewrite of the "
                   "FP32 graph), so symmetric int8 spends all its codes on it.")
@click.option("--reduce-range/--no-reduce-range", default=False, show_default=True,
              help="7-bit weights on non-depthwise layers, for other runtimes on x86 CPUs without VNNI (edgetl's "
                   "runtime uses ONNX Runtime's precise kernels there instead).")
@click.option("--max-drop", type=float, default=None,
              help="Accuracy budget in points (top-1; detectors: mAP@0.5:0.95): keep the most sensitive layers "
                   "in float until within it.")
@click.option("--min-agreement", type=float, default=None,
              help="Budget mode also requires this agreement with FP32 (top-1; detectors: matched boxes).")
@click.option("--val-data", type=click.Path(), default=None,
              help="Labelled images for the budget (default: the validation split).")
@click.option("--val-size", type=click.IntRange(min=1), default=None,
              help="Validation images the budget and QAT score candidates on, class-balanced and seeded (default: "
                   "every image of the validation split, the images `edgetl validate` gates on).")
@click.option("--max-kept", type=int, default=None,
              help="Most quantization points (layer weights, activations) the budget may keep in float "
                   "(default: no limit).")
@click.option("--exclude", "exclude", multiple=True, help="Layer (node) name to keep in float; repeatable.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--qat/--no-qat", default=None,
              help="Quantization-aware fine-tuning after PTQ, in the --target format: a few epochs on --data "
                   "against the FP32 model; written only if not worse than PTQ. Budget mode (--max-drop) escalates "
                   "on its own when a training dataset is at hand: PTQ, then PTQ with at most 3 points in float, "
                   "then QAT, stopping at the first within the budget; --no-qat keeps it to PTQ.")
@click.option("--qat-epochs", type=int, default=None, help=f"QAT epochs (default: {_qat_default('epochs')}).")
@click.option("--qat-lr", type=float, default=None,
              help="QAT learning rate, Adam, in quantization steps: 1e-2 moves a weight by about a hundredth of its "
                   f"int8 step per step (default: {_qat_default('lr')}).")
@click.option("--qat-images", type=int, default=None,
              help="Most training images QAT uses, class-balanced and seeded (default: "
                   f"{_qat_default('images')}; 0: all).")
@click.option("--qat-layers", type=int, default=None,
              help="Train only the last N weighted layers (the graph before them runs once and is cached: the fast "
                   f"mode); default: {_qat_default('layers')}.")
@click.option("--data", "data", type=click.Path(), default=None,
              help="QAT: the images to fine-tune on: the labelled dataset or, for a classifier, a folder of "
                   "unlabelled images (every fifth then chooses the epoch). Default: the dataset recorded at export.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when the written model fails its own golden check (the bundle's tolerance).")
@config_option
@json_option
@handle_errors
def command(bundle, precision, calib_data, calib_size, method, percentile, per_channel, target, activation_type,
            bias_correction, sequential_correction, weight_scales, weight_rounding, centre_activations,
            reduce_range, max_drop,
            min_agreement, val_data, val_size, max_kept, exclude, seed, qat, qat_epochs, qat_lr, qat_images,
            qat_layers, data, strict, as_json: bool) -> None:
    """Quantize the FP32 model of BUNDLE to FP16 or INT8 (QDQ, static, calibrated; --qat: fine-tuned)."""
    from edgetl.quantize import quantize_bundle

    ptq_options = {"method": method, "percentile": percentile, "per_channel": per_channel,
                   "bias_correction": bias_correction, "sequential_correction": sequential_correction,
                   "weight_scales": weight_scales,
                   "weight_rounding": weight_rounding,
                   "centre_activations": centre_activations,
                   "nodes_to_exclude": list(exclude)}
    if qat or (qat is None and _escalates(bundle, precision, max_drop, activation_type, target, data)):
        _qat(bundle, precision=precision, target=target, activation_type=activation_type, calib_data=calib_data,
             reduce_range=reduce_range, calib_size=calib_size, max_drop=max_drop, min_agreement=min_agreement,
             val_data=val_data, val_size=val_size, max_kept=max_kept, seed=seed, epochs=qat_epochs, lr=qat_lr,
             images=qat_images, layers=qat_layers, data=data, ptq_options=ptq_options, strict=strict,
             as_json=as_json)
        return

    result = quantize_bundle(bundle, precision, calib_data=calib_data, calib_size=calib_size, method=method,
                             per_channel=per_channel, max_drop=max_drop, val_data=val_data, seed=seed,
                             activation_type=activation_type, target=target, reduce_range=reduce_range,
                             bias_correction=bias_correction, sequential_correction=sequential_correction,
                             weight_scales=weight_scales, weight_rounding=weight_rounding,
                             centre_activations=centre_activations, percentile=percentile,
                             min_agreement=min_agreement, val_size=val_size, nodes_to_exclude=list(exclude),
                             max_kept=max_kept, progress=not as_json, strict=strict)
    info = result.info
    if precision == "int8":
        cal = info["calibration"]
        say(f"calibration: {cal['images']} images ({info['method']}), "
            f"{'cached ranges reused' if cal['cache_hit'] else 'ranges computed and cached'} in {cal['cache']}")
    if result.budget:
        steps = result.budget["steps"]
        say(f"sensitivity of {result.budget['units']} quantization points measured; candidates scored:")
        say(format_table(["kept in float", "last unit kept", "drop pts", "agreement", "sensitivity"],
                         [[s["kept"], _unit(s["unit"]), s["drop"], s["agreement"], s["sensitivity"]] for s in steps]))
    if precision == "int8":
        w = info["weights"]
        seven = f" (7-bit on {w['seven_bit_layers']} layers)" if w["seven_bit_layers"] else ""
        say(f"weights: 8-bit per channel{seven}, bias correction on {w['bias_corrected_layers']} layers; "
            f"{info['graph']['int8_layers']} layers INT8, {len(info['graph']['float_layers'])} in float")
        sequential = info.get("sequential_correction_result")
        if sequential:
            say(f"sequential bias correction: {sequential['layers']} layers' mean output error removed in the "
                f"quantized graph ({sequential['images']} images, largest shift {sequential['largest_shift']:.3g}, "
                f"{sequential['seconds']:.1f}s)")
        centred = info.get("centred_activations") or {}
        if centred.get("centred_tensors"):
            say(f"activations: {centred['centred_tensors']} ReLU6 outputs centred on zero for symmetric int8 "
                f"({centred['explicit_pads']} explicit pads)")
    golden = (info.get("golden") or {}).values()
    for g in golden:
        for mode, entry in (g.get("numerics") or {"this machine's kernels": g}).items():
            label = {"exact": "exact numerics", "device": "this machine's kernels"}.get(mode, mode)
            say(f"golden check ({label}): max abs diff {entry['max_abs_diff']:.3g}"
                + (f", top-1 agreement {entry['top1_agreement']:.3f}" if "top1_agreement" in entry else ""))
    check = info.get("golden_check")
    if check:
        say(f"golden check against the bundle's tolerance {check['tolerance']}: "
            f"{'passed' if check['passed'] else 'FAILED'}", fg="green" if check["passed"] else "red")
    say(f"wrote {result.path} ({result.precision}) in {result.seconds:.1f}s", fg="green")
    if as_json:
        emit_json(result.to_dict())


def _unit(unit: dict | None) -> str:
    if unit is None:
        return "(all INT8)"
    return unit["name"] if unit["kind"] == "layer" else f"{unit['name']} (activation)"


def _escalates(bundle, precision, max_drop, activation_type, target, data) -> bool:
    """Whether budget mode ends in QAT: an INT8 budget in one of the two formats, with training images at hand."""
    from edgetl.quantize.int8 import TARGETS
    from edgetl.quantize.qat_api import training_source

    if max_drop is None or precision != "int8" or activation_type not in (None, TARGETS[target]):
        return False
    if training_source(bundle, data) is None:
        say("budget mode: no training dataset at hand (recorded at export or --data), so no QAT step after PTQ")
        return False
    return True


def _qat(bundle, *, precision, target, activation_type, calib_data, reduce_range, calib_size, max_drop,
         min_agreement, val_data, val_size, max_kept, seed, epochs, lr, images, layers, data, ptq_options, strict,
         as_json) -> None:
    """``--qat``: fine-tune, or (with ``--max-drop``) escalate PTQ -> PTQ + float-kept points -> QAT."""
    from edgetl.errors import BadInputError
    from edgetl.quantize.int8 import TARGETS
    from edgetl.quantize.qat import QatSettings
    from edgetl.quantize.qat_api import ESCALATION_MAX_KEPT, escalate, qat_bundle

    if precision != "int8" or activation_type not in (None, TARGETS[target]):
        raise BadInputError("--qat fine-tunes one of the two INT8 formats: --target tensorrt (symmetric int8 "
                            "activations) or --target cpu (uint8)",
                            hint="drop --precision fp16 / --activations with --qat, and choose --target")
    from edgetl.bundle.manifest import open_bundle

    settings = QatSettings.for_task(open_bundle(bundle).task, epochs=epochs, lr=lr, seed=seed, layers=layers,
                                    images=images)
    steps = None
    if max_drop is not None:
        result, steps = escalate(bundle, max_drop=max_drop, min_agreement=min_agreement, data=data,
                                 max_kept=ESCALATION_MAX_KEPT if max_kept is None else max_kept,
                                 settings=settings, calib_data=calib_data, calib_size=calib_size, val_data=val_data,
                                 val_size=val_size, seed=seed, reduce_range=reduce_range, target=target,
                                 progress=not as_json, ptq_options=ptq_options)
    else:
        result = qat_bundle(bundle, data=data, settings=settings, calib_data=calib_data, calib_size=calib_size,
                            val_data=val_data, val_size=val_size, seed=seed, reduce_range=reduce_range,
                            target=target, progress=not as_json, strict=strict, ptq_options=ptq_options)
    record = result.info.get("qat") or result.info.get("qat_attempt")
    if record:
        say(f"QAT: {record['images']} images, {len(record['history']) - 1} epoch(s) in {record['seconds']:.1f}s"
            + (" (interrupted)" if record["interrupted"] else "") + f"; best epoch {record['best_epoch']}")
        say(format_table(["epoch", "loss", "val agreement", "val drop pts"],
                         [[h["epoch"], "-" if h["loss"] is None else h["loss"], h["agreement"], h["drop"]]
                          for h in record["history"]]))
        say(format_table(["model (exact numerics)", "agreement", "drop pts"],
                         [["PTQ", record["ptq"]["agreement"], record["ptq"]["drop"]],
                          ["QAT", record["qat"]["agreement"], record["qat"]["drop"]]]))
        say(f"kept: {'QAT' if record['kept'] == 'qat' else 'PTQ (QAT did not beat it)'}")
    if steps:
        say(format_table(["step", "within budget", "drop pts", "agreement", "seconds", "float layers"],
                         [[s["step"], s["within_budget"], s["drop"], s["agreement"], s["seconds"], s["float_layers"]]
                          for s in steps]))
    check = result.info.get("golden_check")
    if check:
        say(f"golden check against the bundle's tolerance {check['tolerance']}: "
            f"{'passed' if check['passed'] else 'FAILED'}", fg="green" if check["passed"] else "red")
    say(f"wrote {result.path} ({result.precision}) in {result.seconds:.1f}s", fg="green")
    if as_json:
        emit_json({**result.to_dict(), "escalation": steps})
