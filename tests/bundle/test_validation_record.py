"""The manifest's validation record: one result per artifact, invalidated when the artifact changes, one
shape written and read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgetl.bundle import open_bundle
from edgetl.bundle.validation import SCHEMA, current, latest, passed_artifacts, record, records
from edgetl.quantize import quantize_bundle
from edgetl.runtime.artifacts import validated_precisions
from edgetl.validate import validate_bundle


def _report(artifact: str, precision: str, passed: bool) -> dict:
    return {"passed": passed, "reference": {"artifact": "model.onnx"},
            "candidate": {"artifact": artifact, "precision": precision, "speedup_p50": 1.5},
            "checks": [], "metrics": {}, "agreement": {}, "images": {"count": 3},
            "numerics": {"gate": "device", "modes": {"device": {"passed": passed, "checks": []}}},
            "created_at": "2026-01-01T00:00:00+00:00"}


def test_each_candidate_keeps_its_own_record(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = open_bundle(shutil.copytree(colour_bundle, tmp_path / "b"))
    record(bundle, _report("model.int8.onnx", "int8", True))
    record(bundle, _report("model.onnx", "fp32", False))  # a later run of another candidate
    bundle.save()
    again = open_bundle(tmp_path / "b")
    assert set(records(again)) == {"model.int8.onnx", "model.onnx"}
    assert passed_artifacts(again) == {"model.int8.onnx"} and validated_precisions(again) == {"int8", "mixed"}
    assert latest(again)["artifact"] == "model.onnx"
    assert again.manifest["validation"]["schema"] == SCHEMA


def test_a_replaced_artifact_loses_its_verdict(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = open_bundle(shutil.copytree(colour_bundle, tmp_path / "b"))
    record(bundle, _report("model.int8.onnx", "int8", True))
    entry = next(a for a in bundle.manifest["artifacts"] if a["path"] == "model.int8.onnx")
    entry["sha256"] = "0" * 64  # as re-quantizing records a new hash
    assert "model.int8.onnx" in records(bundle) and "model.int8.onnx" not in current(bundle)
    assert "int8" not in validated_precisions(bundle)


def test_a_schema_1_record_is_read_as_its_artifacts(colour_bundle: Path, tmp_path: Path) -> None:
    """What edgetl wrote before one record per artifact: the last report, flat."""
    root = shutil.copytree(colour_bundle, tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["validation"] = {"passed": True, "reference": {"artifact": "model.onnx"},
                              "candidate": {"artifact": "model.int8.onnx", "precision": "int8"},
                              "checks": [], "created_at": "2025-01-01T00:00:00+00:00"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    bundle = open_bundle(root, verify=False)
    assert passed_artifacts(bundle) == {"model.int8.onnx"}
    # Guessed shapes the writer never wrote are not read.
    manifest["validation"] = {"candidate": "int8", "passed": True}
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert records(open_bundle(root, verify=False)) == {}


@pytest.mark.slow
def test_validating_fp16_after_int8_keeps_int8s_pass(bundle_copy: Path, digits_dir: Path) -> None:
    quantize_bundle(bundle_copy, "fp16")
    quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=12, target="cpu")
    first = validate_bundle(bundle_copy, candidate="int8", data=digits_dir, limit=20, latency_runs=2,
                            min_agreement=0.0, max_top1_drop=100.0)
    validate_bundle(bundle_copy, candidate="fp16", data=digits_dir, limit=20, latency_runs=2)
    bundle = open_bundle(bundle_copy)
    assert first.passed and {"model.int8.onnx", "model.fp16.onnx"} <= passed_artifacts(bundle)
    assert records(bundle)["model.int8.onnx"]["gate_numerics"] == "device"
    assert set(records(bundle)["model.int8.onnx"]["numerics"]) == {"exact", "device"}
