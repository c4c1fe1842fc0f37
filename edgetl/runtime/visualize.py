"""Draw detections on an image (``edgetl predict --save-vis``). PIL only, never torch."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgetl.preprocess import ImageSource, load_image

#: Distinct, readable box colours; class ``i`` uses ``PALETTE[i % len(PALETTE)]``.
PALETTE = (
    (255, 56, 56),
    (72, 249, 10),
    (0, 194, 255),
    (255, 178, 29),
    (207, 210, 49),
    (146, 204, 23),
    (61, 219, 134),
    (26, 147, 52),
    (0, 212, 187),
    (44, 153, 168),
    (52, 69, 147),
    (100, 115, 255),
    (132, 56, 255),
    (203, 56, 255),
    (255, 149, 200),
    (255, 55, 199),
)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_detections(
    image: ImageSource,
    result: Any,
    *,
    score_threshold: float = 0.0,
    line_width: int | None = None,
    show_scores: bool = True,
) -> Image.Image:
    """A copy of ``image`` with each detection's box and ``"label score"`` tag drawn on it.

    Args:
        image: anything `edgetl.preprocess.load_image` accepts (the ORIGINAL image: boxes are in its pixels).
        result: a `edgetl.runtime.detection.DetectionResult` (``boxes``, ``scores``, ``labels``, ``label_names``).
        score_threshold: skip detections scoring below this.
        line_width: box outline width; scales with the image by default.
        show_scores: append the score to the tag.
    """
    canvas = load_image(image).copy()
    width, height = canvas.size
    line = line_width or max(1, round(min(width, height) / 200))
    font = _font(max(10, round(min(width, height) / 40)))
    draw = ImageDraw.Draw(canvas)
    boxes = np.asarray(result.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(result.scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(result.labels, dtype=np.int64).reshape(-1)
    names = list(getattr(result, "label_names", []) or [str(int(v)) for v in labels])
    for i in np.argsort(scores, kind="stable"):  # best drawn last, on top
        if scores[i] < score_threshold:
            continue
        colour = PALETTE[int(labels[i]) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=colour, width=line)
        tag = f"{names[i]} {scores[i]:.2f}" if show_scores else names[i]
        left, top, right, bottom = draw.textbbox((0, 0), tag, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top edge
        tx = min(max(0.0, x1), max(0.0, width - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
        draw.text((tx + 2 - left, ty + 2 - top), tag, fill=_text_colour(colour), font=font)
    return canvas
