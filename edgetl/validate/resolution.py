"""Can a gate's limit be resolved on this many images?

On n images one image moves top-1 accuracy by 100/n points and agreement by 1/n. A 0.5-point top-1
limit checked on 12 images (one image = 8.3 points) passes only when not a single image changes, and
says nothing about a 0.5-point drop; the gate looks strict and is noise. These checks say how many
images each limit needs, so that the validation can warn before anyone trusts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Resolution:
    """One limit that the image count cannot resolve.

    Args:
        option: the CLI option that set the limit (``--max-top1-drop``).
        limit: its value.
        images: images the gate ran on.
        step: how much one image moves the metric, in the limit's unit.
        needed: the fewest images on which one image moves the metric by no more than the limit.
        unit: of ``limit`` and ``step`` (``points`` or empty for a fraction).
    """

    option: str
    limit: float
    images: int
    step: float
    needed: int
    unit: str = ""

    def message(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return (f"{self.option} {self.limit:g}{unit} cannot be resolved on {self.images} images: one image moves "
                f"it by {self.step:.3g}{unit}; the limit needs at least {self.needed} images (pass --data with more)")

    def to_dict(self) -> dict[str, float | int | str]:
        return {"option": self.option, "limit": self.limit, "images": self.images, "step": self.step,
                "needed": self.needed}


def unresolved_limits(images: int, *, max_top1_drop: float | None = None,
                      min_agreement: float | None = None) -> list[Resolution]:
    """The classification limits finer than one image of ``images``.

    Args:
        images: images the gate was computed on.
        max_top1_drop: top-1 drop limit in points (0 demands no drop at all, which any count resolves).
        min_agreement: top-1 agreement limit as a fraction (1.0 demands full agreement, likewise).

    Returns:
        One `Resolution` per limit that needs more images; empty when every limit can be resolved.
    """
    found = []
    if images <= 0:
        return found
    if max_top1_drop is not None and max_top1_drop > 0:
        needed = _fewest(100.0 / max_top1_drop)
        if images < needed:
            found.append(Resolution("--max-top1-drop", max_top1_drop, images, 100.0 / images, needed, "points"))
    if min_agreement is not None and 0 < min_agreement < 1:
        needed = _fewest(1.0 / (1.0 - min_agreement))
        if images < needed:
            found.append(Resolution("--min-agreement", min_agreement, images, 1.0 / images, needed))
    return found


def _fewest(ratio: float) -> int:
    # 100 / 0.5 is 200 exactly; float noise must not turn it into 201.
    return max(1, math.ceil(ratio - 1e-9))
