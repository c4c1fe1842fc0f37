"""Object detection: a YOLO-style anchor-free detector on registry backbones, its loss and evaluation.

Training it is `edgetl.train.detect`, on the training core both tasks share.

Importing this package does not import torch; the submodules do.
"""

DETECTOR_SIZES = ("n", "s")


def list_detectors(pattern: str = "*") -> list[str]:
    """Detector names matching a shell-style pattern; see `edgetl.models.detectors.list_detectors`."""
    from edgetl.models.detectors import list_detectors as _list

    return _list(pattern)


def build_detector(*args, **kwargs):
    """Build a named detector; see `edgetl.detect.model.build_detector`."""
    from edgetl.detect.model import build_detector as _build

    return _build(*args, **kwargs)


__all__ = ["DETECTOR_SIZES", "build_detector", "list_detectors"]
