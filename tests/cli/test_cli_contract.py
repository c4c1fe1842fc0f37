"""The CLI's contract with scripts and people, verb by verb.

- ``--json``: stdout holds exactly one JSON document, on success and on failure (then an error document
  with the exit code), whatever the libraries underneath print.
- Results (predict, info, evaluate, bench tables) go to stdout; progress and notes to stderr.
- Exit codes: 1 only for a failed gate; an unexpected exception is 4, with its traceback on stderr.
- Relative paths work like absolute ones.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgetl.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _document(result: Result) -> dict:
    """The one JSON document on stdout (json.loads refuses anything before or after it)."""
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{result.stdout[:2000]}") from exc


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.data.shapes import write_shapes

    out = tmp_path_factory.mktemp("shapes") / "shapes"
    write_shapes(out, n_train=2, n_val=2, size=64, seed=0)
    return out / "data.yaml"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, colour_bundle: Path) -> Path:
    from edgetl.bundle.pack import pack

    return pack(colour_bundle, tmp_path_factory.mktemp("archive") / "colours.tar.gz")


# verb -> (arguments after the verb, exit codes a success may have); "{name}" is a fixture or a scratch path.
SUCCESS = {
    "models": (["models"], {0}),
    "data sample digits": (["data", "sample", "digits", "{tmp}/d", "--per-class", "2", "--val-per-class", "1",
                            "--size", "16"], {0}),
    "data sample shapes": (["data", "sample", "shapes", "{tmp}/s", "--train", "1", "--val", "1", "--size", "64"],
                           {0}),
    "data check": (["data", "check", "{shapes}"], {0}),
    "data convert": (["data", "convert", "{shapes}", "--to", "coco", "-o", "{tmp}/coco"], {0}),
    "train classify": (["train", "classify", "--data", "{digits_dir}", "--strategy", "linear-probe", "--epochs", "1",
                        "--img-size", "32", "--out", "{tmp}/run", "--quiet"], {0}),
    "train detect": (["train", "detect", "--data", "{shapes}", "--epochs", "1", "--img-size", "64", "--max-steps",
                      "1", "--batch-size", "2", "--out", "{tmp}/det", "--quiet"], {0}),
    "evaluate": (["evaluate", "{tiny_checkpoint}", "--data", "{digits_dir}"], {0}),
    "export": (["export", "{tiny_checkpoint}", "{tmp}/bundle", "--golden", "2", "--parity-data", "{digits_dir}"],
               {0}),
    "quantize int8": (["quantize", "{bundle_copy}", "--precision", "int8", "--method", "entropy", "--calib-size",
                       "8", "--calib-data", "{digits_dir}"], {0}),
    "quantize fp16": (["quantize", "{bundle_copy}", "--precision", "fp16"], {0}),
    "validate": (["validate", "{int8_copy}", "--data", "{digits_dir}", "--limit", "10", "--latency-runs", "1"],
                 {0, 1}),
    "info": (["info", "{colour_bundle}"], {0}),
    "predict": (["predict", "{colour_bundle}", "{colour_dir}"], {0}),
    "bench": (["bench", "{colour_bundle}", "--batch", "1", "--iters", "2", "--warmup", "0", "--no-torch"], {0}),
    "bundle pack": (["bundle", "pack", "{colour_bundle}", "-o", "{tmp}/c.tar.gz"], {0}),
    "bundle unpack": (["bundle", "unpack", "{archive}", "-o", "{tmp}/unpacked"], {0}),
    "bundle check": (["bundle", "check", "{colour_bundle}"], {0}),
}

# verb -> (arguments that fail cheaply, the exit code)
FAILURE = {
    "models": (["models", "--no-such-flag"], 2),
    "data sample digits": (["data", "sample", "digits", "{digits_dir}"], 2),  # exists, no --overwrite
    "data sample shapes": (["data", "sample", "shapes", "{digits_dir}"], 2),
    "data check": (["data", "check", "{tmp}/missing.yaml"], 2),
    "data convert": (["data", "convert", "{tmp}/missing.yaml", "--to", "coco", "-o", "{tmp}/c"], 2),
    "train classify": (["train", "classify", "--data", "{tmp}/missing", "--out", "{tmp}/r"], 2),
    "train detect": (["train", "detect", "--data", "{tmp}/missing.yaml", "--out", "{tmp}/r"], 2),
    "evaluate": (["evaluate", "{tmp}/missing.pt", "--data", "{digits_dir}"], 2),
    "export": (["export", "{tmp}/missing.pt", "{tmp}/b"], 2),
    "quantize": (["quantize", "{tmp}/missing", "--precision", "fp16"], 2),
    "validate": (["validate", "{tmp}/missing"], 2),
    "compile": (["compile", "{colour_bundle}"], 3),  # without TensorRT (skipped where it is installed)
    "info": (["info", "{tmp}/missing"], 2),
    "predict": (["predict", "{tmp}/missing", "{colour_dir}"], 2),
    "bench": (["bench", "{tmp}/missing"], 2),
    "bundle pack": (["bundle", "pack", "{tmp}/missing"], 2),
    "bundle unpack": (["bundle", "unpack", "{tmp}/missing.tar.gz", "-o", "{tmp}/u"], 2),
    "bundle check": (["bundle", "check", "{tmp}/missing"], 2),
    "serve": (["serve", "{tmp}/missing", "--port", "0"], 2),
    "demo": (["demo", "--epochs", "0"], 2),  # a usage error found while parsing the flags
}


def _args(template: list[str], request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    values: dict[str, str] = {"tmp": str(tmp_path)}
    for item in template:
        for name in ("digits_dir", "tiny_checkpoint", "colour_bundle", "colour_dir", "shapes", "archive",
                     "bundle_copy"):
            if "{" + name + "}" in item:
                values[name] = str(request.getfixturevalue(name))
        if "{int8_copy}" in item:
            values["int8_copy"] = shutil.copytree(request.getfixturevalue("int8_bundle"), tmp_path / "int8")
    return [item.format(**values) for item in template]


@pytest.mark.slow
@pytest.mark.parametrize("verb", sorted(SUCCESS))
def test_json_success_is_one_document(verb: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    template, codes = SUCCESS[verb]
    result = _invoke([*_args(template, request, tmp_path), "--json"])
    assert result.exit_code in codes, result.output
    doc = _document(result)
    assert isinstance(doc, dict) and "error" not in doc, doc
    if verb == "quantize int8":  # ONNX Runtime's calibration prints; none of it may reach stdout
        assert "Collecting tensor data" not in result.stdout


@pytest.mark.parametrize("verb", sorted(FAILURE))
def test_json_failure_is_one_error_document(verb: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    template, code = FAILURE[verb]
    if verb == "compile" and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: compile does not fail here")
    result = _invoke([*_args(template, request, tmp_path), "--json"])
    assert result.exit_code == code, result.output
    error = _document(result)["error"]
    assert error["exit_code"] == code and error["message"], error
    assert error["message"].splitlines()[0] in result.stderr or error["message"] in result.output


def test_serve_json_prints_one_line_when_listening(colour_bundle: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "edgetl.cli.main", "serve", str(colour_bundle), "--port", "0",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        doc = json.loads(line)
        assert doc["event"] == "listening" and doc["port"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_unexpected_exception_exits_4_with_traceback_never_1(colour_bundle: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import edgetl.runtime.info

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("something edgetl did not plan for")

    monkeypatch.setattr(edgetl.runtime.info, "bundle_info", broken)
    human = _invoke(["info", colour_bundle])
    assert human.exit_code == 4
    assert "Traceback" in human.stderr and "RuntimeError: something edgetl did not plan for" in human.stderr
    assert "bug in edgetl" in human.stderr and human.stdout == ""
    machine = _invoke(["info", colour_bundle, "--json"])
    assert machine.exit_code == 4
    assert _document(machine)["error"] == {"exit_code": 4, "type": "RuntimeError", "hint": None,
                                           "message": "unexpected RuntimeError: something edgetl did not plan for"}


def test_an_unusable_output_path_is_bad_input_not_a_bug(tiny_checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    human = _invoke(["export", tiny_checkpoint, blocker / "bundle"])
    assert human.exit_code == 2, human.output
    assert "Traceback" not in human.stderr and "bug in edgetl" not in human.stderr
    assert f"{blocker / 'bundle'}: Not a directory" in human.stderr and "hint: check the path" in human.stderr
    machine = _invoke(["export", tiny_checkpoint, blocker / "bundle", "--json"])
    assert machine.exit_code == 2
    assert _document(machine)["error"]["type"] == "NotADirectoryError"


def test_a_full_disk_is_the_environment_exit_3(colour_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import edgetl.runtime.info

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(colour_bundle / "report.json"))

    monkeypatch.setattr(edgetl.runtime.info, "bundle_info", full)
    result = _invoke(["info", colour_bundle, "--json"])
    assert result.exit_code == 3 and "Traceback" not in result.stderr
    error = _document(result)["error"]
    assert error["message"].endswith("report.json: No space left on device") and "free space" in error["hint"]


def test_export_and_quantize_take_relative_bundle_paths(tiny_checkpoint: Path, digits_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_checkpoint, "best.pt")
    exported = _invoke(["export", "best.pt", "bundles/digits", "--parity-data", digits_dir, "--golden", "2"])
    assert exported.exit_code == 0, exported.output
    quantized = _invoke(["quantize", "bundles/digits", "--precision", "fp16"])
    assert quantized.exit_code == 0, quantized.output
    info = _invoke(["info", "bundles/digits", "--json"])
    assert {a["path"] for a in _document(info)["artifacts"]} >= {"model.onnx", "model.fp16.onnx"}
    checked = _invoke(["bundle", "check", "./bundles/../bundles/digits", "--precision", "fp32"])
    assert checked.exit_code == 0, checked.output


def test_results_go_to_stdout_and_progress_to_stderr(colour_bundle: Path, colour_dir: Path, tiny_checkpoint: Path,
                                                     digits_dir: Path) -> None:
    predicted = _invoke(["predict", colour_bundle, colour_dir, "--top-k", "2"])
    assert predicted.exit_code == 0
    assert "red_0.png" in predicted.stdout and "prediction" in predicted.stdout
    assert "onnxruntime" in predicted.stderr and "red_0.png" not in predicted.stderr
    info = _invoke(["info", colour_bundle])
    assert "model.int8.onnx" in info.stdout and info.stderr == ""
    bench = _invoke(["bench", colour_bundle, "--batch", "1", "--iters", "2", "--warmup", "0", "--no-torch"])
    assert "p50 ms" in bench.stdout and "p50 ms" not in bench.stderr
    evaluated = _invoke(["evaluate", tiny_checkpoint, "--data", digits_dir])
    assert evaluated.exit_code == 0
    assert "top-1" in evaluated.stdout and "seven" in evaluated.stdout
    # what is about to run, before it runs: how many images
    assert "evaluating efficientnet_lite0" in evaluated.stderr and "on 60 val image(s)" in evaluated.stderr


@pytest.mark.parametrize("verb", ["demo", "quantize", "validate", "train", "data", "bundle"])
def test_every_verbs_help_exits_0(verb: str) -> None:
    """click ends --help with its own Exit: that is success, not an unexpected error (exit 4)."""
    result = CliRunner().invoke(cli, [verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output
