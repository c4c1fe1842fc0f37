"""Host NMS vs torchvision, un-letterboxing, COCO mAP on hand-made cases, box agreement, torch-free runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.data.detection import DetSample
from edgetl.metrics.detection import box_agreement, coco_map, detection_metrics
from edgetl.preprocess import LetterboxInfo, PreprocessSpec, preprocess
from edgetl.runtime.detection import DetectionResult, nms_numpy, postprocess_detections
from edgetl.validate.detection import validate_detection

CLASSES = ["cat", "dog"]


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(2, 80, (n, 2))], axis=1).astype(np.float32)


def test_nms_keeps_the_same_boxes_as_torchvision() -> None:
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 300))
        boxes, scores = _random_boxes(rng, n), rng.random(n).astype(np.float32)
        classes = rng.integers(0, 4, n)
        thr = float(rng.uniform(0.2, 0.8))
        tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
        np.testing.assert_array_equal(
            nms_numpy(boxes, scores, thr, classes), ops.batched_nms(tb, ts, torch.from_numpy(classes), thr).numpy()
        )
        np.testing.assert_array_equal(nms_numpy(boxes, scores, thr), ops.nms(tb, ts, thr).numpy())
    assert nms_numpy(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def _letterboxed_outputs() -> tuple[dict, LetterboxInfo, np.ndarray]:
    """A 200x100 image letterboxed to 64x64: scale 0.32, pad_y 16. Two cats overlapping, one dog."""
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    _, info = preprocess(image, PreprocessSpec(size=(64, 64), resize="letterbox"))
    assert info == LetterboxInfo(0.32, 0, 16, 200, 100)
    original = np.array([[20, 10, 60, 50], [22, 12, 62, 52], [100, 40, 190, 95]], dtype=np.float32)
    in_input = original * 0.32 + np.array([0, 16, 0, 16], np.float32)
    scores = np.zeros((1, 5, 2), np.float32)
    scores[0, 0, 0], scores[0, 1, 0], scores[0, 2, 1] = 0.9, 0.8, 0.7
    scores[0, 3, 1] = 0.1  # below threshold
    boxes = np.concatenate([in_input, [[0, 0, 10, 10], [5, 5, 6, 6]]]).astype(np.float32)[None]
    return {"boxes": boxes, "scores": scores}, info, original


def test_postprocess_boxes_scores_maps_back_to_original_pixels() -> None:
    outputs, info, original = _letterboxed_outputs()
    post = {
        "type": "detect",
        "outputs": "boxes_scores",
        "score_threshold": 0.25,
        "iou_threshold": 0.5,
        "max_detections": 100,
        "class_agnostic": False,
    }
    (result,) = postprocess_detections(outputs, post, [info], CLASSES)
    np.testing.assert_allclose(result.boxes, original[[0, 2]], atol=1e-3)  # the overlapping cat is suppressed
    np.testing.assert_allclose(result.scores, [0.9, 0.7])
    assert result.label_names == ["cat", "dog"]
    assert result.to_dict()["detections"][1]["label"] == "dog"
    (one,) = postprocess_detections(outputs, {**post, "max_detections": 1}, [info], CLASSES)
    assert len(one) == 1 and one.label_names == ["cat"]


def test_postprocess_nms_layout_and_clipping() -> None:
    _, info, original = _letterboxed_outputs()
    det = np.zeros((1, 4, 4), np.float32)
    det[0, :2] = original[[0, 2]] * 0.32 + np.array([0, 16, 0, 16])
    det[0, 1, 2] = 70.0  # beyond the image's right edge in input pixels -> clipped to 200
    outputs = {
        "num_detections": np.array([[2]], np.int32),
        "det_boxes": det,
        "det_scores": np.array([[0.9, 0.7, 0.0, 0.0]], np.float32),
        "det_classes": np.array([[0, 1, 0, 0]], np.int32),
    }
    (result,) = postprocess_detections(outputs, {"outputs": "nms"}, [info], CLASSES)
    np.testing.assert_allclose(result.boxes, [original[0], [100, 40, 200, 95]], atol=1e-3)
    np.testing.assert_array_equal(result.labels, [0, 1])
    from edgetl.errors import BadInputError

    with pytest.raises(BadInputError, match="lack"):
        postprocess_detections({"boxes": det}, {"outputs": "boxes_scores"}, [info], CLASSES)


def _gt(boxes, labels) -> DetSample:
    return DetSample(Path("x.png"), np.array(boxes, np.float32), np.array(labels), 100, 100)


def _pred(boxes, labels, scores) -> DetectionResult:
    return DetectionResult(np.array(boxes, np.float32), np.array(scores), np.array(labels))


def test_map_known_values() -> None:
    gt = [_gt([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0]), _gt([[5, 5, 40, 60]], [1])]
    perfect = [_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0], [0.9, 0.8]), _pred([[5, 5, 40, 60]], [1], [0.7])]
    m = coco_map(perfect, gt, CLASSES)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["per_class"]["cat"] == {"ap50": pytest.approx(1.0), "ap": pytest.approx(1.0), "instances": 2}

    # one of the two cats missed: recall 0.5 at precision 1 -> 51 of COCO's 101 recall points
    missed = [_pred([[10, 10, 50, 50]], [0], [0.9]), perfect[1]]
    m = coco_map(missed, gt, CLASSES)
    assert m["per_class"]["cat"]["ap50"] == pytest.approx(51 / 101)
    assert m["map50"] == pytest.approx((51 / 101 + 1.0) / 2)

    # the dog predicted as a cat: dog AP 0, and a false positive for cats ranked below both true cats
    wrong = [perfect[0], _pred([[5, 5, 40, 60]], [0], [0.7])]
    m = coco_map(wrong, gt, CLASSES)
    assert m["per_class"]["dog"]["ap"] == 0.0 and m["per_class"]["cat"]["ap"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx(0.5)

    # a box at IoU 0.58 counts at 0.5 and 0.55 only: AP@[.5:.95] = 2/10 for that class
    shifted = [_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0], [0.9, 0.8]), _pred([[5, 5, 40, 37.0]], [1], [0.7])]
    iou = (35 * 32) / (35 * 55)
    assert 0.55 < iou < 0.65
    m = coco_map(shifted, gt, CLASSES)
    assert m["per_class"]["dog"]["ap50"] == pytest.approx(1.0)
    assert m["per_class"]["dog"]["ap"] == pytest.approx(0.2)

    nothing = coco_map([DetectionResult.empty(), DetectionResult.empty()], gt, CLASSES)
    assert nothing["map"] == 0.0 and nothing["map50"] == 0.0


def test_map_ignores_classes_without_ground_truth() -> None:
    gt = [_gt([[10, 10, 50, 50]], [0])]
    m = coco_map([_pred([[10, 10, 50, 50], [60, 60, 80, 80]], [0, 1], [0.9, 0.9])], gt, CLASSES)
    assert m["map"] == pytest.approx(1.0)
    assert m["per_class"]["dog"] == {"ap50": None, "ap": None, "instances": 0}


def test_box_agreement() -> None:
    ref = [_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 1], [0.9, 0.8])]
    same = box_agreement(ref, ref)
    assert same["matched_iou_mean"] == pytest.approx(1.0) and same["score_abs_diff_mean"] == 0.0
    assert same["recall_of_reference"] == 1.0 and same["precision_vs_reference"] == 1.0
    # candidate: first box shifted by 4 px (IoU 36*40/(44*40)), second box lost, one extra wrong-class box
    cand = [_pred([[14, 10, 54, 50], [60, 60, 90, 90], [0, 0, 5, 5]], [0, 0, 1], [0.85, 0.5, 0.3])]
    a = box_agreement(ref, cand)
    assert a["matched"] == 1
    assert a["matched_iou_mean"] == pytest.approx(36 * 40 / (44 * 40))
    assert a["score_abs_diff_mean"] == pytest.approx(0.05)
    assert a["recall_of_reference"] == 0.5 and a["precision_vs_reference"] == pytest.approx(1 / 3)
    empty = box_agreement([DetectionResult.empty()], [DetectionResult.empty()])
    assert empty["recall_of_reference"] == 1.0 and empty["matched_iou_mean"] is None


def test_detection_metrics_gate() -> None:
    gt = [_gt([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0])]
    ref = [_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0], [0.9, 0.8])]
    cand = [_pred([[10, 10, 50, 50]], [0], [0.9])]
    report = detection_metrics(ref, cand, gt, CLASSES, max_map_drop=1.0)
    assert report["deltas"]["map"] == pytest.approx((51 / 101 - 1.0) * 100)
    assert report["gate"]["passed"] is False and "dropped" in report["gate"]["reasons"][0]
    assert detection_metrics(ref, ref, gt, CLASSES, max_map_drop=1.0)["gate"]["passed"] is True


def test_validate_detection_runs_both_models_through_preprocess(shapes_dir: Path) -> None:
    """A fake 'model' that returns the ground truth in input pixels scores mAP 1.0 after un-letterboxing."""
    from edgetl.data.detection import load_detection_data

    data = load_detection_data(shapes_dir / "data.yaml")
    spec = PreprocessSpec(size=(64, 64), resize="letterbox")
    queue = list(data.val)

    def oracle(batch: np.ndarray) -> dict[str, np.ndarray]:
        n, a = len(batch), 8
        boxes, scores = np.zeros((n, a, 4), np.float32), np.zeros((n, a, len(data.classes)), np.float32)
        for i in range(n):
            s = queue.pop(0)
            _, info = preprocess(s.path, spec)
            k = len(s.labels)
            boxes[i, :k] = s.boxes * info.scale + [info.pad_x, info.pad_y, info.pad_x, info.pad_y]
            scores[i, np.arange(k), s.labels] = 0.9
        return {"boxes": boxes, "scores": scores}

    def blind(batch: np.ndarray) -> dict[str, np.ndarray]:
        n = len(batch)
        return {"boxes": np.zeros((n, 8, 4), np.float32), "scores": np.zeros((n, 8, len(data.classes)), np.float32)}

    report = validate_detection(
        oracle, blind, data, spec, {"outputs": "boxes_scores"}, data.classes, max_map_drop=1.0, batch_size=3
    )
    assert report["images"] == len(data.val)
    assert report["reference"]["map"] == pytest.approx(1.0, abs=1e-6)
    assert report["candidate"]["map"] == 0.0 and report["gate"]["passed"] is False
    assert report["agreement"]["recall_of_reference"] == 0.0


def test_runtime_detection_and_visualize_import_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import edgetl.runtime.detection, edgetl.runtime.visualize\n"
        "bad = [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_draw_detections(shapes_dir: Path) -> None:
    from PIL import Image

    from edgetl.runtime.visualize import draw_detections

    image = Image.new("RGB", (120, 80), (255, 255, 255))
    result = _pred([[10, 20, 60, 70]], [1], [0.87])
    result = DetectionResult(result.boxes, result.scores, result.labels, ["dog"])
    drawn = draw_detections(image, result)
    assert drawn.size == image.size and image.getpixel((10, 45)) == (255, 255, 255)
    assert drawn.getpixel((10, 45)) != (255, 255, 255)  # the left edge of the box
    assert drawn.getpixel((100, 75)) == (255, 255, 255)  # far from the box: untouched
