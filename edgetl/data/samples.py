"""Sample datasets generated from data that ships with installed packages (nothing is downloaded).

``digits``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upscaled to RGB images with a
seeded ink/paper colour and a small random placement, in ImageFolder layout. Small, real, and hard
enough that a pretrained backbone visibly beats training from scratch at 10 images per class.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from edgetl.errors import BadInputError, optional_import

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _render_digit(pixels: np.ndarray, size: int, rng: random.Random) -> Image.Image:
    grey = (pixels.reshape(8, 8) / 16.0).astype(np.float32)
    paper = np.array([rng.randint(170, 255) for _ in range(3)], dtype=np.float32)
    ink = np.array([rng.randint(0, 90) for _ in range(3)], dtype=np.float32)
    rgb = paper[None, None, :] * (1 - grey[..., None]) + ink[None, None, :] * grey[..., None]
    glyph_size = int(size * rng.uniform(0.65, 0.9))
    glyph = Image.fromarray(rgb.astype(np.uint8), "RGB").resize((glyph_size, glyph_size), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in paper))
    offset = size - glyph_size
    canvas.paste(glyph, (rng.randint(0, offset), rng.randint(0, offset)))
    return canvas


def write_digits(
    out_dir: str | Path,
    *,
    train_per_class: int | None = None,
    val_per_class: int = 30,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = True,
) -> dict:
    """Write the digits sample as ``out_dir/{train,val}/<digit name>/*.png``.

    Args:
        train_per_class: cap on training images per class (None: all that remain after val).
        val_per_class: validation images per class, drawn first with the seed.
        size: output image side in pixels.
        overwrite: replace an existing sample in ``out_dir`` (writes go to a temp dir, then rename).
    """
    datasets = optional_import("sklearn.datasets", "train", purpose="the digits sample")
    digits = datasets.load_digits()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BadInputError(f"{out_dir} exists; pass --overwrite to replace it")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {d: [] for d in range(10)}
    for index, target in enumerate(digits.target):
        by_class[int(target)].append(index)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"train": 0, "val": 0}
    for digit, indices in by_class.items():
        rng.shuffle(indices)
        val_idx = indices[:val_per_class]
        train_idx = indices[val_per_class:]
        if train_per_class is not None:
            train_idx = train_idx[:train_per_class]
        for split, chosen in (("train", train_idx), ("val", val_idx)):
            folder = tmp / split / DIGIT_NAMES[digit]
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                _render_digit(digits.images[index], size, rng).save(folder / f"{index:04d}.png")
                counts[split] += 1
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return {"path": str(out_dir), "classes": 10, **{f"{k}_images": v for k, v in counts.items()}}
