"""Export: parity with PyTorch, manifest and golden samples, fixed vs dynamic batch, loud failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgetl.bundle import open_bundle
from edgetl.cli.main import cli
from edgetl.errors import BadInputError
from edgetl.export import ParityError, export_checkpoint


def test_export_parity_manifest_and_golden(fp32_bundle: Path) -> None:
    bundle = open_bundle(fp32_bundle)
    parity = bundle.manifest["export"]["parity"]
    assert parity["passed"] and parity["images"] == 16
    assert parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] == 1.0
    assert "digits" in parity["source"]  # real images, not synthetic

    model = onnx.load(str(fp32_bundle / "model.onnx"))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert bundle.manifest["input"]["dynamic_batch"] is True
    assert len(bundle.labels) == 10 and "zero" in bundle.labels
    assert bundle.manifest["postprocess"] == {"type": "softmax"}
    assert bundle.manifest["provenance"]["opset"] == 17
    assert bundle.reference_onnx().info["simplified"] is True

    golden = bundle.manifest["golden"]
    x = np.load(fp32_bundle / golden["input"])
    y = np.load(fp32_bundle / golden["outputs"]["logits"])
    assert x.shape == (4, 3, 64, 64) and x.dtype == np.float32 and y.shape == (4, 10)
    assert golden["tolerance"]["int8"]["top1_agreement"] == 0.85 and len(golden["sources"]) == 4
    assert {a.kind for a in bundle.artifacts} == {"onnx", "golden"}


def test_existing_bundle_needs_overwrite(fp32_bundle: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(BadInputError, match="already holds a bundle"):
        export_checkpoint(tiny_checkpoint, fp32_bundle)


@pytest.mark.slow
def test_fixed_batch_cli_and_parity_failure(tiny_checkpoint: Path, digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fixed"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), str(out), "--fixed-batch", "--batch-size", "2",
                                      "--parity-data", str(digits_dir), "--golden", "3", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["parity"]["passed"] and doc["graph"]["dynamic_batch"] is False
    model = onnx.load(str(out / "model.onnx"))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 64, 64]
    assert np.load(out / "golden/input.npy").shape[0] == 3  # odd count through a batch-2 graph: padded, trimmed

    # A parity tolerance nothing can meet: export must fail loudly, keep the graph, write no manifest.
    bad = tmp_path / "bad"
    with pytest.raises(ParityError, match="parity check failed") as info:
        export_checkpoint(tiny_checkpoint, bad, parity_data=digits_dir, parity_atol=-1.0)
    assert info.value.exit_code == 1
    assert (bad / "model.parity-failed.onnx").is_file() and not (bad / "manifest.json").exists()
