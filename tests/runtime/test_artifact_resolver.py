"""The one artifact resolver (`edgetl.runtime.artifacts`): one table of cases for every stage that asks it.

Each row builds a bundle from the shared colour bundle (FP32 + INT8 ONNX, INT8 validated), optionally
with an FP16 graph, an INT8 graph in the CPU format, a failed validation or a ``mixed`` INT8 graph, and
asks one question the runtime, validation, the golden check, bench or compile asks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgetl.bundle.manifest import open_bundle
from edgetl.errors import BadInputError, BundleError
from edgetl.runtime import artifacts


def _bundle(src: Path, dst: Path, *, fp16: bool = False, cpu_format: bool = False, validated: bool = True,
            mixed: bool = False) -> Any:
    root = shutil.copytree(src, dst)
    if fp16:
        shutil.copy(root / "model.onnx", root / "model.fp16.onnx")
        bundle = open_bundle(root, verify=False)
        bundle.add_artifact("model.fp16.onnx", kind="onnx", precision="fp16", created_by="quantize")
        bundle.save()
    manifest = json.loads((root / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["path"] == "model.int8.onnx":
            if cpu_format:
                art.setdefault("info", {})["activation_type"] = "uint8"
            if mixed:
                art["precision"] = "mixed"
    if not validated:
        manifest["validation"]["results"]["model.int8.onnx"]["passed"] = False
    (root / "manifest.json").write_text(json.dumps(manifest))
    return open_bundle(root, verify=False)


#: (id, bundle variant, question, expected answer)
CASES = [
    ("gpu best: FP16 first", {"fp16": True}, ("onnx", "best", True), "model.fp16.onnx"),
    ("gpu best: validated INT8 next", {}, ("onnx", "best", True), "model.int8.onnx"),
    ("gpu best: unvalidated INT8 skipped", {"validated": False}, ("onnx", "best", True), "model.onnx"),
    ("cpu best: TensorRT-format INT8 skipped", {}, ("onnx", "best", False), "model.onnx"),
    ("cpu best: CPU-format INT8", {"cpu_format": True}, ("onnx", "best", False), "model.int8.onnx"),
    ("cpu best: never FP16", {"fp16": True, "validated": False}, ("onnx", "best", False), "model.onnx"),
    ("explicit int8 needs no validation", {"validated": False}, ("onnx", "int8", False), "model.int8.onnx"),
    ("explicit int8 finds mixed", {"mixed": True}, ("onnx", "int8", True), "model.int8.onnx"),
    ("explicit fp16", {"fp16": True}, ("onnx", "fp16", False), "model.fp16.onnx"),
    ("fallback for an engine: same precision", {"fp16": True}, ("fallback", "fp16"), "model.fp16.onnx"),
    ("fallback for an engine: best is FP32", {"fp16": True}, ("fallback", "best"), "model.onnx"),
    ("fallback: missing precision is FP32", {}, ("fallback", "fp16"), "model.onnx"),
    ("validate by name: int8", {}, ("named", "int8"), "model.int8.onnx"),
    ("validate by name: mixed", {"mixed": True}, ("named", "mixed"), "model.int8.onnx"),
    ("validate by name: fp32", {}, ("named", "fp32"), "model.onnx"),
    ("golden/bench: int8 family", {"mixed": True}, ("matching", "int8"), ["model.int8.onnx"]),
    ("golden/bench: all", {"fp16": True}, ("matching", "all"), ["model.onnx", "model.int8.onnx", "model.fp16.onnx"]),
    ("engines: none in the bundle", {}, ("engine", "best"), None),
]


@pytest.mark.parametrize(("variant", "question", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resolver_table(colour_bundle: Path, tmp_path: Path, variant: dict, question: tuple, expected: Any) -> None:
    bundle = _bundle(colour_bundle, tmp_path / "b", **variant)
    what = question[0]
    if what == "onnx":
        art, why = artifacts.select_onnx(bundle, question[1], on_gpu=question[2])
        assert art.path == expected and why
    elif what == "fallback":
        assert artifacts.fallback_onnx(bundle, question[1]).path == expected
    elif what == "named":
        path, label = artifacts.select_named(bundle, question[1])
        assert path.name == expected and artifacts.family(label) == artifacts.family(question[1])
    elif what == "matching":
        assert sorted(a.path for a in artifacts.matching(bundle, "onnx", question[1])) == sorted(expected)
    else:
        art, why = artifacts.select_engine(bundle, question[1])
        assert art is expected and "no TensorRT engines" in why


def test_best_order_is_one_table() -> None:
    assert artifacts.BEST_ORDER["tensorrt"].order == ("int8", "fp16", "fp32")
    assert artifacts.BEST_ORDER["gpu"].order[0] == "fp16" and artifacts.BEST_ORDER["gpu"].int8_needs_validation
    assert "fp16" not in artifacts.BEST_ORDER["cpu"].order and artifacts.BEST_ORDER["cpu"].int8_needs_cpu_format
    assert artifacts.family("mixed") == "int8" and artifacts.check_precision("mixed") == "int8"
    with pytest.raises(BadInputError, match="unknown precision 'int4'"):
        artifacts.check_precision("int4")


def test_missing_precision_and_unknown_name_say_what_to_do(colour_bundle: Path) -> None:
    bundle = open_bundle(colour_bundle, verify=False)
    with pytest.raises(BundleError, match="no fp16 ONNX model") as err:
        artifacts.select_onnx(bundle, "fp16")
    assert "edgetl quantize" in str(err.value) and err.value.exit_code == 2
    with pytest.raises(BadInputError, match="no fp16 ONNX model"):
        artifacts.select_named(bundle, "fp16")
    with pytest.raises(BadInputError, match="model not found"):
        artifacts.select_named(bundle, "nothing.onnx")
