"""The device-side verbs as users run them: predict, bench, info, bundle pack/unpack; exit codes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.bundle import open_bundle
from edgetl.cli.main import cli


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_predict_all_good_json_exit_0(runner: CliRunner, colour_bundle: Path, colour_dir: Path) -> None:
    result = runner.invoke(cli, ["predict", str(colour_bundle), str(colour_dir), "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] == 12 and doc["errors"] == 0
    assert doc["predictor"]["backend"] == "onnxruntime" and doc["predictor"]["why"]
    for entry in doc["results"]:
        assert entry["label"] == Path(entry["source"]).name.split("_")[0]
        assert len(entry["top_k"]) == 2


def test_predict_bad_inputs_get_error_entries_exit_2(runner: CliRunner, colour_bundle: Path, colour_dir: Path,
                                                     tmp_path: Path) -> None:
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    args = ["predict", str(colour_bundle), str(colour_dir / "red_0.png"), str(tmp_path / "corrupt.jpg"),
            str(tmp_path / "notes.txt"), str(tmp_path / "missing.png"), str(colour_dir / "blue_0.png"), "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert (doc["ok"], doc["errors"]) == (2, 3)
    by_name = {Path(e["source"]).name: e for e in doc["results"]}
    assert by_name["red_0.png"]["label"] == "red" and by_name["blue_0.png"]["label"] == "blue"
    assert "cannot decode" in by_name["corrupt.jpg"]["error"]
    assert "cannot decode" in by_name["notes.txt"]["error"]
    assert "not found" in by_name["missing.png"]["error"]
    human = runner.invoke(cli, args[:-1])
    assert human.exit_code == 2 and "2 predicted, 3 failed" in human.output


def test_predict_cuda_on_cpu_machine_exit_3(runner: CliRunner, colour_bundle: Path, colour_dir: Path) -> None:
    result = runner.invoke(cli, ["predict", str(colour_bundle), str(colour_dir), "--device", "cuda"])
    assert result.exit_code == 3
    assert "CUDA" in result.output and "--device cpu" in result.output


def test_predict_not_a_bundle_exit_2(runner: CliRunner, tmp_path: Path, colour_dir: Path) -> None:
    result = runner.invoke(cli, ["predict", str(tmp_path), str(colour_dir)])
    assert result.exit_code == 2 and "not a bundle" in result.output


def test_bench_json_fields(runner: CliRunner, colour_bundle: Path) -> None:
    result = runner.invoke(cli, ["bench", str(colour_bundle), "--batch", "1,4", "--iters", "5", "--warmup", "1",
                                 "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = doc["rows"]
    assert {(r["artifact"], r["batch"]) for r in rows} >= {("model.onnx", 1), ("model.onnx", 4),
                                                           ("model.int8.onnx", 1), ("model.int8.onnx", 4)}
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_ips"] > 0 and r["peak_rss_mb"] > 10
        assert "speedup_vs_torch" in r
    assert doc["settings"]["iters"] == 5
    # No checkpoint in this bundle: the PyTorch baseline is skipped with a reason, not an error.
    assert any(s["artifact"] == "torch" for s in doc["skipped"])
    table = runner.invoke(cli, ["bench", str(colour_bundle), "--precision", "int8", "--batch", "1", "--iters", "3",
                                "--no-torch"])
    assert table.exit_code == 0 and "p99 ms" in table.output and "model.int8.onnx" in table.output
    assert "model.onnx " not in table.output


def test_info_human_and_json(runner: CliRunner, colour_bundle: Path) -> None:
    result = runner.invoke(cli, ["info", str(colour_bundle), "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["task"] == "classify" and doc["labels"] == ["red", "green", "blue", "grey"]
    assert doc["precisions"] == ["fp32", "int8"] and doc["validation"]["passed"] is True
    assert doc["input"]["size"] == [32, 32] and doc["verified"] is True
    human = runner.invoke(cli, ["info", str(colour_bundle), "--no-verify"])
    assert human.exit_code == 0
    for text in ("classify", "model.int8.onnx", "validation PASSED", "NOT verified"):
        assert text in human.output


def test_bundle_pack_cli_says_what_it_left_out(runner: CliRunner, colour_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = Path(shutil.copytree(colour_bundle, tmp_path / "colours"))
    (bundle_dir / "calibration").mkdir()
    (bundle_dir / "calibration" / "stats-0.npz").write_bytes(os.urandom(2_000_000))
    bundle = open_bundle(bundle_dir)
    bundle.add_artifact("calibration/stats-0.npz", kind="calibration", precision="int8", created_by="quantize")
    bundle.save()
    lean = runner.invoke(cli, ["bundle", "pack", str(bundle_dir), "-o", str(tmp_path / "lean.tar.gz")])
    assert lean.exit_code == 0 and "left out: 1 calibration file(s), 2.0 MB" in lean.output
    doc = runner.invoke(cli, ["bundle", "pack", str(bundle_dir), "-o", str(tmp_path / "full.tar.gz"),
                              "--with-calibration", "--json"])
    assert doc.exit_code == 0 and json.loads(doc.stdout)["left_out"] == []
    assert (tmp_path / "full.tar.gz").stat().st_size > (tmp_path / "lean.tar.gz").stat().st_size


def test_bundle_pack_unpack_cli(runner: CliRunner, colour_bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "colours.tar.gz"
    assert runner.invoke(cli, ["bundle", "pack", str(colour_bundle), "-o", str(archive)]).exit_code == 0
    result = runner.invoke(cli, ["bundle", "unpack", str(archive), "-o", str(tmp_path / "dev"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["verified"] is True
    again = runner.invoke(cli, ["bundle", "unpack", str(archive), "-o", str(tmp_path / "dev")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    info = runner.invoke(cli, ["info", str(archive)])
    assert info.exit_code == 2 and "unpack it first" in info.output
