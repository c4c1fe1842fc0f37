"""How long `edgetl demo` takes and how much memory it needs, measured the way a user meets it.

Each run is a fresh ``edgetl demo --json`` subprocess (Python start-up and imports included, nothing
cached between runs: the demo replaces its output directory). Per run: wall time, peak resident memory
of the process (``os.wait4``'s rusage of that child), the exit code, the demo's own per-step times and
its results. The README's demo time comes from ``benchmarks/results/demo.json``.

    python benchmarks/demo.py [--runs 1] [--quick] [--out benchmarks/results/demo.json]

Exit code 0 when every run ended as the demo should (0: the INT8 model passed its gate, 1: it failed it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "demo.json"


def _edgetl() -> list[str]:
    """The ``edgetl`` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("edgetl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edgetl.cli.main"]


def run_once(workdir: Path, quick: bool) -> dict[str, Any]:
    """One demo in a subprocess: wall time, peak RSS, exit code, and the demo's JSON document."""
    out_dir = workdir / "demo"
    command = [*_edgetl(), "demo", "--out", str(out_dir), "--json", *(["--quick"] if quick else [])]
    stdout_path, stderr_path = workdir / "stdout.json", workdir / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    record: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "exit_code": process.returncode,
    }
    try:
        document = json.loads(stdout_path.read_text())
    except json.JSONDecodeError:
        record["error"] = stderr_path.read_text()[-2000:]
        return record
    summary = document.get("summary", {})
    record.update(
        steps_s=document.get("steps_s"),
        validation_passed=document.get("validation_passed"),
        top1=summary.get("top1"),
        agreement_fp32_int8=summary.get("agreement_fp32_int8"),
        latency_ms_b1=summary.get("latency_ms_b1"),
        size_bytes=summary.get("size_bytes"),
        settings=summary.get("settings"),
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="demo runs, one after the other")
    parser.add_argument("--quick", action="store_true", help="time `edgetl demo --quick` instead")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_before = round(os.getloadavg()[0], 2)  # other work on the machine inflates the times
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="edgetl-demo-bench-") as tmp:
            record = run_once(Path(tmp), args.quick)
        runs.append(record)
        top1 = record.get("top1") or {}
        print(f"run {i + 1}/{args.runs}: {record['wall_s']:.1f} s wall, {record['cpu_s']:.1f} s CPU, peak RSS "
              f"{record['peak_rss_mb']:.0f} MB, exit {record['exit_code']}, FP32 top-1 "
              f"{100 * top1.get('fp32', 0):.1f}%, INT8 {100 * top1.get('int8', 0):.1f}%", file=sys.stderr)
    ok = all(r["exit_code"] in (0, 1) and "error" not in r for r in runs)
    walls = [r["wall_s"] for r in runs]
    document = {
        "benchmark": "demo",
        "command": "edgetl demo --json" + (" --quick" if args.quick else ""),
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "load_average_1m_before": load_before, "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "runs": runs,
        "wall_s": {"median": statistics.median(walls), "min": min(walls), "max": max(walls)},
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "all_runs_ok": ok,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from edgetl.fileio import write_json

    write_json(args.out, document)
    print(json.dumps({k: document[k] for k in ("command", "wall_s", "peak_rss_mb", "all_runs_ok")}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
