"""Contract tests of our TensorRT *runtime* calls (TensorRTBackend) against the recording fake.

They check that buffers are allocated once and bound by name, each context keeps its own stream and
optimisation profile, shapes stay inside the profile (big batches are split, small ones padded),
host outputs are read only after synchronising, CUDA graphs are captured after a first run, and
everything is freed on close. Not proof that TensorRT works: see test_trt_real.py for that.
"""

from __future__ import annotations

import json
import threading

import fakegpu
import numpy as np
import onnxruntime as ort
import pytest

from edgetl.bundle.manifest import open_bundle
from edgetl.compile import compile_bundle
from edgetl.errors import BadInputError
from edgetl.runtime.artifacts import select_engine
from edgetl.runtime.backends.tensorrt import TensorRTBackend, TensorRTError, open_engine_or_fallback

pytestmark = pytest.mark.contract


def _reference(bundle, x):
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.fixture
def engine(fake_gpu, tiny_bundle):
    return compile_bundle(tiny_bundle, "fp32", batch=(2, 4, 8), contexts=2).engine


def test_infer_matches_reference_and_splits_big_batches(fake_gpu, tiny_bundle, engine):
    """Contract: 19 rows with a 2..8 profile run as 8+8+3 (no shape outside the profile), results in order."""
    x = np.random.default_rng(3).normal(size=(19, 3, 16, 16)).astype(np.float32)
    mallocs = fake_gpu.calls.count("cudaMalloc")
    with TensorRTBackend(engine, contexts=1) as backend:
        assert backend.describe()["batch_range"] == [2, 8]
        allocated = fake_gpu.calls.count("cudaMalloc") - mallocs
        before = fake_gpu.executions
        out = backend.infer(x)
        assert fake_gpu.executions - before == 3
        np.testing.assert_allclose(out["logits"], _reference(tiny_bundle, x), atol=1e-5)
        backend.infer(x[:5])
        # Buffers were allocated once, at construction (input + output), not per call.
        assert fake_gpu.calls.count("cudaMalloc") - mallocs == allocated == 2


def test_batch_below_profile_min_is_padded(fake_gpu, tiny_bundle, engine):
    x = np.random.default_rng(4).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with TensorRTBackend(engine, contexts=1) as backend:
        out = backend.infer(x)
    assert out["logits"].shape == (1, 5)
    np.testing.assert_allclose(out["logits"], _reference(tiny_bundle, x), atol=1e-5)


def test_contexts_get_own_profile_and_stream_and_serve_threads(fake_gpu, tiny_bundle, engine):
    """Contract: two contexts select profiles 0 and 1 on their own streams; concurrent callers are served."""
    x = np.random.default_rng(5).normal(size=(6, 3, 16, 16)).astype(np.float32)
    ref = _reference(tiny_bundle, x)
    errors: list[BaseException] = []
    with TensorRTBackend(engine) as backend:
        assert backend.describe()["contexts"] == 2

        def worker():
            try:
                for _ in range(5):
                    np.testing.assert_allclose(backend.infer(x)["logits"], ref, atol=1e-5)
            except BaseException as exc:  # collected for the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    streams = {c.stream for c in fake_gpu.contexts[-2:]}
    assert len(streams) == 2
    assert {c.profile for c in fake_gpu.contexts[-2:]} == {0, 1}


def test_more_contexts_than_profiles_is_refused(fake_gpu, engine):
    with pytest.raises(BadInputError, match="2 optimisation profile"):
        TensorRTBackend(engine, contexts=3)


def test_everything_freed_on_close(fake_gpu, engine):
    live = fake_gpu.live_allocations()
    backend = TensorRTBackend(engine, cuda_graph=True)
    backend.infer(np.zeros((3, 3, 16, 16), np.float32))
    backend.close()
    backend.close()  # idempotent
    assert fake_gpu.live_allocations() == live
    assert fake_gpu.streams == {}


def test_cuda_graph_capture_for_batch_one(fake_gpu, tiny_bundle):
    """Contract: capture only after a normal run; replays read the *current* input (no stale results)."""
    eng = compile_bundle(tiny_bundle, "fp32", batch=(1, 4, 8), contexts=1).engine
    rng = np.random.default_rng(6)
    with TensorRTBackend(eng, cuda_graph=True) as backend:
        for _ in range(4):
            x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
            np.testing.assert_allclose(backend.infer(x)["logits"], _reference(tiny_bundle, x), atol=1e-5)
        assert fake_gpu.calls.count("cudaStreamBeginCapture") == 1
        assert fake_gpu.calls.count("cudaGraphLaunch") == 2
        # A different batch invalidates the graph; back at batch 1 it is captured again.
        backend.infer(rng.normal(size=(3, 3, 16, 16)).astype(np.float32))
        for _ in range(3):
            x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
            np.testing.assert_allclose(backend.infer(x)["logits"], _reference(tiny_bundle, x), atol=1e-5)
        assert fake_gpu.calls.count("cudaStreamBeginCapture") == 2


def test_wrong_input_shape_is_bad_input(fake_gpu, engine):
    with TensorRTBackend(engine) as backend, pytest.raises(BadInputError, match="does not match"):
        backend.infer(np.zeros((2, 3, 8, 8), np.float32))


def test_engine_from_other_tensorrt_version_is_refused_clearly(monkeypatch, tiny_bundle, fake_gpu):
    eng = compile_bundle(tiny_bundle, "fp32").engine
    other = fakegpu.FakeGpu(trt_version="10.7.0.23")
    fakegpu.install(monkeypatch, other)
    with pytest.raises(TensorRTError, match=r"cannot deserialize.*expecting library version 10\.7\.0\.23"):
        TensorRTBackend(eng)
    assert other.violations == []


def test_select_engine_matches_and_explains_mismatch(monkeypatch, tiny_bundle, fake_gpu):
    compile_bundle(tiny_bundle, "fp16")
    bundle = open_bundle(tiny_bundle)
    art, reason = select_engine(bundle)
    assert art.path == "engines/sm87-trt10.3.0-fp16.engine"
    assert "built for this GPU (Orin, 8.7) and TensorRT 10.3.0" in reason

    # Same bundle on a different GPU: no engine, a reason naming both GPUs, and ONNX Runtime instead.
    other = fakegpu.FakeGpu()
    fakegpu.install(monkeypatch, other, device_name="NVIDIA GeForce RTX 3060", cc="8.6", integrated=False)
    art, reason = select_engine(bundle)
    assert art is None
    assert "built for compute capability 8.7 (Orin); this GPU is NVIDIA GeForce RTX 3060 (8.6)" in reason
    backend, why = open_engine_or_fallback(bundle)
    with backend:
        assert backend.name == "onnxruntime"
        assert "falling back to ONNX Runtime on model.onnx" in why
        x = np.load(tiny_bundle / "golden/input.npy")
        np.testing.assert_allclose(backend.infer(x)["logits"], np.load(tiny_bundle / "golden/output_logits.npy"),
                                   atol=1e-4)


def test_select_engine_skips_failed_golden_and_filters_precision(fake_gpu, qdq_bundle):
    compile_bundle(qdq_bundle, "fp16")
    compile_bundle(qdq_bundle, "int8")
    bundle = open_bundle(qdq_bundle)
    assert select_engine(bundle)[0].precision == "int8"  # best prefers int8
    assert select_engine(bundle, "fp16")[0].precision == "fp16"
    manifest = json.loads((qdq_bundle / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["kind"] == "engine" and a["precision"] == "int8":
            a["info"]["golden"]["passed"] = False
    (qdq_bundle / "manifest.json").write_text(json.dumps(manifest))
    bundle = open_bundle(qdq_bundle)
    assert select_engine(bundle)[0].precision == "fp16"
    art, reason = select_engine(bundle, "fp32")
    assert art is None and "no fp32 TensorRT engine" in reason


def test_fake_rejects_unbound_execute(fake_gpu, engine):
    """The fake itself: execute before binding every tensor is a violation (so the tests above mean it)."""
    trt = fake_gpu.trt
    runtime = trt.Runtime(trt.Logger())
    eng = runtime.deserialize_cuda_engine(engine.read_bytes())
    ctx = eng.create_execution_context()
    ctx.set_input_shape("input", (2, 3, 16, 16))
    _, stream = fake_gpu.cudart.cudaStreamCreateWithFlags(1)
    with pytest.raises(fakegpu.ContractViolation, match="set_tensor_address"):
        ctx.execute_async_v3(stream)
    with pytest.raises(fakegpu.ContractViolation, match="outside profile"):
        ctx.set_input_shape("input", (9, 3, 16, 16))
    with pytest.raises(fakegpu.ContractViolation, match="unknown tensor name"):
        ctx.set_tensor_address("images", 0)
    fake_gpu.violations.clear()
    fake_gpu.cudart.cudaStreamDestroy(stream)


def test_fake_cudart_names_exist_in_cuda_python():
    """The fake exposes only calls that cuda-python really has (when cuda-python is installed)."""
    real = pytest.importorskip("cuda.bindings.runtime")
    fake = fakegpu.FakeGpu().cudart
    names = [n for n in vars(fake) if n.startswith("cuda")]
    assert names and all(hasattr(real, n) for n in names), [n for n in names if not hasattr(real, n)]


def test_version_compatible_engine_opens_with_host_code_everywhere(fake_gpu, tiny_bundle):
    """Contract: load/validate/serve open a --version-compat engine with runtime.engine_host_code_allowed."""
    from edgetl.runtime import load
    from edgetl.serve.config import ServeConfig
    from edgetl.serve.models import default_loader
    from edgetl.validate.api import _open_backend as validate_open

    result = compile_bundle(tiny_bundle, "fp16", version_compat=True)
    assert result.artifact.compat["host_code"] is True
    x = np.load(tiny_bundle / "golden/input.npy")
    with load(tiny_bundle) as predictor:  # the runtime's auto choice
        assert predictor.backend.name == "tensorrt"
        np.testing.assert_allclose(predictor.predict_batch(x)["logits"], _reference(tiny_bundle, x), atol=5e-2)
    with TensorRTBackend(result.engine) as backend:  # the engine's key is read from its bundle's manifest
        assert backend.describe()["host_code"] is True
    with validate_open(result.engine, "auto") as backend:
        assert backend.name == "tensorrt"
    served = default_loader(open_bundle(tiny_bundle), ServeConfig(bundle=tiny_bundle))
    assert served.backend.name == "tensorrt"
    served.close()


def test_host_code_policy_falls_back_to_onnxruntime_with_a_warning(fake_gpu, tiny_bundle, monkeypatch, caplog):
    from edgetl.errors import EnvironmentMissingError
    from edgetl.runtime import load

    result = compile_bundle(tiny_bundle, "fp16", version_compat=True)
    compiled = len(fake_gpu.runtimes)  # the compile-time golden check allowed host code, as it should
    monkeypatch.setenv("EDGETL_TRT_ALLOW_HOST_CODE", "0")
    with caplog.at_level("WARNING", logger="edgetl.runtime"), load(tiny_bundle) as predictor:
        assert predictor.backend.name == "onnxruntime"
        assert "host code" in predictor.describe()["why"]
    assert any("EDGETL_TRT_ALLOW_HOST_CODE" in r.getMessage() for r in caplog.records), caplog.text
    backend, why = open_engine_or_fallback(open_bundle(tiny_bundle))
    with backend:
        assert backend.name == "onnxruntime" and "falling back to ONNX Runtime" in why
    with pytest.raises(TensorRTError, match="EDGETL_TRT_ALLOW_HOST_CODE"):
        TensorRTBackend(result.engine)
    with pytest.raises(EnvironmentMissingError, match="host code"):
        load(tiny_bundle, backend="tensorrt")
    assert not any(r.engine_host_code_allowed for r in fake_gpu.runtimes[compiled:]), "host code was allowed"
    with pytest.raises(BadInputError, match="--version-compat"):  # nor is such an engine built here
        compile_bundle(tiny_bundle, "fp32", version_compat=True)
