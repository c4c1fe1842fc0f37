"""The default deployment gate: how much an optimized model may lose against FP32 before it is refused.

`edgetl validate` (its option defaults), the daemon's swap check, the demo, and QAT's choice between its epochs
and the PTQ model all read these, so a model that ``quantize --qat`` keeps is judged by the rule ``validate``
applies to it.
"""

from __future__ import annotations

#: Classifiers may lose at most half a top-1 point and must agree with FP32 on 99 % of the images.
GATE_MAX_TOP1_DROP = 0.5
GATE_MIN_AGREEMENT = 0.99
#: Detectors may lose one mAP@0.5:0.95 point.
GATE_MAX_MAP_DROP = 1.0

#: ``(max drop in points, min agreement or None)``.
Gate = tuple[float, float | None]


def default_gate(task: str) -> Gate:
    """``(max drop in points, min agreement or None)`` of ``task``'s default gate."""
    return (GATE_MAX_MAP_DROP, None) if task == "detect" else (GATE_MAX_TOP1_DROP, GATE_MIN_AGREEMENT)
