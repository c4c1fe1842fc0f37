"""What ``edgetl models`` lists: every classifier and detector by name, from recorded facts only.

Listing builds nothing and imports neither torch nor timm, so it answers in well under a second; the
only lookups are where ImageNet weights sit on this machine.
"""

from __future__ import annotations

from typing import Any

from edgetl.models.registry import ModelInfo, get_model_info, list_models
from edgetl.models.weights import find_pretrained


def catalog(pattern: str = "*") -> list[dict[str, Any]]:
    """Classifiers, then detectors, whose names match a shell-style pattern (``mobilenet*``, ``yolo-*``).

    Each row has ``name``, ``task``, ``params_m``, ``input_size``, ``weights_offline`` (where ImageNet
    weights were found, or None) and ``description``; detectors add their ``backbone``.
    """
    from edgetl.models.detectors import list_detectors

    rows = [describe_classifier(get_model_info(name)) for name in list_models(pattern)]
    return rows + [describe_detector(name) for name in list_detectors(pattern)]


def describe_classifier(info: ModelInfo) -> dict[str, Any]:
    """One registry entry as a listing row."""
    source = find_pretrained(info)
    return {
        "name": info.name,
        "task": "classify",
        "architecture": info.timm_name,
        "params_m": info.params_m,
        "input_size": list(info.input_size),
        "pretrained": info.pretrained_name,
        "weights_offline": source.describe() if source else None,
        "description": info.description,
    }


def describe_detector(name: str) -> dict[str, Any]:
    """One detector as a listing row: its ImageNet weights are its backbone's."""
    from edgetl.models.detectors import DEFAULT_DETECT_SIZE, PARAMS_CLASSES, get_detector_info

    info = get_detector_info(name)
    backbone = get_model_info(info.backbone)
    source = find_pretrained(backbone)
    return {
        "name": info.name,
        "task": "detect",
        "architecture": f"anchor-free YOLO-style, width {info.width}, depth {info.depth}",
        "backbone": info.backbone,
        "params_m": info.params_m,
        "params_classes": PARAMS_CLASSES,
        "input_size": [DEFAULT_DETECT_SIZE, DEFAULT_DETECT_SIZE],
        "weights_offline": source.describe() if source else None,
        "description": f"detector on {info.backbone} (PAN neck, decoupled DFL head, NMS outside the graph "
                       "or in it with `export --nms onnx`)",
    }
