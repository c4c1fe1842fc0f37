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
