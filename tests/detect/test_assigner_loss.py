"""Task-aligned assigner and detection loss on hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from edgetl.detect.assigner import TaskAlignedAssigner
from edgetl.detect.loss import DetectionLoss, bbox_iou, boxes_to_distances, dfl_loss, pad_targets


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_iou_family_known_values():
    a, b = _t([0, 0, 2, 2]), _t([1, 1, 3, 3])
    assert bbox_iou(a, b, "iou").item() == pytest.approx(1 / 7, abs=1e-5)
    assert bbox_iou(a, b, "giou").item() == pytest.approx(1 / 7 - 2 / 9, abs=1e-5)  # hull 9, union 7
    assert bbox_iou(a, b, "diou").item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-5)  # centres 2 apart^2, diag^2 18
    assert bbox_iou(a, b, "ciou").item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-5)  # same aspect: no extra term
    disjoint = bbox_iou(_t([0, 0, 1, 1]), _t([2, 0, 3, 1]), "giou")
    assert disjoint.item() == pytest.approx(-1 / 3, abs=1e-5)
    # Different aspect ratios add CIoU's penalty on top of DIoU.
    wide, tall = _t([0, 0, 4, 1]), _t([0, 0, 1, 4])
    assert bbox_iou(wide, tall, "ciou").item() < bbox_iou(wide, tall, "diou").item()


def test_iou_loss_is_zero_for_perfect_boxes():
    boxes = _t([3, 4, 20, 30], [0, 0, 64, 64], [10.5, 2.25, 11.5, 9.75])
    for kind in ("iou", "giou", "diou", "ciou"):
        assert torch.allclose(1 - bbox_iou(boxes, boxes.clone(), kind), torch.zeros(3), atol=1e-6), kind


def test_dfl_minimum_is_the_bracketing_distribution():
    target = torch.tensor([[0.5, 1.5, 2.0, 0.25]])  # (K=1, 4 sides) in bins
    r = 4
    ideal = torch.full((1, 4, r), -30.0)
    ideal[0, 0, 0] = ideal[0, 0, 1] = 0.0  # 0.5: half on bins 0 and 1
    ideal[0, 1, 1] = ideal[0, 1, 2] = 0.0  # 1.5: half on bins 1 and 2
    ideal[0, 2, 2] = 0.0  # 2.0: all on bin 2
    ideal[0, 3, 0], ideal[0, 3, 1] = math.log(0.75), math.log(0.25)  # 0.25: 3/4 on bin 0
    entropy = (math.log(2) * 2 + 0.0 + -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 4
    assert dfl_loss(ideal, target).item() == pytest.approx(entropy, abs=1e-4)
    shifted = ideal.roll(1, dims=-1)
    assert dfl_loss(shifted, target).item() > entropy + 1.0


def test_boxes_to_distances_clips_to_bins():
    anchors = _t([2.5, 1.5])
    d = boxes_to_distances(anchors, _t([0.0, 0.0, 30.0, 2.0]), reg_max=16)
    assert d[0].tolist() == pytest.approx([2.5, 1.5, 14.99, 0.5])


def test_pad_targets_groups_rows_by_image():
    targets = _t([1, 2, 0, 0, 5, 5], [0, 1, 1, 1, 4, 4], [1, 0, 2, 2, 8, 8])
    labels, boxes, mask = pad_targets(targets, batch_size=3)
    assert labels.shape == (3, 2) and boxes.shape == (3, 2, 4)
    assert mask.tolist() == [[True, False], [True, True], [False, False]]
    assert labels[1].tolist() == [2, 0] and boxes[1, 1].tolist() == [2, 2, 8, 8]
    empty = pad_targets(torch.zeros(0, 6), 2)
    assert empty[0].shape == (2, 0)


# Four cells of stride 8 in a 64x64 image: two on the top row, two far away.
ANCHORS = _t([4, 4], [12, 4], [36, 36], [60, 60])


def _assign(pred_boxes, gt_boxes, gt_labels, gt_mask=None, scores=None, topk=10, num_classes=3):
    n, a = 1, len(ANCHORS)
    scores = scores if scores is not None else torch.full((n, a, num_classes), 0.5)
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32)[None]
    gt_labels = torch.as_tensor(gt_labels)[None]
    gt_mask = torch.ones(gt_labels.shape, dtype=torch.bool) if gt_mask is None else torch.as_tensor(gt_mask)[None]
    assigner = TaskAlignedAssigner(num_classes, topk=topk)
    return assigner(scores, pred_boxes[None], ANCHORS, gt_labels, gt_boxes, gt_mask)


def test_assigner_picks_cells_inside_the_box_and_scores_by_iou():
    gt = [[0, 0, 16, 8]]
    preds = _t([0, 0, 16, 8], [4, 0, 16, 8], [30, 30, 40, 40], [50, 50, 64, 64])
    out = _assign(preds, gt, [1])
    assert out.fg_mask[0].tolist() == [True, True, False, False]
    assert out.labels[0, :2].tolist() == [1, 1]
    assert torch.equal(out.boxes[0, 0], torch.tensor([0.0, 0, 16, 8]))
    # The perfect prediction gets the box's best IoU (1.0); the other is scaled by its alignment.
    assert out.scores[0, 0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-5)
    iou2 = 12 * 8 / (16 * 8)
    assert out.scores[0, 1, 1].item() == pytest.approx(iou2**6, rel=1e-3)
    assert out.scores[0, 2:].sum().item() == 0.0
    top1 = _assign(preds, gt, [1], topk=1)
    assert top1.fg_mask[0].tolist() == [True, False, False, False]


def test_assigner_resolves_conflicts_by_iou_and_ignores_padding():
    # Both boxes contain cell 0; its prediction overlaps box B far better.
    gt = [[0, 0, 16, 8], [0, 0, 8, 8], [0, 0, 64, 64]]
    preds = _t([0, 0, 8, 8], [0, 0, 16, 8], [30, 30, 40, 40], [50, 50, 64, 64])
    out = _assign(preds, gt, [0, 2, 1], gt_mask=[True, True, False])
    assert out.fg_mask[0].tolist() == [True, True, False, False]  # the padded full-image box assigns nothing
    assert out.labels[0, 0].item() == 2 and out.gt_index[0, 0].item() == 1
    assert out.labels[0, 1].item() == 0 and out.gt_index[0, 1].item() == 0


def test_assigner_gives_a_tiny_box_its_nearest_cell():
    preds = _t([0, 0, 1, 1], [0, 0, 1, 1], [30, 30, 41, 41], [0, 0, 1, 1])
    out = _assign(preds, [[38, 38, 40, 40]], [2])  # no cell centre inside, nearest is (36, 36)
    assert out.fg_mask[0].tolist() == [False, False, True, False]
    assert out.labels[0, 2].item() == 2 and out.scores[0, 2, 2].item() > 0


def test_assigner_without_ground_truth_is_all_background():
    out = _assign(_t(*[[0, 0, 1, 1]] * 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert not out.fg_mask.any() and out.scores.sum() == 0


def test_loss_box_term_is_zero_for_perfect_boxes_and_positive_otherwise():
    loss = DetectionLoss(num_classes=3, reg_max=4)
    gt = _t([0, 1, 0, 0, 16, 8])
    stride = torch.full((4, 1), 8.0)

    def outputs(pred_boxes):
        return {"cls": torch.zeros(1, 4, 3, requires_grad=True), "reg": torch.zeros(1, 4, 4, 4, requires_grad=True),
                "boxes": pred_boxes[None].clone().requires_grad_(True), "anchors": ANCHORS, "stride": stride}

    perfect = _t([0, 0, 16, 8], [0, 0, 16, 8], [30, 30, 40, 40], [50, 50, 64, 64])
    total, parts = loss(outputs(perfect), gt)
    assert parts["positives"] == 2
    assert parts["box"] == pytest.approx(0.0, abs=1e-6)
    assert parts["cls"] > 0 and parts["dfl"] > 0
    off = perfect.clone()
    off[0] += torch.tensor([2.0, 0, 2.0, 0])
    _, parts_off = loss(outputs(off), gt)
    assert parts_off["box"] > 0.01
    out = outputs(perfect)
    total, _ = loss(out, gt)
    total.backward()
    assert out["cls"].grad is not None and out["reg"].grad.abs().sum() > 0


def test_loss_without_objects_only_pushes_scores_down():
    loss = DetectionLoss(num_classes=2, reg_max=4)
    out = {"cls": torch.zeros(1, 4, 2, requires_grad=True), "reg": torch.zeros(1, 4, 4, 4),
           "boxes": torch.zeros(1, 4, 4), "anchors": ANCHORS, "stride": torch.full((4, 1), 8.0)}
    total, parts = loss(out, torch.zeros(0, 6))
    assert parts["positives"] == 0 and parts["box"] == 0.0 and parts["dfl"] == 0.0
    total.backward()
    assert (out["cls"].grad > 0).all()  # gradient raises logits' loss: descent lowers every score
