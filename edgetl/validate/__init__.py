"""Validate a candidate model against the FP32 reference: metrics, agreement, latency, size, and a gate.

The scores it uses are `edgetl.metrics`, and its image samples `edgetl.data.imagesets`, both in layers
below every stage; the public API is loaded on first use so that importing a submodule (the PyTorch
reference backend) does not pull in the whole validation stack.
"""

from typing import Any

__all__ = ["ValidationReport", "validate_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgetl.validate import api

        return getattr(api, name)
    raise AttributeError(name)
