"""TensorRT engine building for a bundle, with compatibility keys that say where each engine runs.

The compatibility keys themselves belong to the device side (`edgetl.runtime.compat`), which reads
them to pick an engine; this package writes them. `compile_bundle` is imported lazily, so importing
``edgetl.compile`` imports nothing of TensorRT until a build starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BuildOptions", "CompileResult", "compile_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgetl.compile import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'edgetl.compile' has no attribute {name!r}")
