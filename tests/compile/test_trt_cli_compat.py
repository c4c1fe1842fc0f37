"""The missing-TensorRT CLI path, compatibility-key matching, and batch splitting (no fakes needed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from edgetl.errors import BadInputError
from edgetl.runtime.backends.tensorrt import TENSORRT_MISSING, Chunk, plan_chunks
from edgetl.runtime.compat import DeviceInfo, check_compat, compat_key, engine_relpath

ORIN = DeviceInfo("Orin", "8.7", integrated=True)
PROFILE = {"input": "input", "min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_compile_without_tensorrt_exits_3_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli.main", "compile", str(tmp_path), "--precision", "int8"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert TENSORRT_MISSING == "TensorRT not found: install edgetl[tensorrt] or use JetPack's python3-libnvinfer"
    assert TENSORRT_MISSING in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_compile_bad_batch_is_usage_error(tmp_path):
    from click.testing import CliRunner

    from edgetl.cli.main import cli

    result = CliRunner().invoke(cli, ["compile", str(tmp_path), "--batch", "8,1,4"])
    assert result.exit_code == 2
    assert "min <= opt <= max" in result.output


def test_compat_exact_match():
    key = compat_key(ORIN, "10.3.0.30", "fp16", PROFILE)
    assert engine_relpath(key) == "engines/sm87-trt10.3.0-fp16.engine"
    check = check_compat(key, ORIN, "10.3.0.26")  # the build number does not matter
    assert check.ok and check.exact


@pytest.mark.parametrize(
    ("device", "version", "message"),
    [
        (DeviceInfo("NVIDIA GeForce RTX 4090", "8.9"), "10.3.0",
         "built for compute capability 8.7 (Orin); this GPU is NVIDIA GeForce RTX 4090 (8.9)"),
        (ORIN, "10.7.0", "built with TensorRT 10.3.0; this machine has TensorRT 10.7.0"),
        (None, "10.3.0", "no CUDA GPU"),
        (ORIN, None, "TensorRT is not installed"),
    ],
)
def test_compat_mismatch_messages(device, version, message):
    check = check_compat(compat_key(ORIN, "10.3.0", "fp16", PROFILE), device, version)
    assert not check.ok
    assert message in check.reason
    if device is not None and version is not None:
        assert "rebuild it here with `edgetl compile`" in check.reason


def test_same_cc_other_gpu_model_runs_with_note():
    check = check_compat(compat_key(ORIN, "10.3.0", "fp16", PROFILE), DeviceInfo("Orin (nvgpu)", "8.7", True), "10.3.0")
    assert check.ok and not check.exact
    assert "built on Orin" in check.reason


def test_version_compatible_rules():
    key = compat_key(ORIN, "10.3.0", "fp16", PROFILE, version_compat=True)
    assert engine_relpath(key) == "engines/sm87-trt10.3.0-fp16-vc.engine"
    assert check_compat(key, ORIN, "10.7.0").ok
    assert check_compat(key, ORIN, "11.1.0").ok  # TensorRT 10 VC engines run on 11
    assert not check_compat(key, ORIN, "10.0.1").ok  # never on an older runtime
    old = compat_key(ORIN, "8.6.2", "fp16", PROFILE, version_compat=True)
    assert check_compat(old, ORIN, "10.3.0").ok
    assert "cannot run version-compatible engines from TensorRT 8" in check_compat(old, ORIN, "11.0.0").reason


def test_hardware_compatible_and_dla_rules():
    a10 = DeviceInfo("NVIDIA A10", "8.6")
    hw = compat_key(a10, "10.3.0", "fp16", PROFILE, hardware_compat=True)
    assert engine_relpath(hw) == "engines/ampere+-trt10.3.0-fp16.engine"
    assert check_compat(hw, DeviceInfo("NVIDIA H100", "9.0"), "10.3.0").ok
    assert "needs an Ampere or newer GPU" in check_compat(hw, DeviceInfo("Tesla T4", "7.5"), "10.3.0").reason
    dla = compat_key(ORIN, "10.3.0", "int8", PROFILE, dla_core=0)
    assert engine_relpath(dla) == "engines/sm87-trt10.3.0-int8-dla0.engine"
    assert check_compat(dla, ORIN, "10.3.0").ok
    assert "has no DLA" in check_compat(dla, DeviceInfo("dGPU", "8.7", False), "10.3.0").reason


@pytest.mark.parametrize(
    ("n", "lo", "hi", "expected"),
    [
        (1, 1, 32, [Chunk(0, 1, 1)]),
        (32, 1, 32, [Chunk(0, 32, 32)]),
        (70, 1, 32, [Chunk(0, 32, 32), Chunk(32, 64, 32), Chunk(64, 70, 6)]),
        (3, 4, 8, [Chunk(0, 3, 4)]),  # padded up to the profile minimum
        (9, 4, 8, [Chunk(0, 8, 8), Chunk(8, 9, 4)]),
        (5, 2, 2, [Chunk(0, 2, 2), Chunk(2, 4, 2), Chunk(4, 5, 2)]),  # static batch 2
    ],
)
def test_plan_chunks(n, lo, hi, expected):
    chunks = plan_chunks(n, lo, hi)
    assert chunks == expected
    assert sum(c.rows for c in chunks) == n
    assert all(lo <= c.size <= hi for c in chunks)


def test_plan_chunks_rejects_empty():
    with pytest.raises(BadInputError):
        plan_chunks(0, 1, 8)


def test_runtime_import_stays_light():
    """Importing the TensorRT backend and the compat module pulls in neither tensorrt nor torch."""
    code = ("import sys, edgetl.runtime.backends.tensorrt, edgetl.runtime.compat, edgetl.compile;"
            "import json; print(json.dumps(sorted(m for m in ('torch', 'tensorrt', 'onnx') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
