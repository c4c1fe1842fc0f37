"""The protocol every inference backend follows, so reference and candidate run through identical code.

A backend has a lifecycle (Polygraphy-style runners): buffers and sessions are created in the
constructor (``activate``), ``infer`` is called any number of times, ``close`` frees them. Backends
are context managers.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np


class Backend(abc.ABC):
    """One loaded model artifact on one device.

    Attributes:
        name: backend name (``onnxruntime``, ``tensorrt``, ``torch``).
        artifact: path of the loaded file.
        input_name: the model's input tensor name.
        output_names: output tensor names in model order.
    """

    name: str = "base"

    def __init__(self, artifact: str | Path) -> None:
        self.artifact = Path(artifact)
        self.input_name: str = "input"
        self.output_names: list[str] = []

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one NCHW float32 batch; returns outputs by name (host numpy arrays)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What was loaded where, and why (provider/engine/device), for logs and ``--json``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free sessions and device buffers. Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
