"""Messages a new user meets: what a file is, which image failed, whether a gate means anything, what
a long step is about to do. Each says what, where and what to do next.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgetl.cli.main import cli


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _document(result: Result) -> dict:
    return json.loads(result.stdout)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_file_that_is_not_a_checkpoint_says_so_and_never_advises_unsafe_loading(tmp_path: Path,
                                                                                   digits_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled object: weights_only refuses it
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with (tmp_path / "pickle.pt").open("wb") as fh:
        pickle.dump({"a": 1}, fh, protocol=4)
    for name, what in [("text.pt", "not a PyTorch file"), ("module.pt", "torch.nn.modules.linear.Linear"),
                       ("state_dict.pt", "no edgetl labels"), ("pickle.pt", "a plain Python pickle")]:
        for args in (["evaluate", tmp_path / name, "--data", digits_dir], ["export", tmp_path / name, tmp_path / "b"]):
            result = _invoke(args)
            assert result.exit_code == 2, (name, result.output)
            assert f"{tmp_path / name} is not an edgetl checkpoint" in result.stderr, result.stderr
            assert what in result.stderr and "runs/<name>/best.pt" in result.stderr
            assert "weights_only" not in result.output and "trust" not in result.output


def test_undecodable_images_are_named_by_their_path(colour_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = _invoke(["predict", colour_bundle, tmp_path / "notes.txt", tmp_path / "corrupt.png", "--json"])
    assert result.exit_code == 2
    errors = {Path(e["source"]).name: e["error"] for e in _document(result)["results"]}
    assert errors["notes.txt"].startswith(f"{tmp_path / 'notes.txt'}: cannot decode image")
    assert errors["corrupt.png"].startswith(f"{tmp_path / 'corrupt.png'}: cannot decode image")
    assert "BytesIO" not in result.output


def test_validate_warns_when_the_gate_is_coarser_than_its_limits(int8_bundle: Path, digits_dir: Path,
                                                                 tmp_path: Path) -> None:
    bundle = shutil.copytree(int8_bundle, tmp_path / "b")
    result = _invoke(["validate", bundle, "--data", digits_dir, "--limit", "12", "--max-top1-drop", "0.5",
                      "--min-agreement", "0.99", "--latency-runs", "1", "--json"])
    assert result.exit_code in (0, 1), result.output
    assert "--max-top1-drop 0.5 points cannot be resolved on 12 images" in result.stderr
    assert "needs at least 200 images" in result.stderr and "needs at least 100 images" in result.stderr
    limits = {g["option"]: g for g in _document(result)["gate_resolution"]}
    assert limits["--max-top1-drop"]["needed"] == 200 and limits["--min-agreement"]["needed"] == 100
    fine = _invoke(["validate", bundle, "--data", digits_dir, "--limit", "12", "--max-top1-drop", "10",
                    "--min-agreement", "0.9", "--latency-runs", "1"])
    assert "cannot be resolved" not in fine.stderr


@pytest.mark.slow
def test_budget_mode_announces_the_sensitivity_run(bundle_copy: Path, digits_dir: Path) -> None:
    # An unreachable budget (no drop, full agreement, one point in float at most): the search must run.
    result = _invoke(["quantize", bundle_copy, "--precision", "int8", "--method", "minmax", "--calib-size", "8",
                      "--per-tensor", "--calib-data", digits_dir, "--max-drop", "0", "--min-agreement", "1.0",
                      "--val-size", "12", "--max-kept", "1", "--no-qat"])
    assert result.exit_code in (0, 1), result.output
    assert re.search(r"budget mode: measuring the sensitivity of \d+ quantization points \(\d+ runs on 12 images",
                     result.stderr), result.stderr
    assert re.search(r"budget mode: about \d+ (s|min) for the sensitivity", result.stderr), result.stderr
    # announced before the work it announces
    assert result.stderr.index("budget mode: measuring") < result.stderr.index("1 unit(s) in float")
