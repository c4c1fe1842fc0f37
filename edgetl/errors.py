"""Exception types, each carrying the CLI exit code it maps to.

Library code raises these; `edgetl.cli` turns them into a message on stderr and an exit code in one
place, so no logging call ever doubles as control flow.

Exit codes (docs/architecture.md): 0 success, 1 a validation gate failed, 2 bad usage or bad input,
3 the environment lacks something (GPU, TensorRT, an optional extra, disk space), 4 any other exception (a
bug; the CLI prints its traceback). A filesystem error on a named path is mapped to 2 or 3 by the CLI as
well. 1 means a gate and nothing else, so scripts can branch on it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class EdgetlError(Exception):
    """Base class for every error edgetl raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class BadInputError(EdgetlError):
    """The user's data, file or argument is wrong (exit code 2)."""

    exit_code = 2


class GateFailedError(EdgetlError):
    """A validation gate failed: the candidate model does not match the reference (exit code 1)."""

    exit_code = 1


class EnvironmentMissingError(EdgetlError):
    """The machine lacks something: a GPU, TensorRT, an optional extra, offline weights (exit code 3)."""

    exit_code = 3


class MissingDependencyError(EnvironmentMissingError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class BundleError(BadInputError):
    """A bundle is malformed, corrupt, or from an unsupported schema version."""


def optional_import(module: str, extra: str, *, purpose: str | None = None) -> ModuleType:
    """Import an optional dependency or raise `MissingDependencyError` naming the extra to install.

    Args:
        module: dotted module name, e.g. ``"onnxruntime"``.
        extra: the edgetl extra that provides it, e.g. ``"runtime"``.
        purpose: what it is needed for, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"{module} is not installed{what}: {exc}",
            hint=f"pip install 'edgetl[{extra}]'",
        ) from exc
