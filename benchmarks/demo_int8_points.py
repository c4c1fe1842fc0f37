"""Where the demo classifier's INT8 error sits: each quantization point put back in float alone, on held-out images.

`benchmarks/int8_error_sources.py` ranks the quantization points of the ImageNet Lite0 this way and finds two
points holding half of the logit error there. This script asks the same of the model users deploy after
``edgetl demo``: the Fashion-MNIST classifier's TensorRT-format INT8 bundle (PTQ with the defaults) and
Fashion-MNIST's official test images, both as `benchmarks/qat.py` leaves them in its working directory (run it
first). Each point (a layer: its weights and its input pair; an activation tensor: its pair) is put back in float
alone and the model scored in exact numerics (ONNX Runtime, graph optimizations off) against FP32 on ``--images``
class-balanced test images: the share of the logit error variance it carries, the largest first, and how many of
the largest points hold half of the error. A remedy aimed at one tensor (a finer step, a split channel) can only
remove what that tensor carries.

    python benchmarks/demo_int8_points.py [--work /tmp/edgetl-qatbench] [--images 2000]

Writes benchmarks/results/demo_int8_points.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "demo_int8_points.json"
TOP = 12


def held_out(bundle: Any, folder: Path, count: int) -> tuple[np.ndarray, int]:
    """``count`` class-balanced images of ``folder`` (seeded), preprocessed as ``bundle`` preprocesses; and how
    many the folder holds."""
    from edgetl.data.imagesets import balanced_indices, decode, find_images

    images = find_images(folder, split="all", labels=bundle.labels)
    picked = images.subset(balanced_indices(images.labels, min(count, len(images.paths)), 0))
    return np.ascontiguousarray(decode(picked, bundle.preprocess).batch, dtype=np.float32), len(images.paths)


def half_holders(ranked: list[dict[str, Any]]) -> int | None:
    """How many of the largest points together carry half of the error variance (None if all of them do not)."""
    total = 0.0
    for count, point in enumerate(ranked, start=1):
        total += max(point["variance_share"], 0.0)
        if total >= 0.5:
            return count
    return None


def main() -> int:
    import onnx
    from int8_error_sources import compare, run, variance_shares
    from quantization import publish

    from edgetl.bundle import open_bundle
    from edgetl.quantize.int8 import Int8Settings
    from edgetl.quantize.qdq_edit import list_units
    from edgetl.quantize.shift import int8_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-qatbench",
                        help="benchmarks/qat.py's working directory (its ptq bundle and fashion-test images)")
    parser.add_argument("--images", type=int, default=2000, help="held-out test images scored per point")
    args = parser.parse_args()
    bundle_dir, test_dir = args.work / "ptq", args.work / "fashion-test"
    if not (bundle_dir / "model.int8.onnx").is_file() or not test_dir.is_dir():
        print(f"error: {bundle_dir}/model.int8.onnx or {test_dir} is missing; run `python benchmarks/qat.py "
              f"--out {args.work}` first (it builds the demo's bundle and Fashion-MNIST's test images there)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    bundle = open_bundle(bundle_dir, verify=False)
    batch, available = held_out(bundle, test_dir, args.images)
    fp32 = onnx.load(str(bundle_dir / "model.onnx"))
    quantized = onnx.load(str(bundle_dir / "model.int8.onnx"))
    reference_graph = int8_reference(fp32, Int8Settings())[0]  # the centred graph the TensorRT format quantizes
    reference = run(fp32, batch)
    whole = compare(run(quantized, batch), reference)
    units = list_units(quantized, reference_graph)
    print(f"{len(units)} points, {len(batch)} images each...", file=sys.stderr)
    base, ranked = variance_shares(quantized, units, reference_graph, batch, reference)
    shares = [p["variance_share"] for p in ranked]
    result = {
        "benchmark": "demo_int8_points", "command": "python benchmarks/demo_int8_points.py",
        "model": "edgetl demo classifier (EfficientNet-Lite0, linear probe, 128 px, Fashion-MNIST sample)",
        "format": "tensorrt (int8 activations, the defaults), exact numerics",
        "images": int(len(batch)), "test_images_available": available,
        "whole_model": {**whole, "flips": int(round((1 - whole["agreement"]) * len(batch)))},
        "points": len(ranked), "largest_share": shares[0] if shares else None,
        "points_above_5_percent": sum(s > 0.05 for s in shares),
        "largest_points_holding_half": half_holders(ranked),
        "sum_of_shares": round(sum(max(s, 0.0) for s in shares), 3), "logit_rmse": round(base ** 0.5, 4),
        "top": ranked[:TOP], "seconds": round(time.perf_counter() - t0, 1),
    }
    lines = ["| point (default graph) | share of the logit error variance | agreement without it |", "|---|---|---|"]
    lines += [f"| {p['kind']} {p['name']} | {100 * p['variance_share']:.1f} % | {100 * p['agreement']:.2f} % |"
              for p in ranked[:TOP]]
    lines.append(f"whole model: agreement {100 * whole['agreement']:.2f} %, logit RMSE {whole['logit_rmse']}; "
                 f"{len(ranked)} points, largest share {100 * shares[0]:.1f} %, "
                 f"{result['points_above_5_percent']} above 5 %, half of the error held by the largest "
                 f"{result['largest_points_holding_half']}")
    result["table"] = "\n".join(lines)
    publish(RESULTS, result, result["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
