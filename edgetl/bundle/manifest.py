"""Manifest schema v1: read, validate, update and write a bundle's ``manifest.json``.

A stage adds artifacts and manifest sections; it never edits another stage's files in place. Every
write of the manifest is atomic.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl.bundle.schema import validate_manifest
from edgetl.errors import BundleError
from edgetl.fileio import sha256_file, write_json
from edgetl.preprocess import PreprocessSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
TASKS = ("classify", "detect")
ARTIFACT_KINDS = ("onnx", "engine", "checkpoint", "calibration", "golden", "other")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")


@dataclass
class Artifact:
    """One file of the bundle, with what a device needs to trust and pick it.

    Args:
        path: relative to the bundle root, POSIX separators.
        kind: one of `ARTIFACT_KINDS`.
        precision: one of `PRECISIONS` (``mixed`` for an INT8 graph with layers kept in float).
        sha256, bytes: verified on load.
        created_by: the stage that wrote it (``export``, ``quantize``, ``compile``...).
        compat: for engines: compute capability, device name, TensorRT version, profile.
        info: free-form stage details (opset, calibration method, kept layers...).
    """

    path: str
    kind: str
    precision: str = "fp32"
    sha256: str = ""
    bytes: int = 0
    created_by: str = ""
    created_at: str = ""
    compat: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("compat", "info"):
            if not data[key]:
                data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class Bundle:
    """A bundle directory and its manifest, loaded into memory.

    Use `open_bundle` to read one, `Bundle.create` to start one. Mutating methods change the
    in-memory manifest; `save` writes it atomically.
    """

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        # Absolute once, here: every stage builds artifact paths as ``bundle.root / name``, and a root
        # relative to the working directory would be joined onto itself by `add_artifact`.
        self.root = Path(os.path.abspath(root))
        self.manifest = manifest

    # -- creation and persistence -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        task: str,
        name: str,
        labels: list[str],
        input_name: str,
        preprocess: PreprocessSpec,
        dynamic_batch: bool = True,
        postprocess: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Bundle:
        if task not in TASKS:
            raise BundleError(f"unknown task {task!r}; expected one of {TASKS}")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "task": task,
            "name": name,
            "labels": list(labels),
            "input": {
                "name": input_name,
                "layout": "NCHW",
                "dtype": "float32",
                "size": list(preprocess.size),
                "dynamic_batch": bool(dynamic_batch),
            },
            "preprocess": preprocess.to_dict(),
            "postprocess": postprocess or ({"type": "softmax"} if task == "classify" else {}),
            "artifacts": [],
            "validation": None,
            "provenance": {"edgetl_version": __version__, **(provenance or {})},
        }
        bundle = cls(root, manifest)
        bundle.root.mkdir(parents=True, exist_ok=True)
        return bundle

    def save(self) -> Path:
        return write_json(self.root / MANIFEST_NAME, self.manifest)

    # -- typed views -------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    @property
    def dataset(self) -> str | None:
        """The dataset the model was trained on, as recorded at export: the default for calibration,
        validation and QAT images."""
        return self.manifest.get("provenance", {}).get("dataset")

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact.from_dict(a) for a in self.manifest.get("artifacts", [])]

    def path_of(self, artifact: Artifact) -> Path:
        return self.root / artifact.path

    def find(self, *, kind: str | None = None, precision: str | None = None) -> list[Artifact]:
        """Artifacts matching the given kind and/or precision, in manifest order."""
        return [
            a
            for a in self.artifacts
            if (kind is None or a.kind == kind) and (precision is None or a.precision == precision)
        ]

    def reference_onnx(self) -> Artifact:
        """The FP32 ONNX graph every candidate is compared against."""
        found = self.find(kind="onnx", precision="fp32")
        if not found:
            raise BundleError(
                f"{self.root}: no FP32 ONNX model in the bundle", hint="run `edgetl export` first"
            )
        return found[0]

    # -- mutation ----------------------------------------------------------------------------
    def add_artifact(
        self,
        path: str | Path,
        *,
        kind: str,
        precision: str = "fp32",
        created_by: str,
        compat: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> Artifact:
        """Hash a file already written inside the bundle and record it (replacing a same-path entry).

        Args:
            path: absolute, or relative to the bundle root. A relative path that names a file only when
                read from the working directory (``bundles/x/model.onnx`` for the bundle ``bundles/x``)
                is taken from there, as long as it lies inside the bundle.
        """
        if kind not in ARTIFACT_KINDS:
            raise BundleError(f"unknown artifact kind {kind!r}")
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}")
        full = self._locate(Path(path))
        if not full.is_file():
            raise BundleError(f"artifact {full} does not exist", hint="write the file before recording it")
        try:
            rel = full.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError as exc:
            raise BundleError(f"artifact {full} is outside the bundle {self.root}") from exc
        artifact = Artifact(
            path=rel,
            kind=kind,
            precision=precision,
            sha256=sha256_file(full),
            bytes=full.stat().st_size,
            created_by=created_by,
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            compat=compat or {},
            info=info or {},
        )
        entries = [a for a in self.manifest["artifacts"] if a["path"] != rel]
        entries.append(artifact.to_dict())
        self.manifest["artifacts"] = entries
        return artifact

    def _locate(self, path: Path) -> Path:
        if path.is_absolute():
            return path
        inside = self.root / path
        from_cwd = Path(os.path.abspath(path))
        if not inside.exists() and from_cwd.exists() and from_cwd.is_relative_to(self.root):
            return from_cwd
        return inside

    def set_section(self, key: str, value: Any) -> None:
        """Set a top-level manifest section (``validation``, ``golden``, ``calibration``...)."""
        self.manifest[key] = value

    # -- verification ------------------------------------------------------------------------
    def verify(self) -> None:
        """Check that every artifact exists with the recorded size and sha256."""
        problems = []
        for artifact in self.artifacts:
            full = self.path_of(artifact)
            if not full.is_file():
                problems.append(f"{artifact.path}: missing")
            elif full.stat().st_size != artifact.bytes:
                problems.append(f"{artifact.path}: size {full.stat().st_size} != recorded {artifact.bytes}")
            elif sha256_file(full) != artifact.sha256:
                problems.append(f"{artifact.path}: sha256 mismatch")
        if problems:
            raise BundleError(
                f"bundle {self.root} failed verification: " + "; ".join(problems),
                hint="the bundle is corrupt or was edited by hand; re-create it, or pass --no-verify",
            )


def open_bundle(root: str | Path, *, verify: bool = True) -> Bundle:
    """Read a bundle directory, check its schema version, and (by default) verify artifact hashes."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST_NAME} not found", hint="run `edgetl export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{path}: schema_version missing or not an integer")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{path}: manifest schema version {version} is newer than this edgetl supports ({SCHEMA_VERSION})",
            hint="upgrade edgetl on this device: pip install -U edgetl",
        )
    problems = validate_manifest(manifest)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise BundleError(
            f"{path}: manifest does not follow schema v{SCHEMA_VERSION}: {shown}",
            hint="the schema is edgetl/bundle/manifest.schema.json (docs/bundle.md); re-export the bundle",
        )
    bundle = Bundle(root, manifest)
    if verify:
        bundle.verify()
    return bundle
