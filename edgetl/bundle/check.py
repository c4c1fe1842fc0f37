"""Golden smoke test: run a bundle's saved inputs through a backend and compare with the reference.

Export saves a few preprocessed inputs and the FP32 model's outputs (manifest ``golden``). After a
copy to a device, an engine build or a hot swap, `check` proves the artifact still computes what the
reference computed, with a tolerance per precision:

* ``max_abs``: the largest absolute difference of any output element (FP32);
* ``max_rel``: that difference relative to the largest reference magnitude (FP16: its 11-bit mantissa
  makes errors proportional to the values, so an absolute bound fails large logits and passes small ones);
* ``top1_agreement``: the fraction of samples whose arg-max class agrees (INT8, where element-wise
  differences are expected but decisions must not change).

`TOLERANCES` is the one table: export records it in the manifest, and quantize's golden check, ``bundle
check``, the daemon's swap check and compile's engine check all read it through `tolerance_for`. This
module holds the data and the comparison; running artifacts is the runtime's (`edgetl.runtime.golden`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.bundle.manifest import Bundle
from edgetl.errors import BundleError

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-3},
    "fp16": {"max_rel": 2e-2},
    "int8": {"top1_agreement": 0.85},
}


def tolerance_for(bundle: Bundle, precision: str) -> dict[str, float]:
    """The tolerance the bundle records for ``precision`` (``mixed`` uses INT8's), else the default."""
    key = "int8" if precision == "mixed" else precision
    recorded = (bundle.manifest.get("golden") or {}).get("tolerance") or {}
    return dict(recorded.get(key) or TOLERANCES.get(key, TOLERANCES["fp32"]))


def load_golden(bundle: Bundle) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The golden input batch and reference outputs recorded in the manifest."""
    section = bundle.manifest.get("golden")
    if not section:
        raise BundleError(f"{bundle.root}: the bundle has no golden samples",
                          hint="re-export it with `edgetl export` (golden samples are written by default)")
    try:
        x = np.load(bundle.root / section["input"], allow_pickle=False)
        ref = {name: np.load(bundle.root / rel, allow_pickle=False) for name, rel in section["outputs"].items()}
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{bundle.root}: unreadable golden samples ({exc})") from exc
    return x.astype(np.float32, copy=False), ref


def compare_outputs(
    outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: dict[str, float], *,
    classify: bool = True,
) -> dict[str, Any]:
    """Compare outputs with the reference under ``tolerance``; returns stats and ``passed``.

    Top-1 agreement gates a classifier's outputs only: a detector's raw per-anchor class scores are mostly
    background, where the arg-max is a tie between near-zero scores (its accuracy is validate's mAP gate).
    """
    if not classify:
        tolerance = {k: v for k, v in tolerance.items() if k != "top1_agreement"}
    stats: dict[str, Any] = {}
    failures: list[str] = []
    for name, ref in reference.items():
        if name not in outputs:
            failures.append(f"output {name!r} missing")
            continue
        out = np.asarray(outputs[name], dtype=np.float32)
        ref = np.asarray(ref, dtype=np.float32)
        if out.shape != ref.shape:
            failures.append(f"output {name!r} has shape {out.shape}, reference {ref.shape}")
            continue
        diff = np.abs(out - ref)
        scale = float(np.abs(ref).max(initial=0.0))
        entry: dict[str, Any] = {"max_abs": float(diff.max(initial=0.0)),
                                 "mean_abs": float(diff.mean()) if diff.size else 0.0}
        entry["max_rel"] = entry["max_abs"] / scale if scale > 0 else entry["max_abs"]
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            entry["top1_agreement"] = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
        stats[name] = entry
        if "max_abs" in tolerance and entry["max_abs"] > tolerance["max_abs"]:
            failures.append(f"{name}: max |diff| {entry['max_abs']:.3g} > {tolerance['max_abs']:.3g}")
        if "max_rel" in tolerance and entry["max_rel"] > tolerance["max_rel"]:
            failures.append(f"{name}: max |diff| / max |reference| {entry['max_rel']:.3g} > {tolerance['max_rel']:.3g}")
        # Agreement gates class-like outputs only (boxes have no arg-max meaning).
        if "top1_agreement" in tolerance and "top1_agreement" in entry and name not in ("boxes", "det_boxes") \
                and entry["top1_agreement"] < tolerance["top1_agreement"]:
            failures.append(f"{name}: top-1 agreement {entry['top1_agreement']:.3f} < {tolerance['top1_agreement']}")
    return {"outputs": stats, "failures": failures, "passed": not failures}
