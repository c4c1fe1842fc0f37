"""Validate: same-code reference vs candidate, reports, manifest, and the CLI gate's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.bundle import open_bundle
from edgetl.cli.main import cli
from edgetl.errors import BadInputError
from edgetl.quantize import quantize_bundle
from edgetl.validate import validate_bundle


@pytest.fixture
def quantized(bundle_copy: Path, digits_dir: Path) -> Path:
    quantize_bundle(bundle_copy, "fp16")
    quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=12, method="minmax")
    return bundle_copy


def test_fp16_passes_and_reports(quantized: Path, digits_dir: Path) -> None:
    report = validate_bundle(quantized, candidate="fp16", data=digits_dir, latency_runs=3)
    doc = report.to_dict()
    assert report.passed and doc["images"]["count"] == 60 and doc["images"]["labelled"]
    assert doc["agreement"]["top1_agreement"] == 1.0 and doc["agreement"]["cosine_mean"] > 0.999
    assert set(doc["metrics"]["reference"]) == {"top1", "top5"} and "top1_drop_points" in doc["metrics"]["delta"]
    assert doc["candidate"]["bytes"] < doc["reference"]["bytes"] and doc["candidate"]["latency_batch1"]["runs"] == 3
    assert json.loads((quantized / "report.json").read_text())["passed"] is True
    assert "PASSED" in (quantized / "report.md").read_text()
    assert open_bundle(quantized).manifest["validation"]["latest"] == "model.fp16.onnx"


@pytest.mark.slow
def test_torch_checkpoint_reference(quantized: Path, digits_dir: Path, tiny_checkpoint: Path) -> None:
    report = validate_bundle(quantized, candidate="fp32", reference=str(tiny_checkpoint), data=digits_dir, limit=10,
                             latency_runs=2, write=False)
    assert report.passed and report.reference["backend"] == "torch" and report.agreement["max_abs_diff"] < 1e-3


def test_cli_gate_exit_codes(quantized: Path, digits_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", str(quantized), "--candidate", "fp16", "--data", str(digits_dir),
                             "--latency-runs", "2"])
    assert ok.exit_code == 0, ok.output
    # Agreement above 1 cannot be met: the gate fails with exit code 1 and still writes the report.
    failed = runner.invoke(cli, ["validate", str(quantized), "--candidate", "int8", "--data", str(digits_dir),
                                 "--min-agreement", "1.01", "--latency-runs", "2", "--json"])
    assert failed.exit_code == 1, failed.output
    assert json.loads(failed.stdout)["passed"] is False and "FAILED" in (quantized / "report.md").read_text()
    corrupt = tmp_path / "broken.onnx"
    corrupt.write_bytes(b"nope")
    bad = runner.invoke(cli, ["validate", str(quantized), "--candidate", str(corrupt), "--data", str(digits_dir)])
    assert bad.exit_code == 2 and "broken.onnx" in bad.output


def test_missing_candidate(bundle_copy: Path, digits_dir: Path) -> None:
    with pytest.raises(BadInputError, match="no int8 ONNX model"):
        validate_bundle(bundle_copy, candidate="int8", data=digits_dir)


@pytest.mark.slow
def test_int8_figures_name_their_numerics(quantized: Path, digits_dir: Path) -> None:
    """A TensorRT-format INT8 graph is gated in exact numerics; both modes are reported, each named."""
    report = validate_bundle(quantized, candidate="int8", data=digits_dir, limit=20, latency_runs=2, write=False)
    numerics = report.to_dict()["numerics"]
    assert numerics["gate"] == "exact" and set(numerics["modes"]) == {"exact", "device"}
    assert report.checks == numerics["modes"]["exact"]["checks"]
    assert "int8_kernels_saturate" in numerics["machine"]
    only = validate_bundle(quantized, candidate="int8", data=digits_dir, limit=20, latency_runs=2, write=False,
                           numerics="device")
    assert only.numerics["gate"] == "device" and set(only.numerics["modes"]) == {"device"}
    fp16 = validate_bundle(quantized, candidate="fp16", data=digits_dir, limit=20, latency_runs=2, write=False)
    assert set(fp16.numerics["modes"]) == {"device"}  # a float graph computes the same either way


@pytest.mark.slow
def test_cpu_format_is_gated_on_this_machines_kernels(bundle_copy: Path, digits_dir: Path) -> None:
    quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=12, target="cpu")
    report = validate_bundle(bundle_copy, candidate="int8", data=digits_dir, limit=20, latency_runs=2, write=False)
    assert report.numerics["gate"] == "device"


def test_unknown_numerics_is_bad_usage(quantized: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", str(quantized), "--numerics", "fast"])
    assert result.exit_code == 2
    with pytest.raises(BadInputError, match="unknown numerics"):
        validate_bundle(quantized, numerics="fast")
