"""What a training run is about to do, said before it starts: the dataset, the plan, an estimated time.

A run that trains on the wrong folder, on a split nobody asked for, or without half its files should be
stopped in its first second, not after its last epoch. So before the first epoch a run logs (logger
``edgetl.train.announce``, INFO; the CLI prints it on stderr): the classes, images per split and per
class, how the validation split was made, the files skipped as unreadable, and the images, epochs and
an estimated duration.

The estimate times the model on a few of the run's own images (decode, preprocessing, forward pass) and
scales that by the work the strategy does: a linear probe runs the backbone once over every image; the
other strategies run a forward and a backward pass over the training images every epoch (a backward
pass costs about twice a forward pass, about half that when only the last stages train) and a forward
pass over the validation images.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from edgetl.data.imagefolder import ClassificationData, Sample
from edgetl.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

#: Cost of one training image relative to one forward pass, per strategy (forward + backward).
TRAIN_COST = {"partial": 1.6, "full": 3.0, "scratch": 3.0}
MAX_CLASSES_LISTED = 12
MAX_SKIPPED_LISTED = 10


def _split_source(data: ClassificationData, val_fraction: float, seed: int) -> str:
    if data.val_source == "split":
        return (f"validation = {100 * val_fraction:.0f} % of the training images per class, carved out "
                f"automatically (seeded stratified split, seed {seed}): the dataset has no val/ folder")
    return "validation = the dataset's own val/ split"


def dataset_lines(data: ClassificationData, *, source: str = "", val_fraction: float = 0.2,
                  seed: int = 0) -> list[str]:
    """The dataset part of the announcement, one string per line.

    Args:
        data: the discovered dataset.
        source: where it was read from (folder or CSV), for the first line.
        val_fraction, seed: how an automatic split was made (named when ``data`` was split).
    """
    train = Counter(s.label for s in data.train)
    val = Counter(s.label for s in data.val)
    where = f" from {source}" if source else ""
    lines = [f"dataset{where}: {len(data.classes)} classes, {len(data.train)} training and "
             f"{len(data.val)} validation images",
             f"  {_split_source(data, val_fraction, seed)}"]
    per_class = [f"{name} {train[i]}/{val[i]}" for i, name in enumerate(data.classes)]
    if len(per_class) > MAX_CLASSES_LISTED:
        counts = [train[i] for i in range(len(data.classes))]
        per_class = [*per_class[:MAX_CLASSES_LISTED], f"... ({len(per_class) - MAX_CLASSES_LISTED} more; "
                     f"training images per class {min(counts)}..{max(counts)})"]
    lines.append("  per class (train/val): " + ", ".join(per_class))
    if data.skipped:
        lines.append(f"  skipped {len(data.skipped)} unreadable file(s):")
        lines += [f"    {path}: {why}" for path, why in data.skipped[:MAX_SKIPPED_LISTED]]
        if len(data.skipped) > MAX_SKIPPED_LISTED:
            lines.append(f"    ... and {len(data.skipped) - MAX_SKIPPED_LISTED} more (all listed in metrics.json)")
    else:
        lines.append("  skipped: none (every file decoded)")
    return lines


def measure(model: Any, samples: Sequence[Sample], spec: PreprocessSpec, *, device: Any = "cpu",
            channels_last: bool = False, count: int = 8) -> tuple[float, float]:
    """Measured ``(seconds per image, set-up seconds per new batch shape)`` of decode + preprocessing + forward.

    The batch runs three times: the first call with a new batch shape also pays for kernel set-up (a
    second or more for the NHWC layout on a CPU), which the run pays again once for every batch shape it
    meets; the faster of the other two is the work (on a shared machine the slower one waited).
    """
    from edgetl.train.features import extract_features

    chosen = list(samples[:count])
    if not chosen:
        return 0.0, 0.0
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        extract_features(model, chosen, spec, batch_size=len(chosen), device=device, channels_last=channels_last)
        seconds.append(time.perf_counter() - started)
    work = min(seconds[1:])
    return work / len(chosen), max(0.0, seconds[0] - work)


def _shapes(images: int, batch: int) -> int:
    """Distinct batch sizes a pass over ``images`` in batches of ``batch`` meets (full batches, the rest)."""
    return int(images >= batch) + int(images % batch != 0)


def estimate_seconds(strategy: str, *, per_image: float, setup: float = 0.0, train_images: int, val_images: int,
                     epochs: int, steps: int | None = None, batch_size: int = 32) -> float:
    """Expected run time from the measured cost of one image and of one new batch shape (`measure`).

    Args:
        train_images, val_images: images per split.
        epochs: epochs still to run; ``steps`` (optimizer steps, when capped) shortens them.
        batch_size: the run's batch size (the linear probe encodes in batches of at least 64).
    """
    if strategy == "linear-probe":
        batch = max(batch_size, 64)
        shapes = _shapes(train_images, batch) + _shapes(val_images, batch)
        # the head's epochs on cached features are negligible next to one pass of the backbone
        return per_image * (train_images + val_images) + setup * shapes
    trained = epochs * train_images if steps is None else min(epochs * train_images, steps * batch_size)
    evaluations = epochs if steps is None else min(epochs, -(-trained // max(1, train_images)))
    # training batches meet new kernels in the forward and the backward pass
    shapes = 2 * _shapes(train_images, batch_size) + _shapes(val_images, 2 * batch_size)
    return per_image * (TRAIN_COST.get(strategy, 3.0) * trained + evaluations * val_images) + setup * shapes


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_line(*, strategy: str, epochs: int, train_images: int, batch_size: int, img_size: int,
              device: Any, seconds: float | None, max_steps: int | None = None) -> str:
    """The plan part of the announcement: images, epochs, steps and the estimated time."""
    steps_per_epoch = max(1, -(-train_images // batch_size))
    steps = epochs * steps_per_epoch if max_steps is None else min(epochs * steps_per_epoch, max_steps)
    what = ("backbone features computed once, then the head trains on them"
            if strategy == "linear-probe" else f"{train_images} images per epoch")
    estimate = "" if seconds is None else f"; estimated time about {format_duration(seconds)}"
    return (f"plan: {strategy}, {epochs} epoch(s), {steps} step(s) of batch {batch_size} at {img_size} px on "
            f"{device} ({what}){estimate}")


def announce(lines: Sequence[str]) -> None:
    for line in lines:
        log.info(line)
