"""A lightweight anchor-free, YOLO-style detector on a registry backbone.

Shape of the network::

    backbone (edgetl.models.create(features_only=True), strides 8/16/32)
      -> PAN neck (top-down then bottom-up fusion, depthwise-separable blocks)
      -> decoupled head per level (class logits | box distances as DFL distributions)
      -> decode in the graph: ``boxes`` (N, A, 4) xyxy input pixels, ``scores`` (N, A, C) sigmoid

Everything after the convolutions is plain elementwise math (softmax, multiply, reduce-sum, concat),
so the exported ONNX graph needs no custom op, TensorRT parses it, and the INT8 quantizer has no
MatMul in the decode to round. ReLU activations keep the graph quantization-friendly.

Names are ``yolo-<backbone>-<size>``: ``yolo-lite0-n``, ``yolo-lite0-s``, ``yolo-mbv3-n``...
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from edgetl.errors import BadInputError

# The names live in a torch-free module; importers of this one keep finding them here.
from edgetl.models.detectors import DEFAULT_DETECTOR, DetectorInfo, get_detector_info
from edgetl.models.detectors import list_detectors as list_detectors
from edgetl.preprocess import PreprocessSpec

STRIDES = (8, 16, 32)
DEFAULT_REG_MAX = 16
BACKBONE_STRATEGIES = ("frozen", "partial", "full")


def detector_preprocess_spec(name: str, size: int | tuple[int, int]) -> PreprocessSpec:
    """The letterbox preprocessing of a detector: the backbone's mean/std, pad 114, bilinear resize."""
    from edgetl.models import get_model_info

    hw = (size, size) if isinstance(size, int) else tuple(size)
    if any(int(v) % max(STRIDES) for v in hw):
        raise BadInputError(
            f"detector input size {hw} must be a multiple of {max(STRIDES)}",
            hint=f"use e.g. --img-size {max(32, round(hw[0] / 32) * 32)}",
        )
    base = get_model_info(get_detector_info(name).backbone).preprocess_spec(hw)
    return PreprocessSpec.from_dict({**base.to_dict(), "resize": "letterbox", "interpolation": "bilinear"})


class ConvBNAct(nn.Sequential):
    """Conv -> BatchNorm -> ReLU: fuses into one conv at export and quantizes cleanly."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class DWBlock(nn.Module):
    """Residual depthwise-separable block: ``x + pw(dw(x))``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = ConvBNAct(c, c, 3, groups=c)
        self.pw = ConvBNAct(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.dw(x))


class Fuse(nn.Module):
    """Fuse two concatenated levels: 1x1 projection then ``depth`` residual depthwise blocks."""

    def __init__(self, c_in: int, c_out: int, depth: int) -> None:
        super().__init__()
        self.proj = ConvBNAct(c_in, c_out, 1)
        self.blocks = nn.Sequential(*(DWBlock(c_out) for _ in range(depth)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.proj(torch.cat([a, b], 1)))


class PANNeck(nn.Module):
    """Top-down (FPN) then bottom-up (PAN) fusion of three levels to ``width`` channels each."""

    def __init__(self, in_channels: list[int], width: int, depth: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, width, 1) for c in in_channels)
        self.td4 = Fuse(2 * width, width, depth)
        self.td3 = Fuse(2 * width, width, depth)
        self.down3 = ConvBNAct(width, width, 3, 2, groups=width)
        self.bu4 = Fuse(2 * width, width, depth)
        self.down4 = ConvBNAct(width, width, 3, 2, groups=width)
        self.bu5 = Fuse(2 * width, width, depth)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = (lat(f) for lat, f in zip(self.lateral, feats))
        p4 = self.td4(c4, F.interpolate(c5, scale_factor=2.0, mode="nearest"))
        p3 = self.td3(c3, F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        n4 = self.bu4(self.down3(p3), p4)
        n5 = self.bu5(self.down4(n4), c5)
        return [p3, n4, n5]


class DecoupledHead(nn.Module):
    """Per level: a shared stem, then separate classification and box (DFL) branches."""

    def __init__(self, width: int, depth: int, num_classes: int, reg_max: int, levels: int = 3) -> None:
        super().__init__()
        self.stems = nn.ModuleList(ConvBNAct(width, width, 1) for _ in range(levels))
        self.cls_convs = nn.ModuleList(
            nn.Sequential(*(DWBlock(width) for _ in range(depth))) for _ in range(levels)
        )
        self.reg_convs = nn.ModuleList(
            nn.Sequential(*(DWBlock(width) for _ in range(depth))) for _ in range(levels)
        )
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in range(levels))
        self.reg_preds = nn.ModuleList(nn.Conv2d(width, 4 * reg_max, 1) for _ in range(levels))

    def init_biases(self, strides: tuple[int, ...], num_classes: int, ref_size: int = 320) -> None:
        """Start from ~5 objects per image spread over the level's cells, so early BCE is not swamped."""
        for pred, stride in zip(self.cls_preds, strides):
            prior = min(0.01, 5.0 / num_classes / (ref_size / stride) ** 2)
            nn.init.constant_(pred.bias, math.log(prior / (1 - prior)))
            nn.init.normal_(pred.weight, std=0.01)
        for pred in self.reg_preds:
            nn.init.constant_(pred.bias, 1.0)
            nn.init.normal_(pred.weight, std=0.01)

    def forward(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for i, x in enumerate(feats):
            x = self.stems[i](x)
            out.append((self.cls_preds[i](self.cls_convs[i](x)), self.reg_preds[i](self.reg_convs[i](x))))
        return out


def make_anchors(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres in input pixels ``(A, 2)`` (x, y) and each cell's stride ``(A, 1)``, level by level."""
    points, stride_col = [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([gx, gy], -1).reshape(-1, 2))
        stride_col.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_col)


def dfl_expectation(reg_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Expected bin of each side's distribution: ``(N, A, 4, R) -> (N, A, 4)`` (in stride units).

    Written as softmax * bins -> sum rather than a MatMul, so INT8 quantizers leave it in float.
    """
    bins = torch.arange(reg_max, device=reg_logits.device, dtype=reg_logits.dtype)
    return (reg_logits.softmax(-1) * bins).sum(-1)


def distances_to_boxes(anchors: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Anchor points ``(A, 2)`` and distances ``(N, A, 4)`` (pixels) -> xyxy boxes ``(N, A, 4)``."""
    lt, rb = ltrb[..., :2], ltrb[..., 2:]
    return torch.cat([anchors - lt, anchors + rb], -1)


class YoloDetector(nn.Module):
    """Backbone + PAN neck + decoupled DFL head with decode in the graph.

    ``forward(x)`` returns ``(boxes, scores)``: ``boxes`` (N, A, 4) xyxy in input pixels and ``scores``
    (N, A, C) sigmoid probabilities, over ``A = sum(H_l * W_l)`` cells of strides 8/16/32.
    ``forward_train(x)`` returns the raw logits the loss needs.

    Args:
        info: the named configuration.
        num_classes: number of object classes.
        weights: backbone weights (``"pretrained"``, ``"none"`` or a path), see `edgetl.models.create`.
        reg_max: bins of each side's distance distribution (max distance ``(reg_max - 1) * stride``).
    """

    onnx_output_names = ("boxes", "scores")
    onnx_nms_output_names = ("num_detections", "det_boxes", "det_scores", "det_classes")

    def __init__(self, info: DetectorInfo, num_classes: int, weights: Any = "pretrained",
                 reg_max: int = DEFAULT_REG_MAX) -> None:
        super().__init__()
        from edgetl.models import create

        if num_classes < 1:
            raise BadInputError(f"a detector needs at least one class, got {num_classes}")
        self.info = info
        self.num_classes = int(num_classes)
        self.reg_max = int(reg_max)
        self.strides = STRIDES
        self.backbone = create(info.backbone, weights=weights, features_only=True, out_indices=(2, 3, 4))
        reductions = list(self.backbone.feature_info.reduction())
        if reductions != list(STRIDES):
            raise BadInputError(f"{info.backbone}: feature strides {reductions}, the detector needs {STRIDES}")
        self.weights_source = getattr(self.backbone, "edgetl_weights", "none")
        self.neck = PANNeck(list(self.backbone.feature_info.channels()), info.width, info.depth)
        self.head = DecoupledHead(info.width, info.depth, num_classes, reg_max)
        self.head.init_biases(STRIDES, num_classes)
        self._frozen_prefixes: tuple[str, ...] = ()
        # Deployment defaults written into the bundle manifest; the runtime may override them.
        self.score_threshold = 0.25
        self.iou_threshold = 0.5
        self.max_detections = 100
        self.class_agnostic = False

    # ---- forward ---------------------------------------------------------------------------------
    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise BadInputError(f"detector input {tuple(x.shape[-2:])} must be a multiple of 32 on each side")
        outs = self.head(self.neck(self.backbone(x)))
        n = x.shape[0]
        cls = torch.cat([c.flatten(2) for c, _ in outs], 2).transpose(1, 2)  # (N, A, C)
        reg = torch.cat([r.flatten(2) for _, r in outs], 2).transpose(1, 2)  # (N, A, 4R)
        sizes = [(int(c.shape[2]), int(c.shape[3])) for c, _ in outs]
        return cls, reg.reshape(n, -1, 4, self.reg_max), sizes

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs for the loss: ``cls`` logits (N,A,C), ``reg`` logits (N,A,4,R), ``boxes`` decoded
        (N,A,4) input pixels, ``anchors`` (A,2) and ``stride`` (A,1)."""
        cls, reg, sizes = self._raw(x)
        anchors, stride = make_anchors(sizes, self.strides, x.device, cls.dtype)
        boxes = distances_to_boxes(anchors, dfl_expectation(reg.float(), self.reg_max) * stride)
        return {"cls": cls, "reg": reg, "boxes": boxes, "anchors": anchors, "stride": stride}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, reg, sizes = self._raw(x)
        anchors, stride = make_anchors(sizes, self.strides, x.device, cls.dtype)
        boxes = distances_to_boxes(anchors, dfl_expectation(reg, self.reg_max) * stride)
        return boxes, cls.sigmoid()

    # ---- transfer strategies ---------------------------------------------------------------------
    def set_backbone_trainable(self, mode: str) -> int:
        """Freeze the backbone: ``frozen`` (all of it), ``partial`` (the stem and the blocks before the
        stride-8 level, which hold generic edges and textures), or ``full`` (nothing).

        Frozen BatchNorm layers stay in eval mode during training so their ImageNet statistics are kept.
        Returns the number of frozen parameter tensors.
        """
        if mode not in BACKBONE_STRATEGIES:
            raise BadInputError(f"unknown backbone mode {mode!r}; expected one of {BACKBONE_STRATEGIES}")
        names = [n for n, _ in self.backbone.named_parameters()]
        if mode == "full":
            frozen: list[str] = []
        elif mode == "frozen":
            frozen = names
        else:
            first_level = self.backbone.feature_info.module_name()[0]
            cut = next((i for i, n in enumerate(names) if n.startswith(first_level + ".")), 0)
            frozen = names[:cut]
        frozen_set = set(frozen)
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name not in frozen_set)
        prefixes = {n.rsplit(".", 1)[0] for n in frozen}
        self._frozen_prefixes = tuple(sorted(prefixes))
        self.train(self.training)
        return len(frozen)

    def train(self, mode: bool = True) -> YoloDetector:
        super().train(mode)
        if mode and self._frozen_prefixes:
            for name, module in self.backbone.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and name in self._frozen_prefixes:
                    module.eval()
        return self

    # ---- deployment facts ------------------------------------------------------------------------
    def postprocess_spec(self, nms: str = "host") -> dict[str, Any]:
        """The manifest ``postprocess`` section: how the runtime turns outputs into detections.

        Args:
            nms: ``"host"`` (outputs ``boxes``/``scores``, NMS in numpy on the host) or ``"onnx"`` (the
                graph ends in ``NonMaxSuppression`` with EfficientNMS-style outputs).
        """
        if nms not in ("host", "onnx"):
            raise BadInputError(f"unknown nms placement {nms!r}; expected 'host' or 'onnx'")
        return {
            "type": "detect",
            "outputs": "boxes_scores" if nms == "host" else "nms",
            "score_threshold": float(self.score_threshold),
            "iou_threshold": float(self.iou_threshold),
            "max_detections": int(self.max_detections),
            "class_agnostic": bool(self.class_agnostic),
            "strides": list(self.strides),
            "reg_max": self.reg_max,
            "box_format": "xyxy",
        }

    def model_args(self) -> dict[str, Any]:
        """Constructor arguments that a checkpoint must store to rebuild this model."""
        return {"reg_max": self.reg_max}

    def preprocess_spec(self, size: int | tuple[int, int]) -> PreprocessSpec:
        return detector_preprocess_spec(self.info.name, size)


def build_detector(name: str = DEFAULT_DETECTOR, num_classes: int = 80, weights: Any = "pretrained",
                   **kwargs: Any) -> YoloDetector:
    """Build a named detector.

    Args:
        name: one of `list_detectors` (``yolo-lite0-n`` by default).
        num_classes: object classes.
        weights: backbone weights: ``"pretrained"`` (ImageNet, offline), ``"none"`` (random), or a path.
        **kwargs: ``reg_max`` (DFL bins, default 16); unknown keys are rejected.
    """
    info = get_detector_info(name)
    unknown = set(kwargs) - {"reg_max"}
    if unknown:
        raise BadInputError(f"unknown detector arguments {sorted(unknown)}")
    return YoloDetector(info, num_classes, weights=weights, **kwargs)
