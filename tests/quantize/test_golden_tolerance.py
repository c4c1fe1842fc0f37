"""One tolerance table: quantize's golden check judges a new artifact as `bundle check`, the daemon and
compile will, warns loudly when it fails, and exits 1 with --strict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.bundle import open_bundle
from edgetl.bundle.check import TOLERANCES, compare_outputs, tolerance_for
from edgetl.cli.main import cli
from edgetl.errors import GateFailedError
from edgetl.quantize import quantize_bundle
from edgetl.runtime.golden import check


def test_one_table_recorded_at_export_and_read_everywhere(bundle_copy: Path) -> None:
    bundle = open_bundle(bundle_copy)
    assert bundle.manifest["golden"]["tolerance"] == TOLERANCES
    assert tolerance_for(bundle, "mixed") == TOLERANCES["int8"]


def test_fp16_tolerance_is_relative_to_the_outputs_scale() -> None:
    """FP16 rounds relative to the value: 0.1 on logits of magnitude 10 is FP16's precision, not a fault."""
    ref = {"logits": np.array([[10.0, -8.0, 3.0]], dtype=np.float32)}
    near = {"logits": ref["logits"] + np.float32(0.1)}
    assert compare_outputs(near, ref, TOLERANCES["fp16"])["passed"]
    assert not compare_outputs({"logits": ref["logits"] * 1.1}, ref, TOLERANCES["fp16"])["passed"]


def test_fresh_fp16_passes_quantize_and_bundle_check_alike(bundle_copy: Path) -> None:
    result = quantize_bundle(bundle_copy, "fp16")
    assert result.info["golden_check"]["passed"]
    report = check(bundle_copy, backend="onnxruntime", precision="fp16")
    assert report["passed"], report


def _impossible_int8_tolerance(bundle_dir: Path) -> None:
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["golden"]["tolerance"]["int8"] = {"top1_agreement": 1.01}
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.slow
def test_a_written_artifact_that_fails_its_golden_check_warns_and_strict_exits_1(bundle_copy: Path,
                                                                                  digits_dir: Path) -> None:
    _impossible_int8_tolerance(bundle_copy)
    result = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=12)
    assert result.warnings[0].startswith("GOLDEN CHECK FAILED") and not result.info["golden_check"]["passed"]
    with pytest.raises(GateFailedError, match="GOLDEN CHECK FAILED"):
        quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=12, strict=True)
    assert (bundle_copy / "model.int8.onnx").is_file()  # the work is kept, the exit code tells
    cli_result = CliRunner().invoke(cli, ["quantize", str(bundle_copy), "--calib-data", str(digits_dir),
                                          "--calib-size", "12", "--strict"])
    assert cli_result.exit_code == 1


def test_top1_agreement_gates_classifier_outputs_only() -> None:
    """A detector's per-anchor class scores are mostly background ties: their arg-max says nothing."""
    rng = np.random.default_rng(0)
    ref = {"scores": rng.uniform(0, 0.01, (2, 50, 3)).astype(np.float32)}
    noisy = {"scores": ref["scores"] + rng.uniform(0, 0.01, (2, 50, 3)).astype(np.float32)}
    assert not compare_outputs(noisy, ref, TOLERANCES["int8"])["passed"]
    assert compare_outputs(noisy, ref, TOLERANCES["int8"], classify=False)["passed"]
