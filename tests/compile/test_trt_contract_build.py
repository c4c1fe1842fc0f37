"""Contract tests of our TensorRT *build* calls against the recording fake in ``fakegpu.py``.

They check the order and arguments of the calls edgetl makes (network flags, parser error handling,
profiles, precision flags, calibrator protocol, DLA, portability flags, timing cache) and what lands
in the bundle. They are not proof that TensorRT works: see test_trt_real.py for that.
"""

from __future__ import annotations

import json

import fakegpu
import numpy as np
import pytest

from edgetl.bundle.manifest import open_bundle
from edgetl.compile import compile_bundle
from edgetl.errors import BadInputError, EnvironmentMissingError

pytestmark = pytest.mark.contract


def test_fp16_build_records_engine_compat_and_golden(fake_gpu, tiny_bundle):
    """Contract: dynamic batch gets one profile per context, FP16 flag, workspace; engine + key in the manifest."""
    result = compile_bundle(tiny_bundle, "fp16", batch=(1, 4, 8), contexts=2, workspace_mb=256)
    blob = fake_gpu.builds[-1]
    assert blob["flags"] == ["FP16"]
    assert len(blob["profiles"]) == 2
    assert blob["profiles"][0]["input"] == [[1, 3, 16, 16], [4, 3, 16, 16], [8, 3, 16, 16]]
    assert result.engine == tiny_bundle / "engines" / "sm87-trt10.3.0-fp16.engine"

    bundle = open_bundle(tiny_bundle)  # hashes verify
    (engine,) = bundle.find(kind="engine")
    assert engine.compat == {
        "compute_capability": "8.7", "device_name": "Orin", "tensorrt_version": "10.3.0", "precision": "fp16",
        "profile": {"input": "input", "min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16],
                    "count": 2},
        "dla_core": None, "hardware_compat": False, "version_compat": False, "host_code": False,
    }
    golden = engine.info["golden"]
    assert golden["passed"] is True and golden["samples"] == 8
    assert golden["outputs"]["logits"]["max_abs"] < 5e-2
    assert engine.info["timing_cache"] == "engines/timing/sm87-trt10.3.0.cache"
    assert (tiny_bundle / engine.info["timing_cache"]).is_file()
    # The workspace reached the builder in bytes.
    assert "create_network" in fake_gpu.calls
    assert fake_gpu.calls.index("parse_from_file") < fake_gpu.calls.index("build_serialized_network")


def test_timing_cache_is_reused_on_rebuild(fake_gpu, tiny_bundle):
    """Contract: a second build loads the timing cache the first one wrote (and replaces the same engine entry)."""
    compile_bundle(tiny_bundle, "fp32")
    cache = tiny_bundle / "engines/timing/sm87-trt10.3.0.cache"
    first = cache.read_bytes()
    compile_bundle(tiny_bundle, "fp32")
    assert cache.read_bytes() != first  # the fake serialises "how many bytes it was given"
    assert len(open_bundle(tiny_bundle).find(kind="engine")) == 1


def test_static_batch_needs_no_profile(fake_gpu, static_bundle):
    """Contract: a fixed-batch graph gets no optimisation profile; the key records the fixed shape."""
    result = compile_bundle(static_bundle, "fp32", batch=(1, 8, 32))
    assert fake_gpu.builds[-1]["profiles"] == [{"input": [[2, 3, 16, 16]] * 3}]
    assert result.artifact.compat["profile"]["max"] == [2, 3, 16, 16]
    assert result.golden["passed"] is True


def test_int8_uses_qdq_graph_without_calibrator(fake_gpu, qdq_bundle):
    """Contract: with a QDQ graph, INT8 is explicit quantization: parse model.int8.onnx, INT8 flag, no calibrator."""
    result = compile_bundle(qdq_bundle, "int8")
    assert result.artifact.info["source"] == "model.int8.onnx"
    assert fake_gpu.builds[-1]["onnx"].endswith("model.int8.onnx")
    assert fake_gpu.builds[-1]["flags"] == ["INT8"]
    assert result.artifact.precision == "int8"
    assert result.golden["outputs"]["logits"]["top1_agreement"] >= 0.85


def test_best_enables_int8_and_fp16_on_qdq(fake_gpu, qdq_bundle):
    result = compile_bundle(qdq_bundle, "best")
    assert fake_gpu.builds[-1]["flags"] == ["FP16", "INT8"]
    assert result.engine.name == "sm87-trt10.3.0-best.engine"


def test_int8_without_qdq_calibrates_and_caches(fake_gpu, tiny_bundle, calib_images):
    """Contract: implicit INT8 attaches an entropy calibrator, a fixed calibration profile, writes the cache."""
    result = compile_bundle(tiny_bundle, "int8", calib_data=calib_images, batch=(1, 4, 8))
    cache = tiny_bundle / "calibration/tensorrt-entropy-int8.cache"
    assert cache.read_bytes() == b"FAKE-CALIB batches=2"  # 20 images, batch 8, partial batch dropped
    assert result.artifact.info["calibration"]["images"] == 20
    # A rebuild reads the cache: no images needed any more.
    compile_bundle(tiny_bundle, "int8", batch=(1, 4, 8))
    assert cache.read_bytes() == b"FAKE-CALIB batches=2"
    # Calibration device/host buffers and stream were released.
    assert not any(s.pending for s in fake_gpu.streams.values())


def test_int8_without_qdq_or_images_is_a_clear_error(fake_gpu, tiny_bundle):
    with pytest.raises(BadInputError, match="INT8 calibration needs at least 8 images"):
        compile_bundle(tiny_bundle, "int8")


def test_best_without_qdq_or_images_falls_back_to_fp16(fake_gpu, tiny_bundle):
    result = compile_bundle(tiny_bundle, "best")
    assert fake_gpu.builds[-1]["flags"] == ["FP16"]
    assert result.artifact.precision == "fp16"
    assert any("builds FP16" in n for n in result.notes)


def test_parser_errors_name_each_node(monkeypatch, tiny_bundle):
    """Contract: a parse failure reads parser.num_errors/get_error(i) and reports node index, name, operator."""
    gpu = fakegpu.FakeGpu(unsupported_ops=("GlobalAveragePool", "Gemm"))
    fakegpu.install(monkeypatch, gpu)
    with pytest.raises(BadInputError) as err:
        compile_bundle(tiny_bundle, "fp16")
    text = str(err.value)
    assert "2 error(s)" in text
    assert "node 2 'pool0' (GlobalAveragePool): UNSUPPORTED_NODE: no importer for GlobalAveragePool" in text
    assert "node 4 'fc0' (Gemm)" in text
    assert gpu.violations == []


def test_dla_build_sets_device_core_and_gpu_fallback(monkeypatch, tiny_bundle):
    gpu = fakegpu.FakeGpu(dla_cores=2)
    fakegpu.install(monkeypatch, gpu)
    with pytest.raises(BadInputError, match="DLA engines need a fixed batch"):
        compile_bundle(tiny_bundle, "fp16", dla_core=1, batch=(1, 8, 32))
    result = compile_bundle(tiny_bundle, "fp16", dla_core=1, batch=(1, 1, 1), contexts=1)
    assert "GPU_FALLBACK" in gpu.builds[-1]["flags"]
    assert result.engine.name == "sm87-trt10.3.0-fp16-dla1.engine"
    assert result.artifact.compat["dla_core"] == 1
    assert gpu.violations == []


def test_dla_errors(monkeypatch, tiny_bundle):
    gpu = fakegpu.FakeGpu(dla_cores=0)
    fakegpu.install(monkeypatch, gpu)
    with pytest.raises(EnvironmentMissingError, match="has 0 DLA core"):
        compile_bundle(tiny_bundle, "fp16", dla_core=0, batch=(1, 1, 1))
    with pytest.raises(BadInputError, match="DLA runs FP16 and INT8 only"):
        compile_bundle(tiny_bundle, "fp32", dla_core=0)
    assert gpu.violations == []


def test_version_compat_engine_needs_host_code_allowed(fake_gpu, tiny_bundle):
    """Contract: VERSION_COMPATIBLE at build; the golden run sets runtime.engine_host_code_allowed."""
    result = compile_bundle(tiny_bundle, "fp16", version_compat=True)
    assert "VERSION_COMPATIBLE" in fake_gpu.builds[-1]["flags"]
    assert result.engine.name == "sm87-trt10.3.0-fp16-vc.engine"
    assert result.golden["passed"] is True  # it deserialised, so host code was allowed


def test_hardware_compat_refused_on_jetson(fake_gpu, tiny_bundle):
    with pytest.raises(EnvironmentMissingError, match="Ampere or newer discrete GPU"):
        compile_bundle(tiny_bundle, "fp16", hardware_compat=True)


def test_hardware_compat_on_ampere_dgpu(monkeypatch, tiny_bundle):
    gpu = fakegpu.FakeGpu()
    fakegpu.install(monkeypatch, gpu, device_name="NVIDIA A10", cc="8.6", integrated=False)
    result = compile_bundle(tiny_bundle, "fp16", hardware_compat=True)
    assert result.engine.name == "ampere+-trt10.3.0-fp16.engine"
    assert result.artifact.compat["hardware_compat"] is True
    assert gpu.violations == []


def test_tensorrt_before_10_is_refused_clearly(monkeypatch, tiny_bundle):
    """TensorRT 8.x (JetPack 5, JetPack 6.0) is refused up front, by compile and runtime alike (exit 3)."""
    from edgetl.errors import EnvironmentMissingError
    from edgetl.runtime.backends.tensorrt import TensorRTBackend

    gpu = fakegpu.FakeGpu(trt_version="8.6.2.3")
    fakegpu.install(monkeypatch, gpu)
    with pytest.raises(EnvironmentMissingError, match=r"8\.6\.2\.3 is too old: edgetl needs TensorRT 10") as err:
        compile_bundle(tiny_bundle, "fp16")
    assert err.value.exit_code == 3 and gpu.builds == []
    (tiny_bundle / "some.engine").write_bytes(b"{}")
    with pytest.raises(EnvironmentMissingError, match="needs TensorRT 10"):
        TensorRTBackend(tiny_bundle / "some.engine")
    assert gpu.violations == []


def test_tensorrt_11_is_strongly_typed(monkeypatch, qdq_bundle, tiny_bundle):
    """Contract: TensorRT 11 has no FP16/INT8 flags: INT8 comes from the QDQ graph, FP16 needs an FP16 graph."""
    gpu = fakegpu.FakeGpu(trt_version="11.4.0.106")
    fakegpu.install(monkeypatch, gpu)
    result = compile_bundle(qdq_bundle, "int8")
    assert gpu.builds[-1]["flags"] == [] and "STRONGLY_TYPED" in result.artifact.info["flags"]
    with pytest.raises(BadInputError, match="no FP16 graph"):
        compile_bundle(tiny_bundle, "fp16")
    with pytest.raises(BadInputError, match="no QDQ graph"):
        compile_bundle(tiny_bundle, "int8")
    assert gpu.violations == []


def test_bad_options_are_usage_errors(fake_gpu, tiny_bundle):
    with pytest.raises(BadInputError, match="min <= opt <= max"):
        compile_bundle(tiny_bundle, "fp16", batch=(8, 4, 16))
    with pytest.raises(BadInputError, match="unknown precision"):
        compile_bundle(tiny_bundle, "fp8")


def test_golden_disagreement_is_a_gate_failure_but_engine_is_kept(fake_gpu, tiny_bundle):
    from edgetl.errors import GateFailedError

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["golden"]["tolerance"]["fp16"] = {"max_abs": 1e-9}
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GateFailedError, match="disagrees with the FP32 golden outputs"):
        compile_bundle(tiny_bundle, "fp16")
    (engine,) = open_bundle(tiny_bundle).find(kind="engine")
    assert engine.info["golden"]["passed"] is False


def test_fake_rejects_missing_profile(fake_gpu):
    """The fake itself: building a dynamic network without a profile is a violation (so the tests above mean it)."""
    trt = fake_gpu.trt
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(0)
    network.parsed, network.inputs = True, [fakegpu.FakeTensor("input", (-1, 3, 4, 4), trt.DataType.FLOAT)]
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)
    with pytest.raises(fakegpu.ContractViolation, match="no optimisation profile"):
        builder.build_serialized_network(network, config)
    fake_gpu.violations.clear()


def test_golden_inputs_unchanged(tiny_bundle):
    x = np.load(tiny_bundle / "golden/input.npy")
    assert x.shape == (8, 3, 16, 16)
