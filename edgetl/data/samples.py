"""Sample datasets generated from data that ships with installed packages (nothing is downloaded).

``fashion``: 1,300 Fashion-MNIST images (Zalando Research, MIT licence) shipped inside edgetl as
``edgetl/data/assets/fashion_mnist_sample.npz``: 100 training and 30 validation images per class, a seeded
choice from the official training split (`scripts/make_fashion_sample.py` regenerates it; provenance in
``assets/fashion_mnist.md``). Real photographs of real products, small enough to fine-tune on a laptop CPU
in seconds: the demo's and the transfer benchmark's dataset.

``digits``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upscaled to RGB images with a
seeded ink/paper colour and a small random placement, in ImageFolder layout. Small, real, and hard
enough that a pretrained backbone visibly beats training from scratch at 10 images per class.
"""

from __future__ import annotations

import random
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

sk_datasets = lazy_import("sklearn.datasets", "train", purpose="the digits sample")

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
#: Fashion-MNIST class names in label order (0 = T-shirt/top ... 9 = ankle boot), as folder names.
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
FASHION_ASSET = "fashion_mnist_sample.npz"


def load_fashion_asset() -> dict[str, np.ndarray]:
    """The shipped Fashion-MNIST subset: ``images`` [N, 28, 28] uint8, ``labels``, ``indices``, ``split``."""
    asset = resources.files("edgetl.data").joinpath("assets", FASHION_ASSET)
    with resources.as_file(asset) as path:
        if not path.is_file():
            raise BadInputError(f"the Fashion-MNIST sample is missing from this installation ({path})",
                                hint="reinstall edgetl, or run scripts/make_fashion_sample.py in a checkout")
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in ("images", "labels", "indices", "split")}


def fashion_shipped_counts(asset: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """Images per class shipped for each split (the same for every class)."""
    asset = load_fashion_asset() if asset is None else asset
    first = asset["labels"] == 0
    return {"train": int(np.sum(first & (asset["split"] == 0))), "val": int(np.sum(first & (asset["split"] == 1)))}


def write_fashion(
    out_dir: str | Path,
    *,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    size: int = 28,
    overwrite: bool = True,
) -> dict:
    """Write the shipped Fashion-MNIST subset as ``out_dir/{train,val}/<class name>/<index>.png``.

    Images are 8-bit grayscale PNGs (the preprocessing converts them to RGB); file names are the images'
    indices in the official training split. Smaller counts take the first images of each class in the
    asset's (seeded) order, so a 10-per-class sample is contained in the 50-per-class one and every
    run with the same arguments writes the same files.

    Args:
        train_per_class: training images per class (None: all shipped, 100).
        val_per_class: validation images per class (None: all shipped, 30).
        size: output side in pixels; 28 keeps the originals, larger sizes upscale (bicubic).
        overwrite: replace an existing sample in ``out_dir`` (writes go to a temp dir, then rename).

    Raises:
        BadInputError: more images per class than shipped, counts below 1, or ``size`` below 8.
    """
    asset = load_fashion_asset()
    shipped = fashion_shipped_counts(asset)
    wanted = {"train": shipped["train"] if train_per_class is None else train_per_class,
              "val": shipped["val"] if val_per_class is None else val_per_class}
    for split, count in wanted.items():
        if not 1 <= count <= shipped[split]:
            raise BadInputError(
                f"{count} {split} images per class requested; the Fashion-MNIST sample ships {shipped[split]}",
                hint=f"choose 1..{shipped[split]} {split} images per class",
            )
    if size < 8:
        raise BadInputError(f"image size {size} px is too small", hint="use 8 px or more (28 keeps the originals)")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BadInputError(f"{out_dir} exists; pass --overwrite to replace it")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"train": 0, "val": 0}
    for split_id, split in enumerate(("train", "val")):
        for label, name in enumerate(FASHION_NAMES):
            chosen = np.flatnonzero((asset["labels"] == label) & (asset["split"] == split_id))[: wanted[split]]
            folder = tmp / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for row in chosen:
                image = Image.fromarray(asset["images"][row], "L")
                if size != image.width:
                    image = image.resize((size, size), Image.Resampling.BICUBIC)
                image.save(folder / f"{int(asset['indices'][row]):05d}.png")
                counts[split] += 1
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return {"path": str(out_dir), "classes": len(FASHION_NAMES), "size": size,
            **{f"{k}_images": v for k, v in counts.items()}}


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
    digits = sk_datasets.load_digits()
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
