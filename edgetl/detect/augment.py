"""Letterboxing and box-aware training augmentations for the detector (torch side).

The geometry always starts from `edgetl.preprocess.resize_and_crop`, the same letterbox the runtime
uses, so evaluation pixels equal deployment pixels exactly and training pixels differ from them only
by the random augmentations. Those run on ``torchvision.transforms.v2`` with boxes as
``tv_tensors.BoundingBoxes``, so a flip, scale or shift moves the boxes with the pixels:

- random affine scale/translate (no rotation: boxes stay tight), borders filled with the pad value;
- horizontal flip;
- colour jitter (brightness, contrast, saturation, hue), as one affine colour map (`ColourJitter`);
- optional 4-image mosaic (each image letterboxed into one quadrant);
- boxes are clamped to the image and the ones smaller than ``min_box_size`` pixels are dropped.
"""

from __future__ import annotations

import math
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
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=c.min_box_size)]
        self.transform = v2.Compose(steps)
        # Colour moves no box: it runs after the geometry, as it did inside the v2 pipeline.
        jitter = ColourJitter(c.brightness, c.contrast, c.saturation, c.hue)
        self.colour = jitter if jitter.active else None

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
        image = out["image"].as_subclass(torch.Tensor)
        return (
            self.colour(image) if self.colour is not None else image,
            out["boxes"].as_subclass(torch.Tensor).numpy().astype(np.float32),
            out["labels"].numpy(),
        )


#: The grey that contrast and saturation blend towards: ITU-R 601 luma, as torchvision's ``rgb_to_grayscale``.
LUMA = (0.2989, 0.587, 0.114)


class ColourJitter:
    """Random brightness, contrast, saturation and hue, in a random order, applied as one affine colour map.

    The factors are drawn as torchvision's ``ColorJitter`` draws them (brightness, contrast and saturation uniform
    in ``[max(0, 1 - s), 1 + s]``, hue uniform in ``[-h, h]`` of a turn, the four in a random order), and each
    acts as it does there: brightness scales a pixel's RGB, contrast blends it with the image's mean grey,
    saturation with the pixel's own grey, and hue turns it about the grey axis. Each is affine in RGB, so their
    composition is one 3x3 matrix and an offset, applied to the image in one pass and rounded and clipped once.

    Why not torchvision's own: on a uint8 image it rounds and clips after every step and converts every pixel to
    HSV and back for the hue. With it, the whole augmentation of a 256-px training image of the shapes sample took
    8.5 ms on one thread; with this map 3.9 ms (`benchmarks/train_throughput.py`, ``augment``: 2.2x), and the
    default detector recipe trained 1.04x as many images per second. Brightness, contrast and saturation
    differ from torchvision's by its per-step truncation to uint8 (at most one level where nothing clips). The
    hue differs in kind: HSV keeps each pixel's largest and smallest channel and moves the middle one, a turn
    keeps its mean and chroma and moves all three. For a shift of 0.015 of a turn (the default) on a saturated
    test image, the two moves point the same way (cosine 0.78) and are of a size (0.8x), a few levels each; both
    are the small hue change the augmentation asks for.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> None:
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if value < 0:
                raise BadInputError(f"colour jitter: {name} must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise BadInputError(f"colour jitter: hue must be within [0, 0.5] of a turn, got {hue}")
        self.strengths = (brightness, contrast, saturation, hue)

    @property
    def active(self) -> bool:
        return max(self.strengths) > 0

    def draw(self) -> list[tuple[str, float]]:
        """The steps of one random colour map, in order, each with its factor (hue: a fraction of a turn)."""
        steps = []
        for index in torch.randperm(4).tolist():
            strength = self.strengths[index]
            if strength <= 0:
                continue
            if index == 3:
                steps.append(("hue", float(torch.empty(1).uniform_(-strength, strength))))
            else:
                name = ("brightness", "contrast", "saturation")[index]
                steps.append((name, float(torch.empty(1).uniform_(max(0.0, 1.0 - strength), 1.0 + strength))))
        return steps

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Jitter a uint8 ``(3, H, W)`` image."""
        if pixels.shape[0] != 3:
            raise BadInputError(f"colour jitter needs an RGB image, got {pixels.shape[0]} channel(s)")
        matrix, offset = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        flat = pixels.reshape(3, -1).to(torch.float32)
        mean = flat.mean(dim=1, dtype=torch.float64)
        luma = torch.tensor(LUMA, dtype=torch.float64)
        for name, factor in self.draw():
            step, shift = colour_step(name, factor)
            if name == "contrast":  # towards the mean grey of the image as the earlier steps left it
                shift = (1.0 - factor) * float(luma @ (matrix @ mean + offset)) * torch.ones(3, dtype=torch.float64)
            matrix, offset = step @ matrix, step @ offset + shift
        out = torch.addmm(offset.to(torch.float32)[:, None], matrix.to(torch.float32), flat)
        return out.clamp_(0.0, 255.0).round_().to(torch.uint8).reshape(pixels.shape)


def colour_step(name: str, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One jitter step as ``(matrix, offset)`` on RGB: ``rgb -> matrix @ rgb + offset`` (contrast's offset, which
    depends on the image, is left to the caller)."""
    eye, zero = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    if name in ("brightness", "contrast"):
        return factor * eye, zero
    if name == "saturation":
        grey = torch.tensor(LUMA, dtype=torch.float64)[None, :].expand(3, 3)
        return factor * eye + (1.0 - factor) * grey, zero
    if name == "hue":  # Rodrigues' rotation about the grey axis; a positive turn moves red towards green
        angle = 2.0 * math.pi * factor
        cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], dtype=torch.float64) / math.sqrt(3)
        along = torch.full((3, 3), 1.0 / 3.0, dtype=torch.float64)  # the axis' outer product with itself
        return math.cos(angle) * eye + math.sin(angle) * cross + (1.0 - math.cos(angle)) * along, zero
    raise ValueError(f"unknown colour step {name!r}")
