"""A torch ``Dataset`` over discovered `Sample`s that survives bad files mid-epoch.

Discovery (`edgetl.data.imagefolder`) already drops files that do not decode, but a file can still
change or break between discovery and its epoch (network shares, a disk filling up). Such an item
becomes a `BadItem`; `collate_skip_bad` drops it from the batch and hands it to the loop, which
records the file and reason in the run report instead of crashing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgetl.data.imagefolder import Sample
from edgetl.lazy import lazy_import
from edgetl.preprocess import DEFAULT_MAX_PIXELS, load_image

torch = lazy_import("torch", "train", purpose="training data loaders")
torch_data = lazy_import("torch.utils.data", "train", purpose="training data loaders")


@dataclass(frozen=True)
class BadItem:
    """An item that could not be loaded: which file and why."""

    path: str
    reason: str


class ImageDataset:
    """``(image tensor, label)`` pairs for a list of samples; bad files become `BadItem` values.

    Args:
        samples: the files and class indices.
        transform: PIL RGB image -> CHW tensor (`edgetl.data.transforms`).
        max_pixels: decode limit passed to `edgetl.preprocess.load_image`.
    """

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[[Any], Any], max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | BadItem:
        sample = self.samples[index]
        try:
            image = load_image(sample.path, max_pixels=self.max_pixels)
            return self.transform(image), sample.label
        except Exception as exc:  # one unreadable file must never end an epoch
            return BadItem(str(sample.path), f"{type(exc).__name__}: {exc}")


def collate_skip_bad(items: list[tuple[Any, int] | BadItem]) -> tuple[Any, Any, list[BadItem]]:
    """Stack the good items of a batch; return ``(images or None, labels or None, bad items)``."""
    good = [item for item in items if not isinstance(item, BadItem)]
    bad = [item for item in items if isinstance(item, BadItem)]
    if not good:
        return None, None, bad
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return images, labels, bad


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    generator: Any = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    sampler: Any = None,
) -> Any:
    """A ``DataLoader`` with the skipping collate and seeded shuffling (``generator``, or ``sampler``:
    a ``DistributedSampler`` under data-parallel training)."""
    return torch_data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skip_bad,
        generator=generator,
        sampler=sampler,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
