"""Inference backends sharing `Backend`: onnxruntime (here), tensorrt and torch (own modules)."""

from edgetl.runtime.backends.base import Backend

__all__ = ["Backend"]
