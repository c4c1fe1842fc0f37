"""Parity of the exported graph with the PyTorch model on real preprocessed images.

An export that silently changes the numbers is worse than no export: `check_parity` measures the
largest absolute difference of every output and the top-1 agreement, and `ParityError` stops the
export when they are off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl.errors import GateFailedError
from edgetl.lazy import lazy_import

torch = lazy_import("torch", "train", purpose="the export parity check")


class ParityError(GateFailedError):
    """ONNX Runtime and PyTorch disagree on the exported model (exit code 1)."""


@dataclass(frozen=True)
class ParityTolerance:
    """Export is accepted when ``max_abs <= atol + rtol * max|reference|`` and top-1 agrees on every image."""

    atol: float = 1e-3
    rtol: float = 1e-4


def torch_outputs(model: Any, batch: np.ndarray, output_names: list[str], chunk: int = 16, *,
                  device: str = "cpu") -> dict[str, np.ndarray]:
    """Run the eager model on a NCHW batch (on the model's ``device``); outputs by name, as float32 numpy."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in output_names}
    with torch.inference_mode():
        for start in range(0, len(batch), chunk):
            out = model(torch.from_numpy(batch[start:start + chunk]).to(device))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for name, value in zip(output_names, outs):
                parts[name].append(value.detach().float().cpu().numpy())
    return {n: np.concatenate(v) for n, v in parts.items()}


def backend_outputs(backend: Any, batch: np.ndarray, *, fixed_batch: int | None = None, chunk: int = 16
                    ) -> dict[str, np.ndarray]:
    """Run a `Backend` over a batch in chunks (of exactly ``fixed_batch`` for fixed-batch graphs)."""
    step = fixed_batch or chunk
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(batch), step):
        piece = batch[start:start + step]
        real = len(piece)
        if fixed_batch and real < fixed_batch:  # pad the last chunk, drop the padding afterwards
            piece = np.concatenate([piece, np.repeat(piece[-1:], fixed_batch - real, axis=0)])
        for name, value in backend.infer(piece).items():
            parts.setdefault(name, []).append(value[:real])
    return {n: np.concatenate(v) for n, v in parts.items()}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *, classify: bool,
                    tolerance: ParityTolerance = ParityTolerance()) -> dict[str, Any]:
    """Per-output max/mean abs diff, top-1 agreement (classifiers) and a ``passed`` verdict."""
    report: dict[str, Any] = {"outputs": {}, "images": 0, "passed": True, "tolerance": vars(tolerance)}
    for name, ref in reference.items():
        cand = candidate[name].astype(np.float64)
        ref64 = ref.astype(np.float64)
        diff = np.abs(ref64 - cand)
        limit = tolerance.atol + tolerance.rtol * float(np.abs(ref64).max(initial=0.0))
        entry = {"max_abs_diff": float(diff.max(initial=0.0)),
                 "mean_abs_diff": float(diff.mean()) if diff.size else 0.0, "limit": limit}
        entry["passed"] = entry["max_abs_diff"] <= limit
        report["outputs"][name] = entry
        report["images"] = int(ref.shape[0])
        report["passed"] &= entry["passed"]
    if classify:
        name = next(iter(reference))
        agree = float(np.mean(reference[name].argmax(1) == candidate[name].argmax(1))) if len(reference[name]) else 1.0
        report["top1_agreement"] = agree
        report["passed"] &= agree == 1.0
    report["max_abs_diff"] = max((o["max_abs_diff"] for o in report["outputs"].values()), default=0.0)
    return report
