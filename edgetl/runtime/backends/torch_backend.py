"""PyTorch backend, for reference runs and the baseline column of ``edgetl bench`` only.

A device never needs it: torch is imported when the backend is created, not when this module is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import optional_import
from edgetl.runtime.backends.base import Backend


class TorchBackend(Backend):
    """An edgetl checkpoint rebuilt as a PyTorch model in eval mode.

    Args:
        artifact: path of an edgetl checkpoint (``.pt``).
        device: ``cpu`` or ``cuda``.
    """

    name = "torch"

    def __init__(self, artifact: str | Path, *, device: str = "cpu") -> None:
        super().__init__(artifact)
        self._torch = optional_import("torch", "train", purpose="the PyTorch reference backend")
        from edgetl.train.checkpoint import build_from_checkpoint

        self.device = "cpu" if device in ("auto", "cpu") else device
        model, meta = build_from_checkpoint(self.artifact, map_location=self.device)
        self.model = model.to(self.device).eval()
        self.task = meta.task
        self.input_name = "input"
        names = getattr(model, "onnx_output_names", None)
        self.output_names = list(names) if names else ["logits"]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        outs = out if isinstance(out, (tuple, list)) else [out]
        if isinstance(out, dict):
            outs = [out[n] for n in self.output_names]
        return {n: t.detach().float().cpu().numpy() for n, t in zip(self.output_names, outs)}

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "artifact": str(self.artifact),
            "device": self.device,
            "torch": self._torch.__version__,
            "threads": self._torch.get_num_threads(),
        }

    def close(self) -> None:
        self.model = None
