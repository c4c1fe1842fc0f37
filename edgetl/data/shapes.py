"""The ``shapes`` sample: a generated detection dataset on real-photo backgrounds, in YOLO layout.

Backgrounds are random crops of the photographs that ship inside scikit-image (``skimage.data``:
astronaut, coffee, chelsea, rocket, the Hubble deep field, ...; only files in the wheel, nothing is
downloaded). On each, 1-5 filled shapes (circle, square, triangle, star, hexagon) are drawn with a
random size, colour and rotation; they may overlap but never hide more than about half of an earlier
shape. Boxes are the exact pixel bounds of what was drawn. Image ``i`` of a split depends only on
``(seed, split, i)``, so a larger sample extends a smaller one.
"""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from edgetl import lazy
from edgetl.errors import BadInputError
from edgetl.fileio import write_text
from edgetl.lazy import lazy_import

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "hexagon"]
#: skimage.data loaders whose images are inside the scikit-image wheel (checked offline).
BACKGROUND_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "grass",
    "gravel",
    "brick",
)

skimage_data = lazy_import("skimage.data", "dev", purpose="the shapes sample backgrounds")
MAX_OBJECTS = 5
ASPECTS = (1.0, 0.75, 4 / 3)  # height / width of the generated images


@functools.lru_cache(maxsize=1)
def load_backgrounds() -> tuple[np.ndarray, ...]:
    """The background photos as read-only HxWx3 uint8 arrays (grey ones replicated to RGB).

    Cached: decoding them takes seconds, and a process often writes several samples.
    """
    data = lazy.load(skimage_data)
    photos = []
    for name in BACKGROUND_PHOTOS:
        try:
            image = np.asarray(getattr(data, name)())
        except Exception:  # a build without that file: use the others
            continue
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photo = np.ascontiguousarray(image[..., :3].astype(np.uint8))
        photo.setflags(write=False)
        photos.append(photo)
    if not photos:
        raise BadInputError("no scikit-image sample photos could be loaded for the shapes backgrounds")
    return tuple(photos)


def _background(photos: tuple[np.ndarray, ...], width: int, height: int, rng: np.random.Generator) -> Image.Image:
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    frac = rng.uniform(0.35, 1.0)
    ch = max(8, int(min(ph, pw * height / width) * frac))
    cw = max(8, int(ch * width / height))
    cw, ch = min(cw, pw), min(ch, ph)
    top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[top : top + ch, left : left + cw])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((width, height), Image.Resampling.BILINEAR)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        radii, n = [r], 4
    elif kind == "triangle":
        radii, n = [r], 3
    elif kind == "hexagon":
        radii, n = [r], 6
    else:  # star: alternate outer and inner radius
        radii, n = [r, r * 0.45], 10
    return [
        (
            cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / n),
            cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _contrasting_colour(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    mean = region.reshape(-1, 3).mean(axis=0) if region.size else np.full(3, 127.0)
    best, best_dist = None, -1.0
    for _ in range(12):
        colour = rng.integers(0, 256, size=3)
        dist = float(np.abs(colour - mean).sum())
        if dist > best_dist:
            best, best_dist = colour, dist
        if dist > 220:
            break
    return tuple(int(v) for v in best)  # type: ignore[return-value]


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, colour: tuple[int, int, int]
) -> np.ndarray:
    """Draw one filled shape; return its box as drawn (PIL fills pixels whose centres are inside)."""
    if kind == "circle":
        box = (round(cx - r), round(cy - r), round(cx + r), round(cy + r))
        draw.ellipse(box, fill=colour)
        return np.array([box[0], box[1], box[2] + 1, box[3] + 1], dtype=np.float64)
    points = [(round(x), round(y)) for x, y in _polygon(kind, cx, cy, r, angle)]
    draw.polygon(points, fill=colour)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return np.array([min(xs), min(ys), max(xs) + 1, max(ys) + 1], dtype=np.float64)


def _covered_fraction(new: np.ndarray, old: np.ndarray) -> float:
    ix = max(0.0, min(new[2], old[2]) - max(new[0], old[0]))
    iy = max(0.0, min(new[3], old[3]) - max(new[1], old[1]))
    area = (old[2] - old[0]) * (old[3] - old[1])
    return ix * iy / area if area > 0 else 1.0


def render_shapes_image(
    photos: tuple[np.ndarray, ...], size: int, rng: np.random.Generator
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """One image: ``(PIL image, boxes (M, 4) xyxy pixels, labels (M,))``."""
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    width, height = (size, max(16, round(size * aspect))) if aspect <= 1 else (max(16, round(size / aspect)), size)
    image = _background(photos, width, height, rng)
    pixels = np.asarray(image)
    draw = ImageDraw.Draw(image)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    short = min(width, height)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(20):
            r = rng.uniform(0.06, 0.22) * short
            r = max(r, 4.0)
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            kind_index = int(rng.integers(len(SHAPE_CLASSES)))
            kind = SHAPE_CLASSES[kind_index]
            angle = rng.uniform(0, 2 * math.pi)
            pts = np.array(
                [[cx - r, cy - r], [cx + r, cy + r]] if kind == "circle" else _polygon(kind, cx, cy, r, angle)
            )
            guess = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1])
            if all(_covered_fraction(guess, old) < 0.45 for old in boxes):
                x1, y1, x2, y2 = (int(np.clip(v, 0, lim)) for v, lim in zip(guess, (width, height, width, height)))
                colour = _contrasting_colour(pixels[y1:y2, x1:x2], rng)
                box = _draw_shape(draw, kind, cx, cy, r, angle, colour)
                box[0::2] = np.clip(box[0::2], 0, width)
                box[1::2] = np.clip(box[1::2], 0, height)
                boxes.append(box)
                labels.append(kind_index)
                break
    return image, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def write_shapes(
    out_dir: str | Path,
    *,
    n_train: int = 200,
    n_val: int = 50,
    size: int = 256,
    seed: int = 0,
    overwrite: bool = True,
) -> dict:
    """Write the shapes sample as a YOLO dataset: ``out_dir/data.yaml``, ``images/{train,val}``, ``labels/...``.

    Args:
        n_train, n_val: number of images per split.
        size: the long side of each image in pixels (images are square, 4:3 or 3:4).
        seed: everything is a function of the seed.
        overwrite: replace an existing sample (built under a temporary name, then renamed).

    Returns:
        a summary: path of data.yaml, classes, images and boxes per split.
    """
    if n_train < 1 or n_val < 0:
        raise BadInputError(f"need n_train >= 1 and n_val >= 0, got {n_train}, {n_val}")
    if size < 32:
        raise BadInputError(f"size must be at least 32 pixels, got {size}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BadInputError(f"{out_dir} exists; pass --overwrite to replace it")
    photos = load_backgrounds()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, int] = {}
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
        (tmp / "labels" / split).mkdir(parents=True, exist_ok=True)
        n_boxes = 0
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            image, boxes, labels = render_shapes_image(photos, size, rng)
            name = f"{split}_{i:05d}"
            image.save(tmp / "images" / split / f"{name}.png", optimize=False)
            w, h = image.size
            lines = [
                f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for (x1, y1, x2, y2), c in zip(boxes, labels)
            ]
            write_text(tmp / "labels" / split / f"{name}.txt", "\n".join(lines) + "\n")
            n_boxes += len(labels)
        counts[f"{split}_images"] = n
        counts[f"{split}_boxes"] = n_boxes
    config = {"train": "images/train", "val": "images/val", "nc": len(SHAPE_CLASSES), "names": SHAPE_CLASSES}
    if n_val == 0:
        config.pop("val")
    write_text(tmp / "data.yaml", yaml.safe_dump(config, sort_keys=False))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return {"path": str(out_dir / "data.yaml"), "classes": list(SHAPE_CLASSES), "size": size, "seed": seed, **counts}
