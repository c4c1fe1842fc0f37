"""Backend and precision selection: what `auto` picks on a CPU-only machine, and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import edgetl.runtime
from edgetl.errors import BadInputError, BundleError, EnvironmentMissingError


def test_auto_on_cpu_skips_a_validated_tensorrt_format_int8_and_says_why(colour_bundle: Path) -> None:
    """The TensorRT format (symmetric activations) runs slower than FP32 in ONNX Runtime on a CPU."""
    with edgetl.runtime.load(colour_bundle) as p:
        d = p.describe()
    assert (d["backend"], d["precision"]) == ("onnxruntime", "fp32")
    assert "TensorRT format" in d["why"] and "--target cpu" in d["why"]


def test_auto_picks_a_validated_cpu_format_int8_and_says_why(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["path"] == "model.int8.onnx":  # as `edgetl quantize --target cpu` records it
            art.setdefault("info", {})["activation_type"] = "uint8"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with edgetl.runtime.load(bundle) as p:
        d = p.describe()
    assert (d["backend"], d["precision"], d["artifact"]) == ("onnxruntime", "int8", "model.int8.onnx")
    assert d["providers"] == ["CPUExecutionProvider"]
    assert "CPU" in d["why"] and "passed validation" in d["why"]
    assert "TensorRT" in d["why"]  # says why no engine was used


def test_unvalidated_int8_is_not_best(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["validation"]["results"]["model.int8.onnx"]["passed"] = False
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with edgetl.runtime.load(bundle) as p:
        d = p.describe()
    assert d["precision"] == "fp32" and "not passed" in d["why"]
    with edgetl.runtime.load(bundle, precision="int8") as p:  # explicit request still honoured
        assert p.describe()["precision"] == "int8"


def test_explicit_precision_and_missing_precision(colour_bundle: Path) -> None:
    with edgetl.runtime.load(colour_bundle, precision="fp32") as p:
        assert p.describe()["artifact"] == "model.onnx"
    with pytest.raises(BundleError, match="no fp16 ONNX model") as err:
        edgetl.runtime.load(colour_bundle, precision="fp16")
    assert err.value.exit_code == 2 and "edgetl quantize" in str(err.value)


@pytest.mark.parametrize("kwargs", [{"device": "cuda"}, {"backend": "tensorrt"}])
def test_gpu_requests_on_cpu_machine_exit_3(colour_bundle: Path, kwargs: dict) -> None:
    with pytest.raises(EnvironmentMissingError) as err:
        edgetl.runtime.load(colour_bundle, **kwargs)
    assert err.value.exit_code == 3
    assert "cuda" in str(err.value).lower() or "tensorrt" in str(err.value).lower()


def test_unknown_options_and_torch_without_checkpoint(colour_bundle: Path) -> None:
    with pytest.raises(BadInputError, match="unknown backend"):
        edgetl.runtime.load(colour_bundle, backend="openvino")
    with pytest.raises(BadInputError, match="unknown precision"):
        edgetl.runtime.load(colour_bundle, precision="int4")
    pytest.importorskip("torch")
    with pytest.raises(BundleError, match="no PyTorch checkpoint"):
        edgetl.runtime.load(colour_bundle, backend="torch")
