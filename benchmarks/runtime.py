"""Device runtime speed: ONNX Runtime FP32 vs INT8 vs the PyTorch checkpoint, batch 1 and 8.

Uses a bundle made by `edgetl demo` (default ``./edgetl-demo``; run ``edgetl demo --quick`` first) and
prints the table of `edgetl bench` with speed-ups relative to PyTorch measured in the same run.
Results go to ``benchmarks/results/runtime.json``.

    python benchmarks/runtime.py [--demo-dir edgetl-demo] [--iters 30] [--threads 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgetl.fileio import write_json
from edgetl.runtime.bench import bench_bundle, format_bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="edgetl-demo")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="threads for ORT and torch (0: defaults)")
    args = parser.parse_args()
    demo = Path(args.demo_dir)
    bundle, checkpoint = demo / "bundle", demo / "run" / "best.pt"
    if not (bundle / "manifest.json").is_file():
        print(f"no demo bundle in {demo}: run `edgetl demo --quick --out {demo}` first", file=sys.stderr)
        return 2
    report = bench_bundle(bundle, batches=(1, 8), iters=args.iters, warmup=5, threads=args.threads,
                          checkpoint=checkpoint if checkpoint.is_file() else None)
    print(format_bench(report))
    out = Path(__file__).parent / "results" / "runtime.json"
    write_json(out, report)
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
