"""Letterboxing and box-aware training augmentations for the detector (torch side).

The geometry always starts from `edgetl.preprocess.resize_and_crop`, the same letterbox the runtime
uses, so evaluation pixels equal deployment pixels exactly and training pixels differ from them only
by the random augmentations. Those run on ``torchvision.transforms.v2`` with boxes as
``tv_tensors.BoundingBoxes``, so a flip, scale or shift moves the boxes with the pixels:

- random affine scale/translate (no rotation: boxes stay tight), borders filled with the pad value;
- horizontal flip;
- colour jitter (brightness, contrast, saturation, hue);
- optional 4-image mosaic (each image letterboxed into one quadrant);
- boxes are clamped to the image and the ones smaller than ``min_box_size`` pixels are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from edgetl.errors import BadInputError
from edgetl.preprocess import LetterboxInfo, PreprocessSpec, resize_and_crop


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each training augmentation; 0 disables one.

    Args:
        hflip: probability of a horizontal flip.
        scale: range of the random zoom factor.
        translate: maximum shift as a fraction of the input size.
        brightness, contrast, saturation, hue: ``ColorJitter`` strengths.
        mosaic: probability of a 4-image mosaic.
        min_box_size: boxes narrower or shorter than this (input pixels) after augmentation are dropped.
    """

    hflip: float = 0.5
    scale: tuple[float, float] = (0.6, 1.4)
    translate: float = 0.1
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.4
    hue: float = 0.015
    mosaic: float = 0.0
    min_box_size: float = 2.0


def check_letterbox(spec: PreprocessSpec) -> None:
    if spec.resize != "letterbox":
        raise BadInputError(
            f"detectors need resize='letterbox' preprocessing, got {spec.resize!r}",
            hint="build the spec with resize='letterbox' (the detector's default)",
        )


def letterbox(
    image: Image.Image, boxes: np.ndarray, spec: PreprocessSpec
) -> tuple[torch.Tensor, np.ndarray, LetterboxInfo]:
    """Letterbox one image exactly as `edgetl.preprocess` does; map its boxes into input pixels.

    Returns:
        ``(uint8 CHW tensor, boxes (M, 4) float32 in input pixels, LetterboxInfo)``.
    """
    check_letterbox(spec)
    resized, info = resize_and_crop(image, spec)
    assert info is not None
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return pixels, boxes_to_input(boxes, info), info


def boxes_to_input(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Original-pixel xyxy boxes -> letterboxed input pixels (inverse of the runtime's un-letterbox)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.float32(info.scale)
    out[:, 0::2] += info.pad_x
    out[:, 1::2] += info.pad_y
    return out


def normalize_tensor(pixels: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 ``(C, H, W)`` -> float32 normalised, bit-identical to `edgetl.preprocess.normalize`."""
    x = pixels.to(torch.float32) * torch.tensor(spec.scale, dtype=torch.float32)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def mosaic4(
    parts: list[tuple[Image.Image, np.ndarray, np.ndarray]], spec: PreprocessSpec
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Four images, each letterboxed into one quadrant of the input: ``(uint8 CHW, boxes, labels)``."""
    h, w = spec.size
    canvas = torch.full((3, h, w), spec.pad_value, dtype=torch.uint8)
    quads = [(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]
    all_boxes, all_labels = [], []
    for (image, boxes, labels), (top, left) in zip(parts, quads):
        qh = h // 2 if top == 0 else h - h // 2
        qw = w // 2 if left == 0 else w - w // 2
        pixels, in_boxes, _ = letterbox(image, boxes, spec.with_size((qh, qw)))
        canvas[:, top : top + qh, left : left + qw] = pixels
        in_boxes[:, 0::2] += left
        in_boxes[:, 1::2] += top
        all_boxes.append(in_boxes)
        all_labels.append(np.asarray(labels, dtype=np.int64))
    return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_labels)


class TrainAugment:
    """Random geometric + colour augmentation of a letterboxed uint8 image and its boxes.

    Args:
        spec: the model's preprocessing spec (input size, pad value).
        config: augmentation strengths.
    """

    def __init__(self, spec: PreprocessSpec, config: AugmentConfig | None = None) -> None:
        check_letterbox(spec)
        self.spec = spec
        self.config = config or AugmentConfig()
        c = self.config
        steps: list[v2.Transform] = []
        if c.scale != (1.0, 1.0) or c.translate > 0:
            steps.append(
                v2.RandomAffine(
                    degrees=0.0,
                    translate=(c.translate, c.translate) if c.translate > 0 else None,
                    scale=c.scale,
                    fill={tv_tensors.Image: spec.pad_value, "others": 0},
                )
            )
        if c.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(c.hflip))
        if max(c.brightness, c.contrast, c.saturation, c.hue) > 0:
            steps.append(
                v2.ColorJitter(
                    brightness=c.brightness or None,
                    contrast=c.contrast or None,
                    saturation=c.saturation or None,
                    hue=c.hue or None,
                )
            )
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=c.min_box_size)]
        self.transform = v2.Compose(steps)

    def __call__(
        self, pixels: torch.Tensor, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Augment one letterboxed image: ``(uint8 CHW, boxes (M, 4) input pixels, labels)``."""
        h, w = pixels.shape[-2:]
        sample = {
            "image": tv_tensors.Image(pixels),
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)), format="XYXY", canvas_size=(h, w)
            ),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        }
        out = self.transform(sample)
        return (
            out["image"].as_subclass(torch.Tensor),
            out["boxes"].as_subclass(torch.Tensor).numpy().astype(np.float32),
            out["labels"].numpy(),
        )
