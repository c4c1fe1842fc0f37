"""The checkpoint format: weights plus everything needed to deploy them.

A checkpoint is a plain dict of tensors and primitives, so it loads with ``torch.load(weights_only=True)``.
It always carries the labels, the preprocessing spec and the model name: a model and its
preprocessing cannot drift apart.

Keys::

    format: "edgetl-checkpoint", version: 1
    task: "classify" | "detect"
    model: registry name (classifier) or detector name
    model_args: dict of constructor args (num_classes, size variant, ...)
    labels: list[str]
    preprocess: PreprocessSpec.to_dict()
    state_dict: model weights
    train_config: dict (strategy, lr, epochs, seed, ...)
    epoch: int, metrics: dict (best metric etc.)
    provenance: dict (weights source, dataset digest, edgetl version)
    optimizer / scheduler / ema: optional, for resume
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl.errors import BadInputError
from edgetl.fileio import atomic_path
from edgetl.lazy import lazy_import
from edgetl.preprocess import PreprocessSpec

torch = lazy_import("torch", "train", purpose="training")

CHECKPOINT_FORMAT = "edgetl-checkpoint"
CHECKPOINT_VERSION = 1
NOT_A_CHECKPOINT_HINT = ("pass the best.pt or last.pt that `edgetl train` wrote (runs/<name>/best.pt); to start "
                         "from other weights, train with --weights FILE (a plain state dict)")


@dataclass
class CheckpointMeta:
    """The deploy-relevant facts stored beside the weights."""

    task: str
    model: str
    labels: list[str]
    preprocess: PreprocessSpec
    model_args: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, state_dict: dict[str, Any], meta: CheckpointMeta, **extra: Any) -> Path:
    """Write a checkpoint atomically (temp file + rename): Ctrl-C never leaves a truncated file."""

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "task": meta.task,
        "model": meta.model,
        "model_args": dict(meta.model_args),
        "labels": list(meta.labels),
        "preprocess": meta.preprocess.to_dict(),
        "state_dict": state_dict,
        "train_config": dict(meta.train_config),
        "epoch": int(meta.epoch),
        "metrics": dict(meta.metrics),
        "provenance": {"edgetl_version": __version__, **meta.provenance},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> tuple[dict[str, Any], CheckpointMeta]:
    """Load a checkpoint safely (``weights_only=True``); returns ``(raw dict, meta)``."""

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        from edgetl.models.weights import why_not_loadable

        raise BadInputError(f"{path} is not an edgetl checkpoint: {why_not_loadable(exc, path)}",
                            hint=NOT_A_CHECKPOINT_HINT) from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(f"{path} is not an edgetl checkpoint: it has no edgetl labels, preprocessing or model name",
                            hint=NOT_A_CHECKPOINT_HINT)
    if raw.get("version", 0) > CHECKPOINT_VERSION:
        raise BadInputError(f"{path}: checkpoint version {raw['version']} is newer than this edgetl supports")
    meta = CheckpointMeta(
        task=raw["task"],
        model=raw["model"],
        labels=list(raw["labels"]),
        preprocess=PreprocessSpec.from_dict(raw["preprocess"]),
        model_args=dict(raw.get("model_args", {})),
        train_config=dict(raw.get("train_config", {})),
        epoch=int(raw.get("epoch", 0)),
        metrics=dict(raw.get("metrics", {})),
        provenance=dict(raw.get("provenance", {})),
    )
    return raw, meta


def build_from_checkpoint(path: str | Path, *, map_location: str = "cpu") -> tuple[Any, CheckpointMeta]:
    """Rebuild the model of a checkpoint with its weights, in eval mode."""
    raw, meta = load_checkpoint(path, map_location=map_location)
    if meta.task == "classify":
        from edgetl.models import create

        model = create(meta.model, weights="none", num_classes=len(meta.labels), **{
            k: v for k, v in meta.model_args.items() if k not in ("num_classes",)
        })
    elif meta.task == "detect":
        from edgetl.detect.model import build_detector  # provided by the detector package

        model = build_detector(meta.model, num_classes=len(meta.labels), weights="none", **{
            k: v for k, v in meta.model_args.items() if k not in ("num_classes",)
        })
    else:
        raise BadInputError(f"{path}: unknown task {meta.task!r}")
    model.load_state_dict(raw["state_dict"])
    model.eval()
    return model, meta
