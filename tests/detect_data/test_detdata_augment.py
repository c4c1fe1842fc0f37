"""The torch side: eval pixels equal edgetl.preprocess exactly; augmentations move boxes with the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetl.data.detection import DetSample, load_detection_data  # noqa: E402
from edgetl.detect.augment import AugmentConfig, TrainAugment, letterbox, mosaic4  # noqa: E402
from edgetl.detect.dataset import DetectionTorchDataset, collate_detections  # noqa: E402
from edgetl.preprocess import PreprocessSpec, preprocess  # noqa: E402

SPEC = PreprocessSpec(size=(64, 80), resize="letterbox", interpolation="bilinear")
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _canvas_with_rectangles(h: int, w: int, boxes: list[list[int]]) -> torch.Tensor:
    pixels = torch.full((3, h, w), SPEC.pad_value, dtype=torch.uint8)
    for (x1, y1, x2, y2), colour in zip(boxes, COLOURS):
        pixels[:, y1:y2, x1:x2] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    return pixels


def _extent(pixels: torch.Tensor, colour: tuple[int, int, int]) -> np.ndarray | None:
    mask = (pixels == torch.tensor(colour, dtype=torch.uint8)[:, None, None]).all(0).numpy()
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def test_eval_items_are_exactly_the_runtime_pixels(shapes_dir: Path) -> None:
    data = load_detection_data(shapes_dir / "data.yaml")
    dataset = DetectionTorchDataset(data.val, SPEC, train=False, return_info=True)
    for i, sample in enumerate(data.val):
        image, targets, info = dataset[i]
        expected, expected_info = preprocess(sample.path, SPEC)
        assert torch.equal(image, torch.from_numpy(expected))  # bit-identical
        assert info == expected_info
        boxes = targets[:, 2:].numpy()
        np.testing.assert_allclose(
            (boxes - [info.pad_x, info.pad_y, info.pad_x, info.pad_y]) / info.scale, sample.boxes, atol=1e-3
        )
        np.testing.assert_array_equal(targets[:, 1].numpy(), sample.labels)
    # train mode without augmentation uses the same letterbox; normalisation is bit-identical too
    plain = DetectionTorchDataset(
        data.val,
        SPEC,
        train=True,
        augment=AugmentConfig(hflip=0, scale=(1.0, 1.0), translate=0, brightness=0, contrast=0, saturation=0, hue=0),
    )
    assert torch.equal(plain[0][0], torch.from_numpy(preprocess(data.val[0].path, SPEC)[0]))


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(hflip=1.0, scale=(1.0, 1.0), translate=0.0, brightness=0, contrast=0, saturation=0, hue=0),
        AugmentConfig(hflip=0.0, scale=(0.5, 1.5), translate=0.2, brightness=0, contrast=0, saturation=0, hue=0),
        AugmentConfig(hflip=0.5, scale=(0.7, 1.3), translate=0.1, brightness=0, contrast=0, saturation=0, hue=0),
    ],
    ids=["flip", "scale-translate", "all-geometric"],
)
def test_boxes_follow_filled_rectangles(config: AugmentConfig) -> None:
    boxes = [[4, 6, 20, 30], [30, 10, 50, 22], [55, 35, 76, 60]]
    augment = TrainAugment(SPEC, config)
    torch.manual_seed(0)
    checked = 0
    for _ in range(20):
        pixels = _canvas_with_rectangles(64, 80, boxes)
        out, out_boxes, labels = augment(pixels, np.array(boxes, dtype=np.float32), np.array([0, 1, 2]))
        for box, label in zip(out_boxes, labels):
            extent = _extent(out, COLOURS[label])
            assert extent is not None
            # nearest-neighbour resampling: the drawn rectangle and the box agree within a pixel
            np.testing.assert_allclose(box, extent, atol=1.01)
            checked += 1
    assert checked >= 30


def test_flip_mirrors_boxes_exactly() -> None:
    config = AugmentConfig(hflip=1.0, scale=(1.0, 1.0), translate=0.0, brightness=0, contrast=0, saturation=0, hue=0)
    pixels = _canvas_with_rectangles(64, 80, [[4, 6, 20, 30]])
    out, out_boxes, _ = TrainAugment(SPEC, config)(pixels, np.array([[4, 6, 20, 30]], np.float32), np.array([0]))
    np.testing.assert_array_equal(out_boxes, [[60, 6, 76, 30]])
    assert torch.equal(out, pixels.flip(-1))


def test_colour_jitter_keeps_geometry(shapes_dir: Path) -> None:
    data = load_detection_data(shapes_dir / "data.yaml")
    config = AugmentConfig(hflip=0, scale=(1.0, 1.0), translate=0.0, brightness=0.4, contrast=0.4, saturation=0.4)
    dataset = DetectionTorchDataset(data.train, SPEC, train=True, augment=config)
    eval_set = DetectionTorchDataset(data.train, SPEC, train=False)
    torch.manual_seed(1)
    image, targets = dataset[0]
    ref_image, ref_targets = eval_set[0]
    torch.testing.assert_close(targets, ref_targets)
    assert not torch.equal(image, ref_image)


def test_mosaic_places_boxes_in_quadrants(tmp_path: Path) -> None:
    from PIL import Image

    parts = []
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        arr = np.zeros((40, 40, 3), dtype=np.uint8)
        arr[10:30, 5:25] = colour
        parts.append((Image.fromarray(arr), np.array([[5, 10, 25, 30]], np.float32), np.array([k])))
    spec = PreprocessSpec(size=(64, 64), resize="letterbox", interpolation="nearest")
    pixels, boxes, labels = mosaic4(parts, spec)
    assert pixels.shape == (3, 64, 64)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
    for box, (_, _, _), colour in zip(boxes, parts, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        np.testing.assert_allclose(box, _extent(pixels, colour), atol=1.01)


def test_letterbox_matches_preprocess_geometry() -> None:
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 90, 3), dtype=np.uint8))
    _, boxes, info = letterbox(image, np.array([[0, 0, 90, 30]], np.float32), SPEC)
    _, ref_info = preprocess(image, SPEC)
    assert info == ref_info
    np.testing.assert_allclose(
        boxes, [[info.pad_x, info.pad_y, info.pad_x + 90 * info.scale, info.pad_y + 30 * info.scale]]
    )


def test_collate_sets_batch_index(shapes_dir: Path) -> None:
    data = load_detection_data(shapes_dir / "data.yaml")
    dataset = DetectionTorchDataset(data.train[:3], SPEC, train=True, augment=AugmentConfig(mosaic=1.0))
    torch.manual_seed(0)
    images, targets = collate_detections([dataset[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 80) and images.dtype == torch.float32
    assert targets.shape[1] == 6 and set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0}
    assert (targets[:, 4] > targets[:, 2]).all() and (targets[:, 4] <= 80).all() and (targets[:, 5] <= 64).all()
    empty = DetectionTorchDataset([DetSample(data.train[0].path, np.zeros((0, 4)), np.zeros(0))], SPEC, train=False)
    images, targets = collate_detections([empty[0]])
    assert targets.shape == (0, 6)


def _mid_range_photo() -> torch.Tensor:
    """A smooth, colourful 48x64 image kept within [40, 215], so no jitter step below clips."""
    ys, xs = np.mgrid[0:48, 0:64].astype(np.float32)
    rgb = np.stack([128 + 80 * np.sin(xs / 9), 128 + 80 * np.cos(ys / 7), 128 + 80 * np.sin((xs + ys) / 11)])
    return torch.from_numpy(np.round(rgb).astype(np.uint8))


@pytest.mark.parametrize(("name", "factor"), [("brightness", 1.2), ("contrast", 0.75), ("saturation", 1.3),
                                              ("hue", 0.015), ("hue", -0.015)])
def test_each_colour_step_matches_torchvision(name: str, factor: float) -> None:
    """Alone and unclipped, each step of the one-pass map is torchvision's own within its per-step rounding; the hue,
    a turn about the grey axis where torchvision moves along HSV's hexagon, moves the pixels alike (direction and
    size), not equally."""
    from torchvision.transforms.v2 import functional as F

    from edgetl.detect.augment import ColourJitter

    pixels = _mid_range_photo()
    strengths = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    strengths[name] = abs(factor - 1) if name != "hue" else abs(factor)
    jitter = ColourJitter(**strengths)
    jitter.draw = lambda: [(name, factor)]  # type: ignore[method-assign]
    ours = jitter(pixels).int()
    theirs = getattr(F, f"adjust_{name}")(pixels, factor).int()
    difference = (ours - theirs).abs().float()
    if name == "hue":  # HSV keeps each pixel's max and min, the turn its mean and chroma: moves alike, not equal
        ours_move, their_move = (ours - pixels.int()).flatten().float(), (theirs - pixels.int()).flatten().float()
        assert torch.nn.functional.cosine_similarity(ours_move, their_move, dim=0) > 0.7
        assert 0.6 < float(ours_move.norm() / their_move.norm()) < 1.4
    else:  # torchvision truncates each step to uint8; the one-pass map rounds once
        assert difference.max() <= 1 and difference.mean() < 1.0


def test_colour_jitter_hue_turns_red_towards_green_and_keeps_grey() -> None:
    from edgetl.detect.augment import colour_step

    turn, _ = colour_step("hue", 1 / 3)
    torch.testing.assert_close(turn @ torch.tensor([255.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 255, 0], dtype=torch.float64))
    grey = torch.full((3,), 90.0, dtype=torch.float64)
    torch.testing.assert_close(turn @ grey, grey)


def test_colour_jitter_draws_like_torchvision() -> None:
    """Factors within torchvision's ranges, every order of the four steps seen, nothing drawn when off."""
    from edgetl.detect.augment import ColourJitter

    torch.manual_seed(0)
    jitter = ColourJitter(brightness=0.3, contrast=0.3, saturation=0.4, hue=0.015)
    orders = set()
    for _ in range(400):
        steps = jitter.draw()
        orders.add(tuple(name for name, _ in steps))
        factors = dict(steps)
        assert 0.7 <= factors["brightness"] <= 1.3 and 0.7 <= factors["contrast"] <= 1.3
        assert 0.6 <= factors["saturation"] <= 1.4 and -0.015 <= factors["hue"] <= 0.015
    assert len(orders) == 24
    off = ColourJitter(brightness=0.2)
    assert [name for name, _ in off.draw()] == ["brightness"] and not ColourJitter().active
    image = _mid_range_photo()
    assert TrainAugment(SPEC, AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0)).colour is None
    out = ColourJitter(contrast=0.5)(image)
    assert out.dtype == torch.uint8 and out.shape == image.shape


def test_colour_jitter_clips_and_refuses_bad_input() -> None:
    from edgetl.detect.augment import ColourJitter
    from edgetl.errors import BadInputError

    bright = ColourJitter(brightness=0.5)
    bright.draw = lambda: [("brightness", 1.5)]  # type: ignore[method-assign]
    assert int(bright(torch.full((3, 4, 4), 200, dtype=torch.uint8)).min()) == 255
    with pytest.raises(BadInputError, match="RGB"):
        bright(torch.zeros((1, 4, 4), dtype=torch.uint8))
    with pytest.raises(BadInputError, match="hue"):
        ColourJitter(hue=0.7)
    with pytest.raises(BadInputError, match="saturation"):
        ColourJitter(saturation=-1)
