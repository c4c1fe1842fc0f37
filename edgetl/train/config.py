"""`RunConfig`: the options every training task shares, with one meaning each.

A task's configuration (`edgetl.train.classify.TrainConfig`, `edgetl.train.detect.DetectTrainConfig`)
extends it with its own options and its own defaults; the training core (`edgetl.train.engine`) reads
only the fields declared here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunConfig:
    """Options shared by every training task (saved in ``config.yaml`` and checkpoints).

    Args:
        data: the dataset (its layout is the task's).
        model: the model's registry name.
        weights: ``"pretrained"``, ``"none"``, or a state dict / checkpoint path.
        strategy: which weights train (the names are the task's).
        epochs: passes over the training set.
        batch_size: images per optimizer step, per process (the global batch is this times the
            number of processes under ``torchrun``).
        lr: peak learning rate; None for the task's default.
        backbone_lr_scale: backbone learning rate as a fraction of ``lr``.
        optimizer: ``adamw`` or ``sgd``.
        weight_decay: on conv/linear weights (norms and biases get none); None for the optimizer's default.
        img_size: input side in pixels; None for the model's default.
        augment: random training augmentations.
        warmup_epochs: linear learning-rate warm-up, then cosine decay.
        patience: stop after this many evaluations without a better score (None: never).
        grad_clip: max gradient norm (0/None: off).
        max_steps: stop after this many optimizer steps in total (the schedule spans them).
        seed: seeds the split, initialisation, shuffling and augmentation.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        out: run directory.
        resume: a ``last.pt`` (or its run directory) to continue from.
        workers: DataLoader worker processes.
        amp: mixed precision on CUDA (ignored on CPU).
        channels_last: NHWC memory layout (faster for depthwise networks, on CPU as well).
        val_fraction: held-out fraction when the dataset has no validation split.
    """

    data: str | Path = ""
    model: str = ""
    weights: str = "pretrained"
    strategy: str = "partial"
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    backbone_lr_scale: float = 1.0
    optimizer: str = "adamw"
    weight_decay: float | None = None
    img_size: int | None = None
    augment: bool = True
    warmup_epochs: float = 1.0
    patience: int | None = None
    grad_clip: float | None = 1.0
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    out: str | Path = "runs/exp"
    resume: str | Path | None = None
    workers: int = 0
    amp: bool = True
    channels_last: bool = True
    val_fraction: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings), as ``config.yaml`` and checkpoints store them."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
