"""INT8 on an x86-64 CPU without VNNI, emulated: what ONNX Runtime computes there, and what edgetl does about it.

On x86-64 without VNNI, ONNX Runtime's 8-bit matrix kernels add pairs of products in 16-bit registers and saturate
(`edgetl.runtime.cpu`). Two remedies exist: the session option ``session.x64quantprecision=1`` (what edgetl's
runtime sets on such a CPU) and 7-bit weights on the non-depthwise layers (``edgetl quantize --reduce-range``).
This benchmark runs ImageNet EfficientNet-Lite0 (`benchmarks/quantization.py`'s model, crops and calibration) in
a process emulated by ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA, no AVX-512, no VNNI: the CPU that process's
instruction set detection sees is recorded), and scores each INT8 bundle's top-1 agreement and logit RMSE against
FP32 under that CPU's kernels, with and without the session option, beside the same bundles on this machine
(exact numerics and this machine's kernels).

Accuracy only: an emulated CPU's times are not that CPU's, so no speed is reported here.

    python benchmarks/non_vnni.py [--work /tmp/edgetl-qbench] [--crops 200]

Needs ``qemu-x86_64`` (Debian: ``qemu-user``). Writes benchmarks/results/non_vnni.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "non_vnni.json"
#: Bundles scored: name -> `quantize_bundle` keyword arguments (the names `benchmarks/quantization.py` uses).
BUNDLES = {
    "cpu": {"target": "cpu"},
    "cpu-7bit": {"target": "cpu", "reduce_range": True},
    "trt": {"target": "tensorrt"},
}
#: NumPy's names of the CPU features that matter here -> their ``/proc/cpuinfo`` names.
NUMPY_TO_CPUINFO = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni"}
#: The session options compared under the emulated CPU: ONNX Runtime's defaults, and edgetl's runtime's choice
#: on a CPU whose kernels saturate.
OPTIONS = {"default kernels": {}, "x64quantprecision=1": {"session.x64quantprecision": "1"}}

# Runs under the emulated CPU: reports what that CPU offers, then each bundle's logits under each option.
_CHILD = """
import json, sys
import numpy as np
import onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as features
spec = json.loads(sys.argv[1])
batch = np.load(spec["batch"])
print(json.dumps({"cpu_features": sorted(k for k, v in features.items() if v)}), flush=True)
for job in spec["jobs"]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    for key, value in job["config"].items():
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(job["path"], opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: batch[k:k + 25]})[0] for k in range(0, len(batch), 25)])
    np.save(job["out"], logits)
    print(json.dumps({"done": job["out"]}), flush=True)
"""


def bundles(work: Path, base: Path, calib: Path) -> dict[str, Path]:
    """Each bundle of `BUNDLES`, reused from an earlier run when its settings match today's defaults."""
    from quantization import reused_int8

    return {name: reused_int8(work / name, base, calib, **kwargs) for name, kwargs in BUNDLES.items()}


def emulated(qemu: str, cpu: str, batch_path: Path, jobs: list[dict[str, Any]]) -> list[str]:
    """Run `_CHILD` under ``qemu -cpu CPU``; the CPU features its process saw."""
    spec = json.dumps({"batch": str(batch_path), "jobs": jobs})
    run = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", _CHILD, spec], capture_output=True, text=True,
                         check=False)
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or len(lines) != len(jobs) + 1:
        raise SystemExit(f"emulated run failed (exit {run.returncode}): {run.stderr[-2000:]}")
    return lines[0]["cpu_features"]


def main() -> int:
    import quantization as q
    from int8_error_sources import compare as score

    from edgetl.runtime.cpu import EXACT_INT8_FLAGS, int8_kernels_saturate

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--crops", type=int, default=200,
                            help="evaluation crops (emulated, about a second per crop and variant)")
        parser.add_argument("--cpu", default="Haswell", help="the emulated CPU model (qemu -cpu)")
        parser.add_argument("--out", default=str(RESULTS))

    args = q.work_args(__doc__.split("\n\n")[0], options)
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("qemu-x86_64 not found: apt-get install qemu-user", file=sys.stderr)
        return 2
    work = Path(args.work)
    calib, evaluation, base = q.workspace(work)
    paths = bundles(work, base, calib)
    batch = q.crops(base, evaluation, args.crops)
    scratch = work / "non-vnni"
    scratch.mkdir(exist_ok=True)
    batch_path = scratch / "batch.npy"
    np.save(batch_path, batch)
    reference = q.outputs(base / "model.onnx", batch, "exact")
    rows: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        rows[name] = {"weight_bits": 7 if BUNDLES[name].get("reduce_range") else 8,
                      "exact": score(q.outputs(path, batch, "exact"), reference),
                      "this machine": score(q.outputs(path, batch, "device"), reference)}
    jobs = [{"path": str(path), "config": config, "out": str(scratch / f"{name}-{k}.npy"), "row": name,
             "option": option} for name, path in paths.items() for k, (option, config) in enumerate(OPTIONS.items())]
    t0 = time.perf_counter()
    features = emulated(qemu, args.cpu, batch_path, [{k: j[k] for k in ("path", "config", "out")} for j in jobs])
    seconds = time.perf_counter() - t0
    for job in jobs:
        rows[job["row"]][f"emulated {args.cpu}, {job['option']}"] = score(np.load(job["out"]), reference)
    # What edgetl's runtime decides on the emulated CPU, from the instruction sets that CPU reports.
    flags = frozenset(cpuinfo for feature, cpuinfo in NUMPY_TO_CPUINFO.items() if feature in features)
    saturates = int8_kernels_saturate("x86_64", flags=flags)
    vnni = sorted(flags & EXACT_INT8_FLAGS)
    result = {
        "benchmark": "non_vnni", "command": "python benchmarks/non_vnni.py", "model": "efficientnet_lite0 (ImageNet)",
        "crops": len(batch), "emulated_cpu": args.cpu, "emulated_cpu_features": features,
        "emulated_cpu_vnni": vnni, "runtime_sets_x64quantprecision": saturates,
        "emulation_seconds": round(seconds, 1),
        "note": "accuracy only: times under emulation are not the emulated CPU's",
        "rows": rows,
    }
    columns = ["exact", "this machine", *(f"emulated {args.cpu}, {o}" for o in OPTIONS)]
    lines = [f"EfficientNet-Lite0 (ImageNet), {len(batch)} crops, top-1 agreement with FP32 (logit RMSE); "
             f"emulated CPU {args.cpu}: VNNI {vnni or 'none'}, edgetl's runtime sets x64quantprecision: {saturates}",
             "| bundle | weights | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, row in rows.items():
        cells = [f"{row[c]['agreement'] * 100:.1f} % ({row[c]['logit_rmse']:.3f})" for c in columns]
        lines.append(f"| {name} | {row['weight_bits']}-bit | " + " | ".join(cells) + " |")
    q.publish(Path(args.out), result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
