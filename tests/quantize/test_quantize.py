"""Quantize: FP16, INT8 per calibration method, cache reuse, budget mode, and bad inputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgetl.bundle import open_bundle
from edgetl.cli.main import cli
from edgetl.errors import BadInputError, BundleError, GateFailedError
from edgetl.quantize import quantize_bundle


def test_fp16_keeps_float32_io(bundle_copy: Path) -> None:
    result = quantize_bundle(bundle_copy, "fp16")
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert result.info["keep_io_types"] and result.info["golden"]["logits"]["top1_agreement"] == 1.0
    assert open_bundle(bundle_copy).find(kind="onnx", precision="fp16")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_int8_qdq_each_method_and_cache(bundle_copy: Path, digits_dir: Path, method: str) -> None:
    result = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=20, method=method)
    assert result.precision == "int8" and result.path.name == "model.int8.onnx"
    info = result.info
    assert info["method"] == method and info["tensorrt_compatible"] and info["per_channel"]
    assert info["calibration"]["images"] == 20 and not info["calibration"]["cache_hit"]
    assert info["graph"]["quantize_linear"] > 0 and info["graph"]["int8_layers"] == 50
    cache = bundle_copy / info["calibration"]["cache"]
    assert cache.is_file() and cache.parent.name == "calibration"
    bundle = open_bundle(bundle_copy)  # every recorded hash still verifies
    assert bundle.find(kind="calibration")

    # Rebuilding the same format with other options reuses the cached statistics (no images decoded).
    again = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=20, method=method,
                            bias_correction=False, sequential_correction=False, weight_scales="mse")
    assert again.info["sequential_correction_result"] is None and not again.info["sequential_correction"]
    assert again.info["calibration"]["cache_hit"] and again.info["calibration"]["cache"] == info["calibration"]["cache"]
    # The CPU format quantizes the graph as exported (the TensorRT format its centred rewrite): its own
    # statistics, computed once, then reused as well.
    cpu = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=20, method=method, target="cpu")
    assert not cpu.info["tensorrt_compatible"] and not cpu.info["calibration"]["cache_hit"]
    assert cpu.info["centred_activations"] is None
    cpu_again = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=20, method=method,
                                target="cpu", bias_correction=False)
    assert cpu_again.info["calibration"]["cache_hit"]


@pytest.mark.slow
def test_budget_mode_keeps_sensitive_layers(bundle_copy: Path, digits_dir: Path) -> None:
    model = onnx.load(str(bundle_copy / "model.onnx"))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"][:3]
    # An unreachable budget: the search keeps max_kept layers, writes that model, and reports the miss.
    with pytest.raises(GateFailedError, match="not within the accuracy budget"):
        quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=16, method="minmax", max_drop=-1.0,
                        val_size=20, max_kept=2, budget_layers=convs)
    art = open_bundle(bundle_copy).find(kind="onnx", precision="mixed")[0]
    budget = art.info["budget"]
    assert len(art.info["kept_layers"]) == 2 and set(art.info["kept_layers"]) <= set(convs)
    section = open_bundle(bundle_copy).manifest["quantization"]["int8"]["budget"]
    assert {s["name"] for s in section["sensitivity"]} == set(convs)
    assert [s["kept"] for s in section["steps"]] == [0, 1, 2] and budget["within_budget"] is False
    # Kept layers really are float: their input does not come from a DequantizeLinear.
    assert set(art.info["kept_layers"]) <= set(art.info["graph"]["float_layers"])


@pytest.mark.slow
def test_budget_mode_searches_layers_and_activations(bundle_copy: Path, digits_dir: Path) -> None:
    # Unrestricted, the search ranks every weight and activation; out of budget it keeps max_kept of them.
    with pytest.raises(GateFailedError, match="activation"):
        quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=16, method="minmax", max_drop=-1.0,
                        val_size=12, max_kept=5)
    info = open_bundle(bundle_copy).manifest["quantization"]["int8"]
    budget = info["budget"]
    kinds = {s["kind"] for s in budget["sensitivity"]}
    assert kinds == {"layer", "activation"} and budget["units"] == len(budget["sensitivity"]) > 50
    assert [s["kept"] for s in budget["steps"]] == [0, 1, 2, 4, 5]  # doubling, capped at max_kept
    assert len(budget["kept_layers"]) + len(budget["kept_activations"]) == 5
    assert [s["sensitivity"] for s in budget["sensitivity"]] == sorted(
        (s["sensitivity"] for s in budget["sensitivity"]), reverse=True)


def test_budget_mode_within_budget_needs_no_kept_layers(bundle_copy: Path, digits_dir: Path) -> None:
    result = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=16, method="minmax",
                             max_drop=100.0, val_size=20)
    assert result.precision == "int8" and result.budget["within_budget"] and result.budget["kept_layers"] == []


def test_no_calibration_data(bundle_copy: Path) -> None:
    with pytest.raises(BadInputError, match="no calibration images"):
        quantize_bundle(bundle_copy, "int8")


def test_too_few_and_undecodable_images(bundle_copy: Path, digits_dir: Path, tmp_path: Path) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for src in sorted((digits_dir / "train" / "zero").iterdir())[:3]:
        shutil.copy(src, few / src.name)
    for i in range(4):
        (few / f"broken{i}.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match=r"too few calibration images: 3 usable of 7") as info:
        quantize_bundle(bundle_copy, "int8", calib_data=few, calib_size=16)
    assert "4 file(s)" in str(info.value) and "broken0.png" in str(info.value)

    mixed = tmp_path / "mixed"
    shutil.copytree(digits_dir / "train", mixed)
    for i in range(3):
        (mixed / "one" / f"corrupt{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    result = quantize_bundle(bundle_copy, "int8", calib_data=mixed, calib_size=200, method="minmax")
    assert result.info["calibration"]["undecodable"] == 3
    assert any(re.search(r"^3 of \d+ calibration images could not be decoded", w) for w in result.warnings)


def test_corrupt_onnx_is_refused(bundle_copy: Path, digits_dir: Path) -> None:
    (bundle_copy / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="failed verification"):
        quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=16)


def test_cli_quantize_json_and_bad_method(bundle_copy: Path, digits_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["quantize", str(bundle_copy), "--calib-data", str(digits_dir), "--calib-size", "12",
                                 "--method", "minmax", "--activations", "uint8", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["precision"] == "int8" and doc["info"]["activation_type"] == "uint8"
    # 12 images are too few for bias correction: the warning is on stderr once (the library logs it, the verb
    # does not print it again), and in the document.
    assert sum("bias correction skipped" in w for w in doc["warnings"]) == 1
    assert sum("bias correction skipped" in line for line in result.stderr.splitlines()) == 1
    assert np.isfinite(doc["info"]["golden"]["logits"]["max_abs_diff"])
    bad = runner.invoke(cli, ["quantize", str(bundle_copy), "--calib-size", "2", "--calib-data", str(digits_dir)])
    assert bad.exit_code == 2 and "too small" in bad.output


@pytest.mark.slow
def test_too_few_images_for_bias_correction_warns_and_skips(bundle_copy: Path, digits_dir: Path) -> None:
    result = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=12)
    assert any("bias correction skipped" in w for w in result.warnings)
    assert any("GPTQ weight rounding skipped" in w for w in result.warnings)
    assert result.info["weights"]["gptq_rounded_layers"] == 0
    assert result.info["weights"]["bias_correction_applied"] is False
    assert result.info["weight_bits"] == 8 and not result.info["reduce_range"]
    # 12 images cannot give a stable mean output either: the sequential correction is skipped too, and says so.
    assert any("sequential correction of the biases skipped" in w for w in result.warnings)
    assert result.info["sequential_correction_result"] is None
    golden = result.info["golden"]["logits"]["numerics"]
    assert set(golden) == {"exact", "device"}


@pytest.mark.slow
def test_bias_correction_recorded_with_enough_images(bundle_copy: Path, digits_dir: Path) -> None:
    result = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=40)
    weights = result.info["weights"]
    assert weights["bias_correction_applied"] and weights["bias_corrected_layers"] == 50
    # 40 images, five whole chunks of 8: every biased layer's mean output corrected in the quantized graph.
    sequential = result.info["sequential_correction_result"]
    assert sequential["layers"] == 50 and sequential["images"] == 40 and not sequential["skipped"]
    assert result.info["weight_rounding"] == "gptq" and weights["gptq_rounded_layers"] == 50
    assert result.info["calibration"]["cache"].endswith(".npz")
    nearest = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=40, weight_rounding="nearest")
    assert nearest.info["calibration"]["cache_hit"] and nearest.info["weights"]["gptq_rounded_layers"] == 0
    # A cache written before the rounding's moments existed is measured again, not trusted.
    from edgetl.quantize.statistics import CalibrationStatistics

    cache = bundle_copy / result.info["calibration"]["cache"]
    old = CalibrationStatistics.load(cache)
    old.patch_moments = None
    old.save(cache)
    stale = open_bundle(bundle_copy, verify=False)
    stale.add_artifact(cache, kind="calibration", precision="int8", created_by="quantize")
    stale.save()
    again = quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=40)
    assert not again.info["calibration"]["cache_hit"] and again.info["weights"]["gptq_rounded_layers"] == 50


def test_bundle_quantized_by_an_older_edgetl_still_validates(bundle_copy: Path, digits_dir: Path) -> None:
    """Artifacts recorded before numerics existed (no gate_numerics) are planned from their activation type."""
    from edgetl.validate.api import _numerics_plan

    quantize_bundle(bundle_copy, "int8", calib_data=digits_dir, calib_size=12)
    bundle = open_bundle(bundle_copy)
    art = bundle.find(kind="onnx", precision="int8")[0]
    for key in ("gate_numerics", "target", "weights", "bias_correction", "weight_bits"):
        art.info.pop(key, None)
    assert _numerics_plan(bundle, bundle.path_of(art), "both") == (["exact", "device"], "exact")
    art.info["activation_type"], art.info["tensorrt_compatible"] = "uint8", False
    assert _numerics_plan(bundle, bundle.path_of(art), "both")[1] == "device"
