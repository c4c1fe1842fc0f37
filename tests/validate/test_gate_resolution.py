"""How many images a gate's limits need: one image moves top-1 by 100/n points and agreement by 1/n."""

from __future__ import annotations

import pytest

from edgetl.validate.resolution import unresolved_limits


def test_limits_finer_than_one_image_are_reported_with_the_images_they_need() -> None:
    drop, agreement = unresolved_limits(12, max_top1_drop=0.5, min_agreement=0.99)
    assert (drop.option, drop.needed, drop.unit) == ("--max-top1-drop", 200, "points")
    assert drop.step == pytest.approx(100 / 12)
    assert (agreement.option, agreement.needed) == ("--min-agreement", 100)
    assert "needs at least 200 images" in drop.message() and "12 images" in drop.message()
    assert "8.33 points" in drop.message()


@pytest.mark.parametrize(("images", "drop", "agreement", "options"), [
    (200, 0.5, 0.99, []),  # exactly enough: one image is 0.5 points, 0.005 of agreement
    (199, 0.5, None, ["--max-top1-drop"]),
    (99, None, 0.99, ["--min-agreement"]),
    (12, 0.0, 1.0, []),  # "no change at all" is decided on any number of images
    (300, 1 / 3, None, []),  # 100 / (1/3) is 300 despite float rounding
    (0, 0.5, 0.99, []),  # nothing was validated: nothing to say about resolution
])
def test_resolution_edges(images: int, drop: float | None, agreement: float | None, options: list[str]) -> None:
    assert [r.option for r in unresolved_limits(images, max_top1_drop=drop, min_agreement=agreement)] == options
