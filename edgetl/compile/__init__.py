"""TensorRT engine building for a bundle, with compatibility keys that say where each engine runs.

`compile_bundle` is imported lazily so that ``edgetl.compile.compat`` (used by the runtime's engine
selection) stays light; nothing here imports tensorrt until a build starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BuildOptions", "CompileResult", "compile_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgetl.compile import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'edgetl.compile' has no attribute {name!r}")
