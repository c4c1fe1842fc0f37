"""Torch dataset and collate function for detector training and evaluation.

Evaluation items are produced by `edgetl.preprocess.preprocess` itself, so the detector is scored on
exactly the pixels the deployed bundle sees. Training items start from the same letterbox and add the
random augmentations of `edgetl.detect.augment`.

Targets are one ``(M, 6)`` float32 tensor per image, rows ``[batch_idx, class, x1, y1, x2, y2]`` in
input (letterboxed) pixels; `collate_detections` fills ``batch_idx`` and concatenates them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edgetl.data.detection import DetSample
from edgetl.detect.augment import (
    AugmentConfig,
    TrainAugment,
    boxes_to_input,
    check_letterbox,
    letterbox,
    mosaic4,
    normalize_tensor,
)
from edgetl.preprocess import LetterboxInfo, PreprocessSpec, load_image, preprocess


def make_targets(boxes: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """``(M, 6)`` float32 rows ``[0, class, x1, y1, x2, y2]`` (batch index filled by the collate)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    targets = torch.zeros((len(boxes), 6), dtype=torch.float32)
    if len(boxes):
        targets[:, 1] = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        targets[:, 2:] = torch.from_numpy(boxes)
    return targets


class DetectionTorchDataset(Dataset):
    """Detection samples as model inputs and targets.

    Args:
        samples: `DetSample` list (from `edgetl.data.detection.load_detection_data`).
        spec: the model's preprocessing spec (must be ``resize="letterbox"``).
        train: training mode (augmentations apply when ``augment`` allows).
        augment: ``True``/``None`` (default config when ``train``), ``False`` (none), or an `AugmentConfig`.
        return_info: also return the image's `LetterboxInfo` (for mapping predictions back to
            original pixels during evaluation); `collate_detections` then returns a list of them.
    """

    def __init__(
        self,
        samples: Sequence[DetSample],
        spec: PreprocessSpec,
        train: bool,
        augment: bool | AugmentConfig | None = None,
        *,
        return_info: bool = False,
    ) -> None:
        check_letterbox(spec)
        self.samples = list(samples)
        self.spec = spec
        self.train = train
        if isinstance(augment, AugmentConfig):
            config: AugmentConfig | None = augment
        elif augment is False or not train:
            config = None
        else:
            config = AugmentConfig()
        self.augment_config = config
        self.augmenter = TrainAugment(spec, config) if config is not None else None
        self.return_info = return_info

    def __len__(self) -> int:
        return len(self.samples)

    def _eval_item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, LetterboxInfo]:
        sample = self.samples[index]
        chw, info = preprocess(sample.path, self.spec)
        assert info is not None
        return torch.from_numpy(chw), make_targets(boxes_to_input(sample.boxes, info), sample.labels), info

    def _train_item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, LetterboxInfo]:
        assert self.augmenter is not None and self.augment_config is not None
        sample = self.samples[index]
        image = load_image(sample.path)
        pixels, boxes, info = letterbox(image, sample.boxes, self.spec)
        labels = sample.labels
        if self.augment_config.mosaic > 0 and len(self) > 1 and torch.rand(()).item() < self.augment_config.mosaic:
            others = torch.randint(len(self), (3,)).tolist()
            parts = [(image, sample.boxes, sample.labels)]
            for j in others:
                s = self.samples[j]
                parts.append((load_image(s.path), s.boxes, s.labels))
            pixels, boxes, labels = mosaic4(parts, self.spec)
        pixels, boxes, labels = self.augmenter(pixels, boxes, labels)
        return normalize_tensor(pixels, self.spec), make_targets(boxes, labels), info

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image, targets, info = self._train_item(index) if self.augmenter is not None else self._eval_item(index)
        return (image, targets, info) if self.return_info else (image, targets)


def collate_detections(batch: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Stack images to ``(N, C, H, W)`` and concatenate targets to ``(sum M, 6)`` with ``batch_idx`` set.

    Items with a third element (`LetterboxInfo`) give a third output: the list of infos.
    """
    images = torch.stack([item[0] for item in batch])
    targets = []
    for i, item in enumerate(batch):
        t = item[1].clone()
        t[:, 0] = i
        targets.append(t)
    merged = torch.cat(targets) if targets else torch.zeros((0, 6))
    if batch and len(batch[0]) > 2:
        return images, merged, [item[2] for item in batch]
    return images, merged
