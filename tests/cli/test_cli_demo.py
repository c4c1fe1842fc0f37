"""``edgetl demo``: owns its output directory, and runs the whole pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli
from edgetl.demo import MARKER, DemoConfig, _prepare


def test_demo_refuses_a_directory_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--quick"])
    assert result.exit_code == 2 and "not created by `edgetl demo`" in result.output
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_rerun_replaces_the_demo_directory_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    _prepare(out)
    (out / "bundle").mkdir()
    (out / "bundle" / "stale.onnx").write_bytes(b"old")
    _prepare(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_quick_settings_and_overrides() -> None:
    quick = DemoConfig(quick=True).resolved()
    assert quick["img_size"] == 64 and quick["strategy"] == "linear-probe"
    assert DemoConfig(epochs=2).resolved()["epochs"] == 2
    assert DemoConfig(strategy="partial").resolved()["strategy"] == "partial"
    full = DemoConfig().resolved()
    assert full["img_size"] == 128 and full["train_per_class"] == 100 and full["val_per_class"] == 30


@pytest.mark.slow
def test_quick_demo_end_to_end_through_the_cli(tmp_path: Path) -> None:
    validate = pytest.importorskip("edgetl.validate.api")
    if not hasattr(validate, "validate_bundle"):
        pytest.skip("edgetl.validate.validate_bundle is not available in this build")
    from edgetl.bundle import open_bundle
    from edgetl.demo import DemoResult, format_summary

    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--quick", "--json"])
    document = json.loads(result.stdout)  # exactly one JSON document on stdout, nothing else
    # exit 0 when the INT8 model passes the gate, 1 only when it fails it
    assert result.exit_code == (0 if document["validation_passed"] else 1), result.stderr
    steps = [line[:5] for line in result.stderr.splitlines() if line.startswith("[")]
    assert steps == [f"[{i}/7]" for i in range(1, 8)]
    assert list(document["steps_s"]) == ["data", "train", "export", "quantize", "validate", "predict", "bench"]
    for name, seconds in document["steps_s"].items():
        assert f"      {name}: {seconds:.1f} s" in result.stderr
    # training announced its dataset and plan before it started
    assert "10 classes, 200 training and 100 validation images" in result.stderr
    assert "plan: linear-probe" in result.stderr and "estimated time about" in result.stderr
    bundle = open_bundle(document["bundle"])
    assert {a.precision for a in bundle.find(kind="onnx")} >= {"fp32"}
    assert bundle.find(kind="onnx", precision="int8") or bundle.find(kind="onnx", precision="mixed")
    assert Path(document["archive"]).is_file()
    s = document["summary"]
    assert s["val_images"] == 100 and s["top1"]["fp32"] > 0.5  # 10 classes: chance is 0.1
    assert 0.0 <= s["agreement_fp32_int8"] <= 1.0
    assert s["size_bytes"]["int8"] < s["size_bytes"]["fp32"]
    # The archive ships the models and golden samples, not the calibration statistics kept in the bundle.
    assert s["size_bytes"]["archive"] == Path(document["archive"]).stat().st_size
    assert s["size_bytes"]["archive"] < s["size_bytes"]["fp32"] + s["size_bytes"]["int8"] + (2 << 20)
    assert bundle.find(kind="calibration")
    assert s["latency_ms_b1"]["fp32"] and s["latency_ms_b1"]["int8"]
    assert not any(r["backend"] == "torch" or r["batch"] != 1 for r in s["bench"]["rows"])
    text = format_summary(DemoResult(out, Path(document["bundle"]), Path(document["archive"]), s,
                                     document["steps_s"], document["validation_passed"]))
    assert "top-1 accuracy" in text and "Fashion-MNIST" in text and document["bundle"] in text
