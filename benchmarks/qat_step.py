"""One QAT training step: edgetl's activation quantizer against PyTorch's own ops, on the demo's classifier.

QAT (`edgetl.quantize.qat_graph`) runs the PTQ graph as a torch module. Each activation quantizer clamps its input
to the interval whose codes are in range and keeps a float mask (`qat_graph.fake_quant`), and a ReLU6 read only
by its quantizer is folded into that interval (`qat_graph.clipped_interval`). The baseline runs the same graph
with PyTorch's own ops: each Clip as ``torch.clamp``, each quantizer as ``torch.fake_quantize_per_tensor_affine``.
Both modes must give the same outputs and the same gradients, bit for bit (checked here on one batch), so the
only difference is time and memory.

Model and data: the demo's classifier, TensorRT-format PTQ bundle (EfficientNet-Lite0 at 128 px) and its
training images, as `benchmarks/qat.py` leaves them in its working directory (run it first). Each mode runs in
its own child process (peak RSS from ``os.wait4``): ``--steps`` Adam steps of batch 32 (the QAT default), the
first two not timed, with the allocator settings QAT uses (`edgetl.train.cpu_memory.keep_freed_memory`).

    python benchmarks/qat_step.py [--work /tmp/edgetl-qatbench] [--steps 12]

Writes benchmarks/results/qat_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "qat_step.json"
MODES = ("torch", "edgetl")
BATCH = 32


def load(work: Path, mode: str) -> tuple[Any, np.ndarray]:
    """The PTQ bundle's QAT module in ``mode`` and one batch of its training images."""
    import onnx

    from edgetl.bundle import open_bundle
    from edgetl.data.imagesets import decode, find_images
    from edgetl.quantize.qat_graph import QdqModule

    bundle = open_bundle(work / "ptq", verify=False)
    module = QdqModule.create(onnx.load(str(bundle.root / "model.int8.onnx")), onnx.load(str(bundle.root /
                                                                                             "model.onnx")))
    if mode == "torch":
        use_torch_ops(module)
    images = find_images(bundle.dataset, split="train", labels=bundle.labels)
    batch = decode(images.subset(list(range(BATCH))), bundle.preprocess).batch
    return module, np.ascontiguousarray(batch, dtype=np.float32)


def use_torch_ops(module: Any) -> None:
    """Run every Clip as ``torch.clamp`` and every activation quantizer as ``torch.fake_quantize_per_tensor_affine``
    (the TensorRT format: symmetric int8, zero point 0)."""
    import torch

    from edgetl.quantize import qat_graph

    module.folded_clips, module.clip_interval = set(), {}

    class TorchFakeQuant:
        @staticmethod
        def apply(x: Any, scale: float, first: float, last: float) -> Any:
            """The code range back from the input interval ``[first, last]``."""
            inverse = qat_graph.reciprocal(scale)
            low, high = (int(np.round(np.float32(edge) * inverse)) for edge in (first, last))
            return torch.fake_quantize_per_tensor_affine(x, scale, 0, low, high)

    qat_graph.fake_quant = lambda: TorchFakeQuant


def identical(work: Path) -> dict[str, Any]:
    """Both modes' outputs and parameter gradients on one batch: equal bit for bit?"""
    import torch

    from edgetl.quantize import qat_graph

    original = qat_graph.fake_quant
    results = []
    for mode in MODES:
        module, batch = load(work, mode)
        out = module(torch.from_numpy(batch))[module.output_names[0]]
        out.square().sum().backward()
        results.append((out.detach(), {k: p.grad for k, p in module.params.items()}))
        qat_graph.fake_quant = original
    (out_a, grads_a), (out_b, grads_b) = results
    return {"outputs_equal": bool(torch.equal(out_a, out_b)),
            "gradients_equal": all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a),
            "parameters": len(grads_a)}


def child_main(work: Path, mode: str, steps: int) -> None:
    import torch

    from edgetl.train.cpu_memory import keep_freed_memory

    keep_freed_memory()
    module, batch = load(work, mode)
    x = torch.from_numpy(batch)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = module(x)[module.output_names[0]].square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    print(json.dumps({"median_step_s": round(float(np.median(times[2:])), 4),
                      "steps_timed": len(times) - 2, "threads": torch.get_num_threads()}))


def run_child(work: Path, mode: str, steps: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--work", str(work), "--steps", str(steps), "--child", mode]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    out = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode}: the child process failed")
    return {**json.loads(out), "wall_s": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-qatbench",
                        help="benchmarks/qat.py's working directory (its ptq bundle)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.work, args.child, args.steps)
        return 0
    if not (args.work / "ptq" / "model.int8.onnx").is_file():
        print(f"error: {args.work}/ptq/model.int8.onnx is missing; run `python benchmarks/qat.py --out {args.work}` "
              "first (it builds the demo's PTQ bundle there)", file=sys.stderr)
        return 2
    check = identical(args.work)
    modes = {mode: run_child(args.work, mode, args.steps) for mode in MODES}
    document = {
        "benchmark": "qat_step",
        "command": "python benchmarks/qat_step.py",
        "host": {"cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "model": "EfficientNet-Lite0, edgetl demo classifier, TensorRT-format PTQ graph, batch 32 at 128 px",
        "baseline": "torch: each Clip as torch.clamp, each activation quantizer torch.fake_quantize_per_tensor_affine",
        "same_numbers": check,
        "modes": modes,
        "speedup": round(modes["torch"]["median_step_s"] / modes["edgetl"]["median_step_s"], 2),
    }
    from edgetl.fileio import write_json

    write_json(RESULTS, document)
    print(json.dumps(document, indent=1))
    return 0 if check["outputs_equal"] and check["gradients_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
