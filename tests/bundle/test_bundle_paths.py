"""A bundle named by a path relative to the working directory behaves like one named absolutely."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl.bundle.manifest import Bundle, open_bundle
from edgetl.errors import BundleError
from edgetl.preprocess import PreprocessSpec


def _bundle(root: str | Path) -> Bundle:
    return Bundle.create(root, task="classify", name="b", labels=["a", "b"], input_name="input",
                         preprocess=PreprocessSpec(size=(8, 8)))


def test_relative_root_is_made_absolute_and_artifacts_resolve_either_way(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = _bundle("bundles/b")
    assert bundle.root == tmp_path / "bundles" / "b"
    for name in ("one.onnx", "two.onnx", "three.onnx"):
        (bundle.root / name).write_bytes(name.encode())
    # as a stage builds it from the user's path, from the bundle root, and absolute
    assert bundle.add_artifact("bundles/b/one.onnx", kind="onnx", created_by="t").path == "one.onnx"
    assert bundle.add_artifact("two.onnx", kind="onnx", created_by="t").path == "two.onnx"
    assert bundle.add_artifact(bundle.root / "three.onnx", kind="onnx", created_by="t").path == "three.onnx"
    bundle.save()
    reopened = open_bundle("bundles/b")
    assert reopened.root.is_absolute()
    assert [a.path for a in reopened.artifacts] == ["one.onnx", "two.onnx", "three.onnx"]


def test_artifacts_outside_the_bundle_or_missing_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = _bundle("b")
    (tmp_path / "outside.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="outside the bundle"):
        bundle.add_artifact(tmp_path / "outside.onnx", kind="onnx", created_by="t")
    with pytest.raises(BundleError, match="does not exist"):
        bundle.add_artifact("missing.onnx", kind="onnx", created_by="t")
