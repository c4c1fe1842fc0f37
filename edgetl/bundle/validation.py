"""The manifest's validation record: one result per validated artifact, written and read here only.

``edgetl validate`` writes a record per candidate, so validating FP16 after INT8 keeps INT8's verdict, and
the runtime's ``best`` choice reads the same records. A record remembers the candidate's sha256: once the
artifact is replaced (re-quantized, rebuilt), its old verdict no longer applies to it.

Shape (``validation`` in the manifest, ``schema`` 2)::

    {"schema": 2, "latest": "model.int8.onnx",
     "results": {"model.int8.onnx": {"passed": true, "precision": "int8", "sha256": "...",
                                     "reference": "model.onnx", "gate_numerics": "exact",
                                     "numerics": {"exact": {"passed": true, "checks": [...]},
                                                  "device": {"passed": true, "checks": [...]}},
                                     "metrics": {...}, "agreement": {...}, "images": {...},
                                     "speedup_p50": 1.7, "created_at": "..."}}}

A bundle written before schema 2 holds its last run as one flat report (``candidate`` an object with
``artifact``); `records` reads it as that artifact's record and nothing else.
"""

from __future__ import annotations

from typing import Any

from edgetl.bundle.manifest import Bundle

SCHEMA = 2
#: Fields of a validation report kept in the manifest (the whole report is in report.json).
_KEPT = ("passed", "reference", "candidate", "metrics", "agreement", "checks", "images", "numerics", "created_at")


def record(bundle: Bundle, report: dict[str, Any]) -> dict[str, Any]:
    """Add ``report`` (`edgetl.validate.ValidationReport.to_dict`) as its candidate's record; others stay."""
    candidate = report["candidate"]
    path = candidate["artifact"]
    art = next((a for a in bundle.artifacts if a.path == path), None)
    numerics = report.get("numerics") or {}
    entry = {
        "passed": bool(report["passed"]),
        "precision": candidate.get("precision"),
        "sha256": art.sha256 if art is not None else None,
        "reference": (report.get("reference") or {}).get("artifact"),
        "gate_numerics": numerics.get("gate"),
        "numerics": {mode: {"passed": r.get("passed"), "checks": r.get("checks")}
                     for mode, r in (numerics.get("modes") or {}).items()},
        "checks": report.get("checks"),
        "metrics": report.get("metrics"),
        "agreement": report.get("agreement"),
        "images": report.get("images"),
        "speedup_p50": candidate.get("speedup_p50"),
        "created_at": report.get("created_at"),
    }
    results = dict(records(bundle))
    results[path] = entry
    section = {"schema": SCHEMA, "latest": path, "results": results}
    bundle.set_section("validation", section)
    return entry


def records(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """Artifact path -> its validation record (empty when nothing was validated)."""
    section = bundle.manifest.get("validation")
    if not isinstance(section, dict):
        return {}
    if section.get("schema") == SCHEMA:
        return {k: v for k, v in (section.get("results") or {}).items() if isinstance(v, dict)}
    candidate = section.get("candidate")  # schema 1: the last report, flat
    if isinstance(candidate, dict) and isinstance(candidate.get("artifact"), str) and "passed" in section:
        flat = {k: section.get(k) for k in _KEPT if k in section}
        return {candidate["artifact"]: {**flat, "precision": candidate.get("precision"), "sha256": None,
                                        "speedup_p50": candidate.get("speedup_p50")}}
    return {}


def current(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """The records that still apply: their artifact is in the bundle with the hash it was validated with
    (a schema-1 record, which has no hash, applies while its artifact exists)."""
    by_path = {a.path: a for a in bundle.artifacts}
    out = {}
    for path, entry in records(bundle).items():
        art = by_path.get(path)
        if art is not None and (entry.get("sha256") in (None, art.sha256)):
            out[path] = entry
    return out


def passed_artifacts(bundle: Bundle) -> set[str]:
    """Paths of the artifacts whose current record passed its gate."""
    return {path for path, entry in current(bundle).items() if entry.get("passed") is True}


def latest(bundle: Bundle) -> dict[str, Any] | None:
    """The most recently written record (for ``edgetl info``), with its artifact path."""
    section = bundle.manifest.get("validation")
    found = records(bundle)
    if not found:
        return None
    path = section.get("latest") if isinstance(section, dict) and section.get("latest") in found else next(iter(found))
    return {"artifact": path, **found[path]}
