"""A PyTorch reference for validation: an edgetl checkpoint behind the `Backend` protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl.runtime.backends.base import Backend


class TorchCheckpointBackend(Backend):
    """Runs an edgetl checkpoint in PyTorch eager mode on CPU (validation reference only; not for devices).

    Args:
        artifact: the ``.pt`` checkpoint.
    """

    name = "torch"

    def __init__(self, artifact: str | Path) -> None:
        super().__init__(artifact)
        from edgetl.train.checkpoint import build_from_checkpoint

        self.model, self.meta = build_from_checkpoint(self.artifact)
        self.output_names = ["logits"] if self.meta.task == "classify" else list(
            getattr(self.model, "onnx_output_names", ["output"]))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from edgetl.export.parity import torch_outputs

        return torch_outputs(self.model, np.ascontiguousarray(batch, dtype=np.float32), self.output_names)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "artifact": str(self.artifact), "device": "cpu"}
