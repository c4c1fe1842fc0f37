"""Golden smoke test: every artifact against the FP32 outputs, with a tolerance per precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli
from edgetl.errors import BundleError
from edgetl.runtime import check


def test_check_passes_every_onnx_artifact(colour_bundle: Path) -> None:
    report = check(colour_bundle)
    assert report["passed"] is True and report["samples"] == 4
    by_prec = {r["precision"]: r for r in report["results"]}
    assert set(by_prec) == {"fp32", "int8"}
    assert by_prec["fp32"]["outputs"]["logits"]["max_abs"] <= 1e-3
    assert by_prec["int8"]["tolerance"] == {"top1_agreement": 0.75}
    assert by_prec["int8"]["outputs"]["logits"]["top1_agreement"] == 1.0


def test_check_fails_outside_tolerance_and_cli_exits_1(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["golden"]["tolerance"]["int8"] = {"max_abs": 1e-6}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = check(bundle, precision="int8")
    assert report["passed"] is False and "max |diff|" in report["results"][0]["failures"][0]
    result = CliRunner().invoke(cli, ["bundle", "check", str(bundle), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["passed"] is False


def test_check_without_golden_samples_says_how_to_fix(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("golden")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no golden samples") as err:
        check(bundle)
    assert "edgetl export" in str(err.value)
