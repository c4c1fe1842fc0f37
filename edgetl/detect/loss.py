"""Detection loss: BCE on soft task-aligned targets + CIoU box loss + distribution focal loss (DFL).

All three terms are normalised by the sum of the soft classification targets of the batch, so the
loss scale does not depend on how many objects the images hold.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from edgetl.detect.assigner import Assignment, TaskAlignedAssigner

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def bbox_iou(a: torch.Tensor, b: torch.Tensor, kind: str = "ciou", eps: float = 1e-7) -> torch.Tensor:
    """Elementwise IoU-family overlap of xyxy boxes ``(..., 4)`` -> ``(...)``.

    Args:
        a, b: boxes, broadcastable.
        kind: ``iou``; ``giou`` (minus the empty share of the enclosing box); ``diou`` (minus the centre
            distance over the enclosing diagonal); ``ciou`` (DIoU minus an aspect-ratio consistency term).
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}; expected one of {IOU_KINDS}")
    w1, h1 = (a[..., 2] - a[..., 0]).clamp(min=0), (a[..., 3] - a[..., 1]).clamp(min=0)
    w2, h2 = (b[..., 2] - b[..., 0]).clamp(min=0), (b[..., 3] - b[..., 1]).clamp(min=0)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    if kind == "giou":
        hull = cw * ch + eps
        return iou - (hull - union) / hull
    diag = cw.pow(2) + ch.pow(2) + eps
    centre = ((a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]).pow(2)
              + (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]).pow(2)) / 4
    if kind == "diou":
        return iou - centre / diag
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre / diag + v * alpha)


def boxes_to_distances(anchors: torch.Tensor, boxes: torch.Tensor, reg_max: int) -> torch.Tensor:
    """xyxy boxes -> (left, top, right, bottom) distances from the anchors, in stride units, clipped to
    the range the DFL bins can represent. ``anchors`` and ``boxes`` already divided by the stride."""
    lt = anchors - boxes[..., :2]
    rb = boxes[..., 2:] - anchors
    return torch.cat([lt, rb], -1).clamp(0, reg_max - 1 - 0.01)


def dfl_loss(reg_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss: cross-entropy of each side's distribution against the two bins that
    bracket the target distance, weighted by proximity. ``(K, 4, R)``, ``(K, 4)`` -> ``(K,)``."""
    left = target.floor().long()
    right = left + 1
    w_left = right.float() - target
    w_right = 1 - w_left
    logp = F.log_softmax(reg_logits.float(), -1)
    loss = -(logp.gather(-1, left[..., None])[..., 0] * w_left + logp.gather(-1, right[..., None])[..., 0] * w_right)
    return loss.mean(-1)


def pad_targets(targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``[batch_idx, cls, x1, y1, x2, y2]`` -> padded ``labels (N, M)``, ``boxes (N, M, 4)``, ``mask (N, M)``."""
    device = targets.device
    if targets.numel() == 0:
        return (torch.zeros(batch_size, 0, dtype=torch.long, device=device),
                torch.zeros(batch_size, 0, 4, device=device),
                torch.zeros(batch_size, 0, dtype=torch.bool, device=device))
    idx = targets[:, 0].long()
    counts = torch.bincount(idx, minlength=batch_size)
    m = int(counts.max())
    labels = torch.zeros(batch_size, m, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, m, 4, device=device)
    mask = torch.zeros(batch_size, m, dtype=torch.bool, device=device)
    order = torch.argsort(idx, stable=True)
    idx_sorted = idx[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(idx), device=device) - starts[idx_sorted]
    labels[idx_sorted, slot] = targets[order, 1].long()
    boxes[idx_sorted, slot] = targets[order, 2:6].float()
    mask[idx_sorted, slot] = True
    return labels, boxes, mask


class DetectionLoss:
    """The training objective of `edgetl.detect.model.YoloDetector`.

    Args:
        num_classes: C.
        reg_max: DFL bins per side.
        box_weight, cls_weight, dfl_weight: term weights (YOLOv8's balance by default).
        iou_kind: IoU-family box loss: ``ciou`` (default) or ``giou``/``diou``/``iou``.
        assigner: a `TaskAlignedAssigner`; built with defaults when omitted.
    """

    def __init__(self, num_classes: int, reg_max: int = 16, *, box_weight: float = 7.5, cls_weight: float = 0.5,
                 dfl_weight: float = 1.5, iou_kind: str = "ciou", assigner: TaskAlignedAssigner | None = None) -> None:
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.box_weight, self.cls_weight, self.dfl_weight = box_weight, cls_weight, dfl_weight
        self.iou_kind = iou_kind
        self.assigner = assigner or TaskAlignedAssigner(num_classes)

    def __call__(
        self, outputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch.

        Args:
            outputs: `YoloDetector.forward_train` outputs.
            targets: (K, 6) rows ``[batch_idx, cls, x1, y1, x2, y2]`` in input pixels.

        Returns:
            ``(total, parts)``: the scalar to back-propagate and the float value of each term.
        """
        cls_logits = outputs["cls"].float()
        pred_boxes = outputs["boxes"].float()
        anchors, stride = outputs["anchors"].float(), outputs["stride"].float()
        n = cls_logits.shape[0]
        gt_labels, gt_boxes, gt_mask = pad_targets(targets.to(cls_logits.device), n)
        assigned: Assignment = self.assigner(
            cls_logits.detach().sigmoid(), pred_boxes.detach(), anchors, gt_labels, gt_boxes, gt_mask
        )
        norm = assigned.scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, assigned.scores, reduction="sum") / norm

        fg = assigned.fg_mask
        if bool(fg.any()):
            weight = assigned.scores.sum(-1)[fg]  # (K,)
            iou = bbox_iou(pred_boxes[fg], assigned.boxes[fg], kind=self.iou_kind)
            loss_box = ((1.0 - iou) * weight).sum() / norm
            anchor_idx = fg.nonzero()[:, 1]
            s = stride[anchor_idx]
            target_dist = boxes_to_distances(anchors[anchor_idx] / s, assigned.boxes[fg] / s, self.reg_max)
            loss_dfl = (dfl_loss(outputs["reg"][fg], target_dist) * weight).sum() / norm
        else:
            loss_box = pred_boxes.sum() * 0.0
            loss_dfl = outputs["reg"].sum() * 0.0
        total = self.box_weight * loss_box + self.cls_weight * loss_cls + self.dfl_weight * loss_dfl
        parts = {"box": float(loss_box.detach()), "cls": float(loss_cls.detach()), "dfl": float(loss_dfl.detach()),
                 "positives": int(fg.sum())}
        return total, parts
