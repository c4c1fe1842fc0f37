"""Quantize cost: the first INT8 quantize of this tree against an earlier revision's, in the same run.

The workload is `benchmarks/quantization.py`'s first quantize: the ImageNet EfficientNet-Lite0 bundle, 300
calibration photo crops at 224 px, the TensorRT format with today's defaults (streamed statistics with the
input-patch moments, GPTQ rounding, bias correction, the sequential correction in exact numerics, the golden
check). Each run is a child process on a fresh copy of the FP32 bundle, importing edgetl from either this tree or
the baseline revision's files (``git archive``); the two alternate, ``--rounds`` times each, so that machine load
hits both alike. Recorded per run: wall time, the calibration pass's own seconds, peak RSS (the child's VmHWM) and
the SHA-256 of the INT8 model, which says whether the two trees quantize to the same bytes.

    python benchmarks/quantize_cost.py --baseline REV [--rounds 2] [--work /tmp/edgetl-qbench]

Writes benchmarks/results/quantize_cost.json.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quantization import _PEAK_RSS, publish, work_args, workspace

ROOT = Path(__file__).resolve().parent.parent

_CHILD = _PEAK_RSS + """
import hashlib, json, sys, time
import edgetl
from edgetl.quantize import quantize_bundle
t0 = time.perf_counter()
r = quantize_bundle(sys.argv[1], "int8", calib_data=sys.argv[2], calib_size=300, target="tensorrt")
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                  "calibration_seconds": r.info["calibration"]["seconds"],
                  "sequential_seconds": (r.info.get("sequential_correction_result") or {}).get("seconds"),
                  "int8_sha256": hashlib.sha256(r.path.read_bytes()).hexdigest(), "edgetl": edgetl.__file__}))
"""


def baseline_tree(revision: str, into: Path) -> str:
    """``revision``'s files under ``into`` (``git archive``, extracted with tarfile's data filter); its full hash."""
    full = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", full], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return full


def run_once(tree: Path, exported: Path, calib: Path, scratch: Path) -> dict:
    bundle = scratch / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(exported, bundle)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), str(calib)], env=env, check=True,
                          capture_output=True, text=True, cwd=scratch)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result.pop("edgetl")).is_relative_to(tree):
        raise RuntimeError(f"the child imported edgetl from outside {tree}")
    return result


def summary(runs: list[dict]) -> dict:
    return {key: round(statistics.median(r[key] for r in runs), 2)
            for key in ("seconds", "calibration_seconds", "sequential_seconds", "peak_rss_mb")
            if all(r.get(key) is not None for r in runs)}


def main() -> int:
    args = work_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--baseline", required=True, help="the git revision to compare against"),
        p.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternating")))
    from edgetl.runtime.cpu import describe, usable_cpus

    calib, _, exported = workspace(Path(args.work))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-cost-") as tmp:
        scratch = Path(tmp)
        old_tree = scratch / "baseline"
        revision = baseline_tree(args.baseline, old_tree)
        trees = {"baseline": old_tree, "this tree": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_once(tree, exported, calib, scratch))
                print(f"round {round_ + 1} {name}: {runs[name][-1]['seconds']:.1f} s", file=sys.stderr)
    medians = {name: summary(r) for name, r in runs.items()}
    same = len({r["int8_sha256"] for rs in runs.values() for r in rs}) == 1
    ratio = medians["baseline"]["seconds"] / medians["this tree"]["seconds"]
    results = {"benchmark": "quantize_cost",
               "command": f"python benchmarks/quantize_cost.py --baseline {args.baseline}",
               "baseline_revision": revision, "machine": describe(), "cpus": usable_cpus(),
               "workload": "EfficientNet-Lite0 (ImageNet), 300 calibration crops at 224 px, --target tensorrt, "
                           "defaults",
               "runs": runs, "median": medians, "speedup": round(ratio, 3), "same_int8_model": same,
               "seconds": round(time.perf_counter() - t_start, 1)}
    lines = [f"first quantize, {usable_cpus()} CPU(s), median of {args.rounds} (same INT8 bytes: {same})",
             "| tree | wall s | calibration s | sequential correction s | peak RSS MB |", "|---|---|---|---|---|"]
    for name, m in medians.items():
        lines.append(f"| {name} | {m['seconds']:.1f} | {m['calibration_seconds']:.1f} | "
                     f"{m.get('sequential_seconds', float('nan')):.1f} | {m['peak_rss_mb']:.0f} |")
    lines.append(f"this tree: {ratio:.2f}x the baseline's speed")
    results["table"] = "\n".join(lines)
    publish(Path(__file__).parent / "results" / "quantize_cost.json", results, results["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
