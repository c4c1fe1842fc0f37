"""Validate a candidate model against the FP32 reference: metrics, agreement, latency, size, and a gate.

Submodules (``metrics``, ``samples``) are light and imported by other stages; the public API is loaded
on first use so that importing them does not pull in the whole validation stack.
"""

from typing import Any

__all__ = ["ValidationReport", "validate_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgetl.validate import api

        return getattr(api, name)
    raise AttributeError(name)
