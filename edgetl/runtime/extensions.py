"""What the workstation side lends the device runtime, registered from above instead of imported from below.

The runtime runs bundles on devices that have no torch; the PyTorch reference backend (``--backend
torch``, bench's baseline rows) and the torch-tensor CUDA allocator live on the workstation side
(`edgetl.validate.torch_backend`, `edgetl.compile.torch_cuda`). Those modules register themselves here
when they are imported, so the runtime can offer them by name without ever importing them: the layer
rule "the device side never imports the workstation side" holds, and a device simply has nothing
registered. `edgetl.cli.common.use_workstation_extensions` imports them where a verb may need them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_BACKENDS: dict[str, Callable[..., Any]] = {}
_CUDA_APIS: dict[str, Callable[[], Any]] = {}


def register_backend(name: str, opener: Callable[..., Any]) -> None:
    """Offer a backend: ``opener(path, *, device, threads)`` returns a `Backend` for a model file."""
    _BACKENDS[name] = opener


def backend_opener(name: str) -> Callable[..., Any] | None:
    """The registered opener for backend ``name``, or None when nothing registered it here."""
    return _BACKENDS.get(name)


def require_backend(name: str) -> Callable[..., Any]:
    """The registered opener for backend ``name``, or `MissingDependencyError` saying how to get it."""
    opener = _BACKENDS.get(name)
    if opener is None:
        from edgetl.errors import MissingDependencyError

        raise MissingDependencyError(
            f"the {name} backend is not available here: it is the workstation's PyTorch reference run, "
            "which needs PyTorch and edgetl's training code",
            hint="pip install 'edgetl[train]' and use the edgetl CLI (or import edgetl.validate.torch_backend), "
                 "or use --backend onnxruntime",
        )
    return opener


def register_cuda_api(name: str, factory: Callable[[], Any]) -> None:
    """Offer a CUDA helper (`edgetl.runtime.backends.cuda_mem.CudaApi`) for when cuda-python is missing."""
    _CUDA_APIS[name] = factory


def cuda_api_factory(name: str) -> Callable[[], Any] | None:
    """The registered CUDA helper factory ``name``, or None."""
    return _CUDA_APIS.get(name)


def cuda_api_names() -> list[str]:
    """Names of the registered CUDA helpers, in registration order."""
    return list(_CUDA_APIS)
