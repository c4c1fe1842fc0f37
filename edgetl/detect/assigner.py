"""Task-aligned label assignment (TAL, as in TOOD / PP-YOLOE / YOLOv8), written for padded batches.

For every ground-truth box, candidate cells are those whose centre lies inside the box. Each candidate
gets an alignment score ``t = s^alpha * iou^beta`` from the *current* predictions (``s``: predicted
probability of the box's class, ``iou``: IoU of the predicted box with the ground truth). The ``topk``
best-aligned candidates become positives; a cell claimed by several boxes keeps the one it overlaps
most. Classification targets are soft: ``t`` rescaled so that each box's best cell gets that box's best
IoU. So the classifier learns to rank boxes by localisation quality, which is what NMS needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def box_iou_pairwise(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of boxes broadcast against each other (xyxy); shapes ``(..., 4)`` broadcast to ``(...)``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


@dataclass
class Assignment:
    """What each cell should predict.

    Attributes:
        labels: (N, A) int64 class of the assigned box (0 for background cells; use ``fg_mask``).
        boxes: (N, A, 4) xyxy target box in input pixels (zeros for background).
        scores: (N, A, C) soft classification targets (alignment-normalised IoU).
        fg_mask: (N, A) bool, cells with an assigned box.
        gt_index: (N, A) int64 index of the assigned box in the padded ground truth.
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    fg_mask: torch.Tensor
    gt_index: torch.Tensor


class TaskAlignedAssigner:
    """Assign ground truth to cells by task alignment.

    Args:
        num_classes: number of classes C.
        topk: positives kept per ground-truth box (before conflict resolution).
        alpha: weight of the classification score in the alignment metric.
        beta: weight of the IoU in the alignment metric.
        eps: numerical floor.
    """

    def __init__(self, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        self.num_classes = num_classes
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, anchors: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        """Assign a padded batch.

        Args:
            pred_scores: (N, A, C) predicted probabilities (after sigmoid).
            pred_boxes: (N, A, 4) predicted xyxy boxes in input pixels.
            anchors: (A, 2) cell centres in input pixels.
            gt_labels: (N, M) int64 class ids (padding: any value).
            gt_boxes: (N, M, 4) xyxy ground-truth boxes in input pixels.
            gt_mask: (N, M) bool, real (not padding) boxes.
        """
        n, a, c = pred_scores.shape
        m = gt_boxes.shape[1]
        device = pred_scores.device
        if m == 0 or not bool(gt_mask.any()):
            return Assignment(
                labels=torch.zeros(n, a, dtype=torch.long, device=device),
                boxes=torch.zeros(n, a, 4, device=device),
                scores=torch.zeros(n, a, c, device=device),
                fg_mask=torch.zeros(n, a, dtype=torch.bool, device=device),
                gt_index=torch.zeros(n, a, dtype=torch.long, device=device),
            )
        pred_scores = pred_scores.float()
        pred_boxes = pred_boxes.float()
        gt_boxes = gt_boxes.float()
        labels = gt_labels.long().clamp(0, c - 1)

        # (N, M, A): candidate cells have their centre strictly inside the box.
        xy = anchors.view(1, 1, a, 2)
        inside = torch.cat([xy - gt_boxes[:, :, None, :2], gt_boxes[:, :, None, 2:] - xy], -1).amin(-1) > self.eps
        candidates = inside & gt_mask[:, :, None]

        iou_all = box_iou_pairwise(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]).clamp(min=0)  # (N, M, A)
        cls_score = torch.gather(pred_scores.transpose(1, 2), 1, labels[:, :, None].expand(n, m, a))  # (N, M, A)
        align = cls_score.pow(self.alpha) * iou_all.pow(self.beta) * candidates
        iou = iou_all * candidates

        # Top-k candidates per box by alignment (ties broken by order; non-candidates never selected).
        k = min(self.topk, a)
        top_idx = align.topk(k, dim=-1).indices  # (N, M, k)
        chosen = torch.zeros_like(align, dtype=torch.bool).scatter_(-1, top_idx, True) & candidates
        # A box too small to contain any cell centre still gets its nearest cell, so it is never ignored.
        orphan = gt_mask & ~candidates.any(-1)  # (N, M)
        if bool(orphan.any()):
            centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (N, M, 2)
            dist = (centres[:, :, None, :] - xy).pow(2).sum(-1)  # (N, M, A)
            nearest = dist.argmin(-1)  # (N, M)
            extra = torch.zeros_like(chosen).scatter_(-1, nearest[..., None], True) & orphan[..., None]
            chosen |= extra
            iou = torch.where(extra, iou_all.clamp(min=self.eps), iou)
            align = torch.where(extra, (cls_score.pow(self.alpha) * iou.pow(self.beta)).clamp(min=self.eps), align)

        # A cell claimed by several boxes keeps the one it overlaps most.
        claims = chosen.sum(1)  # (N, A)
        if bool((claims > 1).any()):
            best_gt = (iou * chosen).argmax(1)  # (N, A)
            only_best = torch.zeros_like(chosen).scatter_(1, best_gt[:, None, :], True)
            chosen = torch.where((claims > 1)[:, None, :], only_best & chosen, chosen)
        fg_mask = chosen.any(1)  # (N, A)
        gt_index = chosen.float().argmax(1)  # (N, A)

        batch = torch.arange(n, device=device)[:, None]
        target_labels = labels[batch, gt_index]  # (N, A)
        target_boxes = gt_boxes[batch, gt_index] * fg_mask[..., None]

        # Soft targets: alignment normalised per box so its best cell reaches its best IoU.
        align = align * chosen
        max_align = align.amax(-1, keepdim=True)  # (N, M, 1)
        max_iou = (iou * chosen).amax(-1, keepdim=True)
        norm = (align * max_iou / (max_align + self.eps)).amax(1)  # (N, A)
        target_scores = torch.zeros(n, a, c, device=device)
        target_scores.scatter_(-1, target_labels[..., None], 1.0)
        target_scores = target_scores * (norm * fg_mask)[..., None]
        target_labels = torch.where(fg_mask, target_labels, torch.zeros_like(target_labels))
        return Assignment(target_labels, target_boxes, target_scores, fg_mask, gt_index)
