"""``edgetl validate BUNDLE``: candidate vs FP32 reference on the same images; exit 1 when the gate fails."""

from __future__ import annotations

import sys

import click

from edgetl.cli.common import EXIT_GATE, config_option, emit_json, handle_errors, json_option, say
from edgetl.cli.options import DeviceType
from edgetl.tables import format_table
from edgetl.validate.api import GATE_MAX_MAP_DROP, GATE_MAX_TOP1_DROP, GATE_MIN_AGREEMENT


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--candidate", default="int8", show_default=True,
              help="int8 | fp16 | fp32, or a path to an .onnx or TensorRT .engine file.")
@click.option("--reference", default="fp32", show_default=True,
              help="fp32 (the bundle's ONNX), or a path (.onnx, or an edgetl .pt checkpoint run in PyTorch).")
@click.option("--data", type=click.Path(), default=None,
              help="Validation images (default: the training dataset's validation split).")
@click.option("--limit", type=int, default=None, help="Use at most N images (seeded, class-balanced).")
@click.option("--max-top1-drop", type=float, default=GATE_MAX_TOP1_DROP, show_default=True,
              help="Gate: top-1 drop, in points.")
@click.option("--min-agreement", type=float, default=GATE_MIN_AGREEMENT, show_default=True,
              help="Gate: top-1 agreement.")
@click.option("--max-map-drop", type=float, default=GATE_MAX_MAP_DROP, show_default=True,
              help="Gate (detectors): mAP@0.5:0.95 drop, in points.")
@click.option("--device", "backend_device", type=DeviceType(), default="cpu", show_default=True,
              help="Where ONNX Runtime runs both models.")
@click.option("--latency-runs", type=int, default=20, show_default=True)
@click.option("--numerics", type=click.Choice(["both", "exact", "device"]), default="both", show_default=True,
              help="How a quantized candidate is computed: exact (integer-exact QDQ semantics: TensorRT, VNNI/AMX "
                   "CPUs), device (this machine's ONNX Runtime kernels), or both; the gate uses the target's.")
@config_option
@json_option
@handle_errors
def command(bundle, candidate, reference, data, limit, max_top1_drop, min_agreement, max_map_drop, backend_device,
            latency_runs, numerics, as_json: bool) -> None:
    """Validate a candidate model of BUNDLE against the reference; writes report.json, report.md and the manifest."""
    from edgetl.validate import validate_bundle

    report = validate_bundle(bundle, candidate=candidate, reference=reference, data=data, limit=limit,
                             max_top1_drop=max_top1_drop, min_agreement=min_agreement, max_map_drop=max_map_drop,
                             backend_device=backend_device,
                             latency_runs=latency_runs, numerics=numerics)
    doc = report.to_dict()
    say(f"{doc['reference']['artifact']} vs {doc['candidate']['artifact']} on {doc['images']['count']} images")
    if doc["images"]["undecodable"]:
        say(f"warning: {doc['images']['undecodable']} image(s) could not be decoded and were skipped", fg="yellow")
    if "map" not in doc["metrics"].get("reference", {}):
        from edgetl.validate.resolution import unresolved_limits

        coarse = unresolved_limits(doc["images"]["count"], max_top1_drop=max_top1_drop, min_agreement=min_agreement)
        for limit in coarse:
            say(f"warning: {limit.message()}", fg="yellow")
        doc["gate_resolution"] = [limit.to_dict() for limit in coarse]
    modes = doc["numerics"].get("modes") or {}
    gate = doc["numerics"].get("gate", "device")
    say(format_table(["numerics", "check", "value", "limit", "result"],
                     [[_numerics_label(mode) + (" (gate)" if mode == gate else ""), c["name"], c["value"],
                       f"{c['op']} {c['limit']}", "pass" if c["passed"] else "FAIL"]
                      for mode, result in modes.items() for c in result["checks"]]))
    metrics = doc["metrics"]
    if "map" in metrics.get("reference", {}):
        ref, cand, delta = metrics["reference"], metrics["candidate"], metrics["delta"]
        say(format_table(["metric", "reference %", "candidate %", "delta pts"],
                         [[name, _pct(ref[key]), _pct(cand[key]), delta[key]]
                          for name, key in (("mAP@0.5", "map50"), ("mAP@0.5:0.95", "map"))]))
        agree = doc["agreement"]
        say(f"boxes: {agree['matched']} of {agree['reference_boxes']} reference boxes matched "
            f"(mean IoU {_num(agree['matched_iou_mean'])}, mean score diff {_num(agree['score_abs_diff_mean'])})")
    lat_r, lat_c = doc["reference"]["latency_batch1"], doc["candidate"]["latency_batch1"]
    say(f"latency p50 {lat_r.get('p50_ms', 0):.2f} ms -> {lat_c.get('p50_ms', 0):.2f} ms; "
        f"size {doc['reference']['bytes']} -> {doc['candidate']['bytes']} bytes")
    say("PASSED" if report.passed else "FAILED: the candidate does not match the reference within the gate",
        fg="green" if report.passed else "red")
    if as_json:
        emit_json(doc)
    if not report.passed:
        sys.exit(EXIT_GATE)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value):
    return None if value is None else 100.0 * value


def _numerics_label(mode: str) -> str:
    return {"exact": "exact", "device": "this machine"}.get(mode, mode)
