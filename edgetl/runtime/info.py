"""A bundle described for people and scripts: what `edgetl info` prints.

Torch-free: reading the manifest is enough, except for "which engines fit this device", which asks the
runtime's engine selection when TensorRT is importable here (hence this lives in the runtime, not in
the bundle layer below it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl import lazy
from edgetl.bundle.manifest import Bundle, open_bundle
from edgetl.bundle.validation import current, latest
from edgetl.runtime import artifacts
from edgetl.tables import format_table


def _engine_fit(bundle: Bundle) -> dict[str, str]:
    """``{engine path: fits | why not}`` when TensorRT is usable here; empty otherwise."""
    if not lazy.available("tensorrt"):
        return {}
    try:
        chosen, reason = artifacts.select_engine(bundle)
    except Exception as exc:  # describing a bundle must not fail on a broken GPU stack
        return {a.path: f"unknown ({type(exc).__name__})" for a in bundle.find(kind="engine")}
    return {a.path: ("selected: " + reason if chosen and chosen.path == a.path else "not selected")
            for a in bundle.find(kind="engine")}


def bundle_info(bundle_dir: str | Path | Bundle, *, verify: bool = True) -> dict[str, Any]:
    """Everything a user asks about a bundle, as one JSON-ready dict.

    Args:
        bundle_dir: a bundle directory or an open `Bundle`.
        verify: check artifact hashes (the result says ``"verified": true`` when they were).
    """
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else open_bundle(bundle_dir, verify=verify)
    m = bundle.manifest
    fit = _engine_fit(bundle)
    artifacts = []
    for a in bundle.artifacts:
        entry = {"path": a.path, "kind": a.kind, "precision": a.precision, "bytes": a.bytes,
                 "sha256": a.sha256, "created_by": a.created_by}
        if a.kind == "engine":
            entry["compat"] = a.compat
            entry["fits_this_device"] = fit.get(a.path, "unknown (TensorRT not available here)")
        if a.info:
            entry["info"] = a.info
        artifacts.append(entry)
    validation = latest(bundle)
    return {
        "bundle": str(bundle.root),
        "schema_version": m["schema_version"],
        "name": m.get("name"),
        "task": m["task"],
        "labels": m["labels"],
        "num_classes": len(m["labels"]),
        "input": m["input"],
        "preprocess": m["preprocess"],
        "postprocess": m.get("postprocess"),
        "artifacts": artifacts,
        "precisions": sorted({a.precision for a in bundle.artifacts if a.kind in ("onnx", "engine")}),
        "total_bytes": sum(a.bytes for a in bundle.artifacts),
        "golden": bool(m.get("golden")),
        "validation": validation,
        "validated": {path: entry.get("passed") for path, entry in current(bundle).items()},
        "provenance": m.get("provenance", {}),
        "verified": verify,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of `bundle_info`."""
    pre = info["preprocess"]
    labels = info["labels"]
    shown = ", ".join(labels[:12]) + (f", ... (+{len(labels) - 12})" if len(labels) > 12 else "")
    lines = [
        f"bundle     {info['bundle']}  (schema v{info['schema_version']}, "
        f"{'hashes verified' if info['verified'] else 'hashes NOT verified'})",
        f"name       {info['name']}",
        f"task       {info['task']}  ({info['num_classes']} classes: {shown})",
        f"input      {info['input']['name']}  {info['input']['layout']} {info['input']['dtype']} "
        f"{'x'.join(str(v) for v in info['input']['size'])}  dynamic batch: {info['input'].get('dynamic_batch')}",
        f"preprocess {pre['resize']} ({pre.get('interpolation', 'bilinear')}, crop_pct {pre.get('crop_pct')}), "
        f"mean {pre['mean']}, std {pre['std']}",
        f"postprocess {info['postprocess']}",
        "",
    ]
    rows = []
    for a in info["artifacts"]:
        note = a.get("fits_this_device", "")
        if a["kind"] == "engine" and a.get("compat"):
            c = a["compat"]
            where = f"{c.get('device_name', '?')} sm{c.get('compute_capability', '?')}"
            note = f"{where} trt{c.get('tensorrt_version', '?')} - {note}"
        rows.append([a["path"], a["kind"], a["precision"], _mb(a["bytes"]), a["created_by"], note])
    lines.append(format_table(["artifact", "kind", "precision", "size", "by", "device fit"], rows))
    lines.append(f"total {_mb(info['total_bytes'])}; golden samples: {'yes' if info['golden'] else 'no'}")
    validated = info.get("validated") or {}
    for path, passed in validated.items():
        lines.append(f"validation {'PASSED' if passed else 'FAILED'}: {path}")
    if not validated:
        lines.append("validation none yet (run `edgetl validate`)")
    prov = info.get("provenance") or {}
    if prov:
        lines.append("provenance " + ", ".join(f"{k}={v}" for k, v in prov.items() if not isinstance(v, (dict, list))))
    return "\n".join(lines)
