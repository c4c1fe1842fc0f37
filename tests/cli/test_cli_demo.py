"""``edgetl demo``: owns its output directory, and runs the whole pipeline end to end."""

from __future__ import annotations

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
    assert DemoConfig().resolved()["img_size"] == 128


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    validate = pytest.importorskip("edgetl.validate.api")
    if not hasattr(validate, "validate_bundle"):
        pytest.skip("edgetl.validate.validate_bundle is not available in this build")
    from edgetl.bundle import open_bundle
    from edgetl.demo import format_summary, run_demo

    lines: list[str] = []
    result = run_demo(DemoConfig(out=tmp_path / "demo", quick=True, train_per_class=10, val_per_class=5,
                                 calib_size=16, bench_iters=2), say=lines.append)
    assert [line[:5] for line in lines if line.startswith("[")] == [f"[{i}/7]" for i in range(1, 8)]
    bundle = open_bundle(result.bundle_dir)
    assert {a.precision for a in bundle.find(kind="onnx")} >= {"fp32"}
    assert bundle.find(kind="onnx", precision="int8") or bundle.find(kind="onnx", precision="mixed")
    assert result.archive.is_file()
    s = result.summary
    assert s["top1"]["fp32"] > 0.3  # 10 classes: chance is 0.1
    assert 0.0 <= s["agreement_fp32_int8"] <= 1.0
    assert s["size_bytes"]["int8"] < s["size_bytes"]["fp32"]
    text = format_summary(result)
    assert "top-1 accuracy" in text and str(result.bundle_dir) in text
