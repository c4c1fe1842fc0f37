"""The PyTorch reference backend: an edgetl checkpoint behind the runtime's `Backend` interface.

It serves validation (the FP32 reference when ``--reference`` is a checkpoint), ``edgetl predict
--backend torch`` and the baseline rows of ``edgetl bench``. It lives with validation, not in the
device runtime, because it needs torch and the training code; importing this module registers it with
the runtime (`edgetl.runtime.extensions`), which then offers ``backend="torch"`` by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl import lazy
from edgetl.export.parity import torch_outputs
from edgetl.lazy import lazy_import
from edgetl.runtime import extensions
from edgetl.runtime.backends.base import Backend

torch = lazy_import("torch", "train", purpose="the PyTorch reference backend")


class TorchBackend(Backend):
    """An edgetl checkpoint rebuilt as a PyTorch model in eval mode.

    Args:
        artifact: path of an edgetl checkpoint (``.pt``).
        device: ``auto``/``cpu`` (CPU) or ``cuda``.
        threads: torch intra-op threads (0: torch's default).
    """

    name = "torch"

    def __init__(self, artifact: str | Path, *, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(artifact)
        from edgetl.train.checkpoint import build_from_checkpoint

        self.device = "cpu" if device in ("auto", "cpu") else device
        if threads:
            torch.set_num_threads(threads)
        model, meta = build_from_checkpoint(self.artifact, map_location=self.device)
        self.model = model.to(self.device).eval()
        self.task = meta.task
        self.input_name = "input"
        names = getattr(model, "onnx_output_names", None)
        self.output_names = ["logits"] if meta.task == "classify" or not names else list(names)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return torch_outputs(self.model, np.ascontiguousarray(batch, dtype=np.float32), self.output_names,
                             device=self.device)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "artifact": str(self.artifact),
            "device": self.device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }

    def close(self) -> None:
        self.model = None


if lazy.available("torch"):  # offered only where it can run
    extensions.register_backend("torch", TorchBackend)
