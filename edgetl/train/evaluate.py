"""`evaluate_checkpoint` (top-1, top-5, per-class accuracy and confusion of a classifier checkpoint) and
`evaluate_detector_checkpoint` (mAP of a detector checkpoint).

Images go through `edgetl.preprocess` with the spec stored in the checkpoint, so the figures are the
ones the exported and deployed model is held to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.data.imagefolder import Sample, load_classification_data
from edgetl.data.torch_datasets import ImageDataset, make_loader
from edgetl.data.transforms import SpecTransform
from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.train.checkpoint import build_from_checkpoint
from edgetl.train.loop import predict
from edgetl.train.metrics import classification_metrics

torch = lazy_import("torch", "train", purpose="evaluating a checkpoint")

SPLITS = ("val", "train", "all")


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "val",
    *,
    batch_size: int = 64,
    device: str = "cpu",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a classifier checkpoint on a dataset.

    Args:
        checkpoint: an edgetl ``classify`` checkpoint (``best.pt``).
        data: dataset folder or CSV (same layouts as training). Its class names must be among the
            checkpoint's labels; they are matched by name, not by folder order.
        split: ``val`` (the ``val/`` folder, or the seeded split training used), ``train`` or ``all``.
        device: ``cpu``, ``cuda`` or ``auto``.
        val_fraction, seed: the split used when the dataset has no validation folder (training's defaults).

    Returns:
        ``{"checkpoint", "split", "images", "top1", "top5", "per_class", "confusion", "labels", "skipped"}``.
    """
    from edgetl.train.engine import resolve_device

    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    model, meta = build_from_checkpoint(checkpoint)
    if meta.task != "classify":
        raise BadInputError(f"{checkpoint}: a {meta.task} checkpoint; evaluate_checkpoint is for classifiers")
    dataset = load_classification_data(data, val_fraction=val_fraction, seed=seed)
    unknown = [c for c in dataset.classes if c not in meta.labels]
    if unknown:
        raise BadInputError(
            f"{data}: classes {unknown} are not labels of the checkpoint ({meta.labels})",
            hint="evaluate on data with the class folders the model was trained on",
        )
    remap = {i: meta.labels.index(name) for i, name in enumerate(dataset.classes)}
    chosen = {"val": dataset.val, "train": dataset.train, "all": dataset.train + dataset.val}[split]
    samples = [Sample(s.path, remap[s.label]) for s in chosen]
    torch_device = resolve_device(device)
    model.to(torch_device)
    loader = make_loader(ImageDataset(samples, SpecTransform(meta.preprocess)), batch_size=batch_size, shuffle=False)
    logits, labels, bad = predict(model, loader, torch_device)
    result = classification_metrics(logits, labels, meta.labels)
    skipped = [f"{p}: {why}" for p, why in dataset.skipped] + [f"{b.path}: {b.reason}" for b in bad]
    return {"checkpoint": str(checkpoint), "split": split, **result, "labels": meta.labels,
            "skipped": {"count": len(skipped), "files": skipped}}


def evaluate_detector_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "val", *,
                                 batch_size: int = 16, device: str = "cpu", limit: int | None = None,
                                 strict: bool = False) -> dict[str, Any]:
    """Evaluate a detector checkpoint on a dataset's split.

    Args:
        checkpoint: an edgetl checkpoint with task ``detect``.
        data: data.yaml or COCO JSON (its classes must match the checkpoint's labels).
        split: ``val`` or ``train``.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda`` or ``auto``.
        limit: evaluate only the first N images.
        strict: label problems are errors.

    Returns:
        ``{"task": "detect", "checkpoint", "split", "map50", "map", "per_class", "images", ...}``.

    Raises:
        BadInputError: not a detector checkpoint, unknown split, or classes that differ from the labels.
    """
    from edgetl.data.detection import load_detection_data
    from edgetl.detect.evaluate import evaluate_model

    model, meta = build_from_checkpoint(checkpoint)
    if meta.task != "detect":
        raise BadInputError(f"{checkpoint}: a {meta.task} checkpoint, not a detector",
                            hint="use `edgetl evaluate` with the classification data for it")
    if split not in ("val", "train"):
        raise BadInputError(f"unknown split {split!r}; expected val or train")
    dataset = load_detection_data(data, strict=strict, seed=int(meta.train_config.get("seed", 0)))
    if list(dataset.classes) != list(meta.labels):
        raise BadInputError(
            f"{data}: classes {dataset.classes} differ from the checkpoint's labels {meta.labels}",
            hint="evaluate on a dataset with the same class list, in the same order",
        )
    samples = dataset.val if split == "val" else dataset.train
    if limit:
        samples = samples[:limit]
    if not samples:
        raise BadInputError(f"{data}: the {split} split has no images")
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    model.to(dev)
    metrics = evaluate_model(model, samples, meta.labels, meta.preprocess, device=dev, batch_size=batch_size)
    return {"task": "detect", "checkpoint": str(checkpoint), "model": meta.model, "split": split,
            "data": str(data), **metrics}
