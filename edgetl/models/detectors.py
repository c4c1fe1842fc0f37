"""Detector names and their configurations, without torch.

``edgetl models`` lists detectors beside classifiers, and configuration checks name them, on machines
and in processes that never build one; `edgetl.detect.model` builds them from these records. The records
sit in the model registry's package, below the detector's own code, as the classifiers' do.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from edgetl.errors import BadInputError

#: The input side ``edgetl train detect`` uses unless told otherwise (``--img-size``).
DEFAULT_DETECT_SIZE = 320
#: The class count the recorded parameter counts assume (COCO's; the head grows by 3 x (width + 1) per class).
PARAMS_CLASSES = 80


@dataclass(frozen=True)
class DetectorInfo:
    """A named detector configuration.

    Args:
        name: ``yolo-<backbone>-<size>``.
        backbone: registry name of the backbone (`edgetl.models.list_models`).
        width: channels of every neck and head level.
        depth: residual depthwise blocks per neck fusion and per head branch.
        params_m: parameters in millions with `PARAMS_CLASSES` classes (a test checks it against the built model).
    """

    name: str
    backbone: str
    width: int
    depth: int
    params_m: float | None = None


_BACKBONES = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1", "mbv3": "mobilenetv3_large_100",
              "mbv2": "mobilenetv2_100"}
_SIZES = {"n": (64, 1), "s": (96, 2)}
_PARAMS_M = {
    "yolo-lite0-n": 3.11, "yolo-lite0-s": 3.36, "yolo-lite1-n": 3.88, "yolo-lite1-s": 4.13,
    "yolo-mbv2-n": 1.97, "yolo-mbv2-s": 2.21, "yolo-mbv3-n": 3.17, "yolo-mbv3-s": 3.44,
}
_DETECTORS: dict[str, DetectorInfo] = {
    f"yolo-{short}-{size}": DetectorInfo(f"yolo-{short}-{size}", backbone, *_SIZES[size],
                                         params_m=_PARAMS_M.get(f"yolo-{short}-{size}"))
    for short, backbone in _BACKBONES.items()
    for size in _SIZES
}
DEFAULT_DETECTOR = "yolo-lite0-n"


def list_detectors(pattern: str = "*") -> list[str]:
    """Detector names matching a shell-style pattern (``yolo-lite0-*``)."""
    return sorted(n for n in _DETECTORS if fnmatch.fnmatch(n, pattern))


def get_detector_info(name: str) -> DetectorInfo:
    """Look up a detector configuration; unknown names get close matches in the error."""
    try:
        return _DETECTORS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_DETECTORS), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known detectors: {', '.join(list_detectors())}"
        raise BadInputError(f"unknown detector {name!r}", hint=hint) from None
