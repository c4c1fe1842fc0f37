"""A small kustomize subset, so the overlays can be resolved and checked without kubectl/kustomize.

Supported, and nothing else (an unknown kustomization field is an error, never silently ignored):
``resources`` (files, or directories with a kustomization.yaml), ``namespace``, ``images``
(``name`` -> ``newName``/``newTag``), ``patches`` with ``path`` (strategic merge patches, matched by
kind + metadata.name, or by an explicit ``target``). Strategic merge follows Kubernetes for the
fields our manifests use: maps merge recursively, ``null`` deletes a key, lists of containers,
volumes, env, ports and mounts merge by their key, any other list is replaced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "RuntimeClass", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
# Strategic-merge keys of the Kubernetes lists that appear in our manifests.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


class KustomizeError(ValueError):
    """The kustomization uses something this resolver does not support, or is broken."""


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """Merge ``patch`` into a copy of ``base`` the way ``kubectl patch --type strategic`` does."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(out) if isinstance(b, dict) and b.get(key) == item.get(key)), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = strategic_merge(out[match], item, None)
        return out
    return copy.deepcopy(patch)


def _set_images(doc: dict[str, Any], images: list[dict[str, Any]]) -> None:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for section in ("initContainers", "containers"):
        for container in spec.get(section, []):
            name, _, tag = container.get("image", "").partition(":")
            for rule in images:
                if rule["name"] == name:
                    container["image"] = f"{rule.get('newName', name)}:{rule.get('newTag', tag or 'latest')}"


def build(directory: str | Path) -> list[dict[str, Any]]:
    """The resolved resources of ``directory/kustomization.yaml``, like ``kustomize build``."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    kust = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unsupported = set(kust) - SUPPORTED
    if unsupported:
        raise KustomizeError(f"{kfile}: fields not supported by this resolver: {sorted(unsupported)}")

    docs: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            docs.extend(build(target))
        elif target.is_file():
            docs.extend(load_docs(target))
        else:
            raise KustomizeError(f"{kfile}: resource {entry} does not exist")

    for entry in kust.get("patches", []):
        if "path" not in entry:
            raise KustomizeError(f"{kfile}: only file patches (path:) are supported")
        patch_path = directory / entry["path"]
        if not patch_path.is_file():
            raise KustomizeError(f"{kfile}: patch {entry['path']} does not exist")
        for patch in load_docs(patch_path):
            target = entry.get("target") or {"kind": patch.get("kind"), "name": patch.get("metadata", {}).get("name")}
            hits = [
                i for i, d in enumerate(docs)
                if d.get("kind") == target.get("kind") and d.get("metadata", {}).get("name") == target.get("name")
            ]
            if not hits:
                raise KustomizeError(f"{patch_path}: patch target {target} matches no resource")
            for i in hits:
                docs[i] = strategic_merge(docs[i], patch)

    if "images" in kust:
        for doc in docs:
            _set_images(doc, kust["images"])
    if "namespace" in kust:
        for doc in docs:
            if doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = kust["namespace"]
    return docs
