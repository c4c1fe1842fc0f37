"""Manifest schema v1: the shipped JSON Schema, the dependency-free validator, and load-time checks."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from edgetl.bundle import manifest_schema, open_bundle, validate_manifest
from edgetl.errors import BundleError


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


BROKEN = {
    "unknown task": lambda m: m.update(task="segment"),
    "no labels": lambda m: m.update(labels=[]),
    "label not a string": lambda m: m["labels"].__setitem__(0, 3),
    "size with one number": lambda m: m["input"].update(size=[32]),
    "wrong layout": lambda m: m["input"].update(layout="NHWC"),
    "negative size": lambda m: m["preprocess"].update(size=[-1, 32]),
    "unknown preprocess field": lambda m: m["preprocess"].update(gamma=2.2),
    "bad sha": lambda m: m["artifacts"][0].update(sha256="xyz"),
    "absolute artifact": lambda m: m["artifacts"][0].update(path="/etc/passwd"),
    "escaping artifact": lambda m: m["artifacts"][0].update(path="../../etc/passwd"),
    "unknown precision": lambda m: m["artifacts"][0].update(precision="int4"),
    "bool as bytes": lambda m: m["artifacts"][0].update(bytes=True),
    "missing artifacts": lambda m: m.pop("artifacts"),
    "validation not object": lambda m: m.update(validation="yes"),
}


def test_shipped_manifest_is_valid(colour_bundle: Path) -> None:
    assert validate_manifest(_manifest(colour_bundle)) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validator_flags_broken_manifests_like_jsonschema(colour_bundle: Path, case: str) -> None:
    manifest = copy.deepcopy(_manifest(colour_bundle))
    BROKEN[case](manifest)
    problems = validate_manifest(manifest)
    assert problems, case
    jsonschema = pytest.importorskip("jsonschema")
    assert list(jsonschema.Draft202012Validator(manifest_schema()).iter_errors(manifest)), case


def test_schema_itself_is_valid_draft_2020_12(colour_bundle: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(manifest_schema())
    jsonschema.validate(_manifest(colour_bundle), manifest_schema())


def test_open_bundle_refuses_schema_violation_with_field_path(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    manifest = _manifest(bundle)
    manifest["artifacts"][0]["path"] = "../outside.onnx"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"\$\.artifacts\[0\]\.path") as err:
        open_bundle(bundle, verify=False)
    assert err.value.exit_code == 2


def test_newer_schema_version_refused_with_upgrade_hint(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    manifest = _manifest(bundle)
    manifest["schema_version"] = 2
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer") as err:
        open_bundle(bundle)
    assert "upgrade" in str(err.value)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_hashes_verified_on_load(colour_bundle: Path, tmp_path: Path, damage: str) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    target = bundle / "model.int8.onnx"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[:-10]))
    else:
        target.unlink()
    expected = {"flip": "sha256 mismatch", "truncate": "size", "delete": "missing"}[damage]
    with pytest.raises(BundleError, match=expected):
        open_bundle(bundle)
    open_bundle(bundle, verify=False)  # --no-verify still reads the manifest
