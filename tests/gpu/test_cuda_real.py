"""Real-CUDA checks that need no TensorRT: the CUDA helpers behind the TensorRT backend, and training on a GPU.

Skipped where ``torch.cuda.is_available()`` is False (see ``tests/conftest.py``). On a GPU machine they prove
what the contract fakes in ``tests/compile`` only describe: page-locked buffers, async copies on a stream and a
captured CUDA graph move the same bytes back, through both helper implementations; classifier training with
AMP and detector training run on the GPU and their checkpoints load and evaluate on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli

pytestmark = [pytest.mark.gpu]

_APIS = ["torch"] + (["cuda-python"] if importlib.util.find_spec("cuda") is not None else [])


@pytest.mark.parametrize("kind", _APIS)
def test_cuda_helper_round_trip_and_graph(kind: str) -> None:
    from edgetl.runtime.backends.cuda_mem import get_cuda_api

    api = get_cuda_api(kind)
    api.set_device(0)
    stream = api.create_stream()
    shape = (2, 3, 8, 8)
    src = api.alloc_host(shape, np.dtype(np.float32))
    dst = api.alloc_host(shape, np.dtype(np.float32))
    dev = api.alloc_device(src.nbytes)
    try:
        src.array[...] = np.arange(src.array.size, dtype=np.float32).reshape(shape)
        api.htod(dev, src, src.nbytes, stream)
        api.dtoh(dst, dev, dst.nbytes, stream)
        api.synchronize(stream)
        np.testing.assert_array_equal(dst.array, src.array)

        # A captured graph replays the same two copies with new input bytes, as the TensorRT backend does.
        api.begin_capture(stream)
        api.htod(dev, src, src.nbytes, stream)
        api.dtoh(dst, dev, dst.nbytes, stream)
        graph = api.end_capture(stream)
        src.array[...] = -1.5
        dst.array[...] = 0.0
        api.launch_graph(graph, stream)
        api.synchronize(stream)
        np.testing.assert_array_equal(dst.array, np.full(shape, -1.5, dtype=np.float32))
        api.free_graph(graph)
    finally:
        api.free_device(dev)
        api.free_host(src)
        api.free_host(dst)
        api.destroy_stream(stream)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.data.samples import write_digits

    out = tmp_path_factory.mktemp("gpu-data") / "digits"
    write_digits(out, train_per_class=8, val_per_class=3, size=48, seed=0)
    return out


@pytest.mark.parametrize("strategy", ["frozen", "partial"])
def test_train_classify_on_cuda_with_amp_evaluates_on_cpu(digits: Path, tmp_path: Path, strategy: str) -> None:
    runner = CliRunner()
    out = tmp_path / strategy
    result = runner.invoke(cli, ["train", "classify", "--data", str(digits), "--strategy", strategy, "--img-size", "64",
                                 "--epochs", "2", "--device", "cuda", "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert Path(doc["best_checkpoint"]).is_file() and len(doc["history"]) == 2
    for device in ("cuda", "cpu"):
        evaluated = runner.invoke(cli, ["evaluate", doc["best_checkpoint"], "--data", str(digits), "--device", device,
                                        "--json"])
        assert evaluated.exit_code == 0, evaluated.output
        # Validation during training ran on the GPU under AMP; the CPU in FP32 may flip at most one image of 30.
        assert json.loads(evaluated.stdout)["top1"] == pytest.approx(doc["best_top1"], abs=100 / 30 + 1e-6)


def test_train_detect_on_cuda(tmp_path: Path) -> None:
    from edgetl.data.shapes import write_shapes

    shapes = tmp_path / "shapes"
    write_shapes(shapes, n_train=16, n_val=4, size=96, seed=3)
    out = tmp_path / "det"
    result = CliRunner().invoke(cli, ["train", "detect", "--data", str(shapes), "--img-size", "96", "--batch-size", "8",
                                      "--epochs", "2", "--device", "cuda", "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert Path(doc["best_checkpoint"]).is_file()
    assert all(np.isfinite(row["train_loss"]) for row in doc["history"])
