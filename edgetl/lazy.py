"""The one way edgetl imports an optional or heavy dependency: ``mod = lazy_import("name", "extra")``.

Written at the top of the module that needs it (after Polygraphy's ``mod.lazy_import``), so that:

* importing edgetl never requires torch, TensorRT, ONNX Runtime or the daemon's web stack: the real
  import happens on the first attribute access (``ort.InferenceSession``), inside the call that needs it;
* a missing dependency becomes `MissingDependencyError`, whose message names the extra to install
  (``pip install 'edgetl[tensorrt]'``), never an ImportError traceback;
* every optional dependency a module uses is listed in one place at its top, where a reader and the
  layer test (``tests/core/test_layers.py``, which reads the names passed here) can see it.

The proxy looks the module up on every access instead of caching it: ``sys.modules`` is the cache, so a
test that installs a fake module (``tests/compile/fakegpu.py``) is seen by modules imported before it. The
lookup is a dictionary read once the module is imported (``importlib.import_module`` takes the import lock and
costs about 70 µs a call, which a training loop that touches ``torch.*`` thousands of times per step feels).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

from edgetl.errors import MissingDependencyError
from edgetl.errors import optional_import as require

__all__ = ["LazyModule", "available", "lazy_import", "load", "require"]


def available(name: str) -> bool:
    """Whether ``name`` can be imported here, without importing it (``False`` for a broken parent too)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class LazyModule(ModuleType):
    """A stand-in for a module that imports it on first attribute access.

    Args:
        name: dotted module name.
        extra: the edgetl extra that provides it.
        purpose: what it is needed for, for the message when it is missing.
    """

    def __init__(self, name: str, extra: str, purpose: str | None = None) -> None:
        super().__init__(name)
        object.__setattr__(self, "_lazy_spec", (name, extra, purpose))

    def _load(self) -> ModuleType:
        name, extra, purpose = object.__getattribute__(self, "_lazy_spec")
        module = sys.modules.get(name)
        return module if module is not None else require(name, extra, purpose=purpose)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):  # introspection (copy, inspect) must not raise
            try:
                return getattr(self._load(), attr)
            except MissingDependencyError:
                raise AttributeError(attr) from None
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        name, extra, _ = object.__getattribute__(self, "_lazy_spec")
        return f"<lazy module {name!r} from edgetl[{extra}]>"


def lazy_import(name: str, extra: str, *, purpose: str | None = None) -> Any:
    """A module proxy for ``name`` that imports it on first use (see the module docstring).

    Args:
        name: dotted module name, e.g. ``"tensorrt"`` or ``"edgetl.runtime.backends.tensorrt"``.
        extra: the edgetl extra that provides it, for the message when it is missing.
        purpose: what it is needed for, for that message.
    """
    return LazyModule(name, extra, purpose)


def load(module: Any) -> ModuleType:
    """The real module behind a `lazy_import` proxy (imported now), or ``module`` itself."""
    return module._load() if isinstance(module, LazyModule) else module
