"""INT8 quantization benchmark: accuracy in each numerics, speed and quantize cost, before and after, one run.

Model: the ImageNet-pretrained EfficientNet-Lite0 itself (``--model`` names another registered classifier, e.g.
``mobilenetv3_large_100``, whose ImageNet weights come from its offline source or ``--weights FILE``; edgetl never
downloads them, so without them the run stops and says where to put them), on real photos shipped with
scikit-image. The photos are split in two disjoint halves: random crops of one half calibrate (300), random crops
of the other are evaluated (400), so no evaluated pixel was seen in calibration. The score is top-1 agreement with
FP32 (the photos have no ImageNet labels), in two numerics:

- ``exact``: ONNX Runtime with graph optimizations off, every DequantizeLinear feeding a float op: the QDQ
  graph's integer-exact result, what TensorRT and VNNI/AMX CPUs compute;
- ``device``: ONNX Runtime's fused integer kernels on this machine (`edgetl.runtime.cpu` says whether they
  saturate here; ``machine`` in the JSON records it).

Variants (all through `edgetl.quantize.quantize_bundle`, per-channel weights, each format's default ranges unless
named: ``mse-unbounded`` for the TensorRT format, ``minmax`` for the CPU format):
  before-*   : the first defaults: 7-bit weights, no bias correction, min/max ranges, weights rounded to
               nearest (``--reduce-range --no-bias-correction --no-sequential-correction --method minmax
               --weight-rounding nearest``)
  trt / cpu  : today's defaults for ``--target tensorrt`` (int8 activations) and ``--target cpu`` (uint8)
  *-nearest  : weights rounded to nearest instead of by GPTQ (``--weight-rounding nearest``)
  trt-minmax : the TensorRT format with min/max ranges everywhere (its default before ``mse-unbounded``)
  trt-uncentred: the TensorRT format without centring its ReLU6 outputs (``--no-centre-activations``)
  *-noseq    : without the sequential bias correction in the quantized graph (``--no-sequential-correction``)
  *-nobc     : without bias correction of the weights' rounding; *-mse: MSE weight scales;
  *-entropy / *-percentile: other methods;
  *-mse-ranges: activation ranges of least expected squared error (``--method mse``)
  *-qat      : then quantization-aware fine-tuning of every layer on the (unlabelled) calibration crops, by
               distillation from FP32 (``--qat --data CALIB --qat-images 0``: the defaults, every crop, batch
               16): every fifth crop chooses the epoch, none of the evaluated photos is seen

Reference: ONNX Runtime's own static quantizer (``quantize_static``, QDQ, per-channel symmetric int8 weights,
minmax ranges) on the same FP32 graph and the same 300 calibration crops, with int8 symmetric activations (the
TensorRT format) and uint8 ones (the CPU format), each in a child process (wall time, its own peak RSS: VmHWM).
With ``--modelopt-python PY`` (or ``EDGETL_MODELOPT_PYTHON``), also NVIDIA's TensorRT Model Optimizer PTQ
(``modelopt.onnx.quantization.quantize``, int8, ``max`` and ``entropy`` calibration) run by that interpreter: its
``[onnx]`` extra pins onnx/onnxruntime versions other than edgetl's, so it lives in its own environment; its
graphs are scored here, in this run's numerics.

Latency: batch 1, round-robin blocks so machine load hits all models alike; ratios against ONNX Runtime FP32
in the same run. Quantize cost: the first quantize (streamed calibration on 300 images, GPTQ rounding, both bias
corrections) runs in a child process, its wall time and own peak RSS (VmHWM) recorded.

    python benchmarks/quantization.py [--out /tmp/edgetl-qbench] [--iters 40] [--modelopt-python PY]
    python benchmarks/quantization.py --model mobilenetv3_large_100 [--weights FILE]

Writes benchmarks/results/quantization.json (``quantization-MODEL.json`` for another ``--model``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.fileio import write_json
from edgetl.models.registry import DEFAULT_MODEL

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
          "colorwheel", "camera", "moon", "page", "text", "horse", "clock", "coins", "brick", "grass", "gravel",
          "logo", "retina", "cell")
VARIANTS = {  # name: quantize_bundle keyword arguments
    "before-trt": {"target": "tensorrt", "reduce_range": True, "bias_correction": False, "method": "minmax",
                   "weight_rounding": "nearest", "sequential_correction": False},
    "before-cpu": {"target": "cpu", "reduce_range": True, "bias_correction": False, "weight_rounding": "nearest",
                   "sequential_correction": False},
    "trt": {"target": "tensorrt"},
    "trt-nearest": {"target": "tensorrt", "weight_rounding": "nearest"},
    "cpu-nearest": {"target": "cpu", "weight_rounding": "nearest"},
    "cpu-minmax": {"target": "cpu", "method": "minmax"},
    "trt-minmax": {"target": "tensorrt", "method": "minmax"},
    "trt-uncentred": {"target": "tensorrt", "centre_activations": False},
    "cpu": {"target": "cpu"},
    "trt-noseq": {"target": "tensorrt", "sequential_correction": False},
    "cpu-noseq": {"target": "cpu", "sequential_correction": False},
    "trt-nobc": {"target": "tensorrt", "bias_correction": False},
    "cpu-nobc": {"target": "cpu", "bias_correction": False},
    "cpu-mse": {"target": "cpu", "weight_scales": "mse"},
    "cpu-entropy": {"target": "cpu", "method": "entropy"},
    "cpu-percentile": {"target": "cpu", "method": "percentile"},
    "trt-mse-ranges": {"target": "tensorrt", "method": "mse"},
    "cpu-mse-ranges": {"target": "cpu", "method": "mse"},
}


def photo_crops(work: Path) -> tuple[Path, Path]:
    """Calibration crops from the odd-numbered photos, evaluation crops from the even-numbered ones."""
    calib, evaluation = work / "calib", work / "eval"
    if calib.is_dir() and evaluation.is_dir():
        return calib, evaluation
    rng = np.random.default_rng(0)
    draw_crops(evaluation, EVALUATION_PHOTOS, 400, rng)
    draw_crops(calib, CALIBRATION_PHOTOS, 300, rng)
    return calib, evaluation


#: The photos whose crops are evaluated, and those whose crops calibrate: no photo is in both.
EVALUATION_PHOTOS, CALIBRATION_PHOTOS = PHOTOS[0::2], PHOTOS[1::2]


def draw_crops(out: Path, photos: tuple[str, ...], total: int, rng: np.random.Generator) -> Path:
    """``total`` random crops (35-100 % of each side, every other one mirrored), spread evenly over ``photos``,
    as ``out/<photo>-<k>.png``."""
    import skimage.data as sd
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in photos if hasattr(sd, n)]
    per = -(-total // len(names))
    for name in names:
        try:
            a = getattr(sd, name)()
        except Exception:  # some photos need a download helper: skip them
            continue
        if a.dtype != np.uint8:
            a = (a.astype(np.float64) / max(1, a.max()) * 255).astype(np.uint8)
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        h, w = a.shape[:2]
        for k in range(per):
            s = rng.uniform(0.35, 1.0)
            ch, cw = int(h * s * rng.uniform(0.8, 1.0)), int(w * s * rng.uniform(0.8, 1.0))
            y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = a[y0:y0 + ch, x0:x0 + cw]
            Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if k % 2 else crop)).save(out / f"{name}-{k}.png")
    return out


def fp32_bundle(work: Path, calib: Path, name: str = DEFAULT_MODEL, weights: str = "pretrained") -> Path:
    from edgetl.export import export_checkpoint
    from edgetl.models import create, get_model_info
    from edgetl.train.checkpoint import CheckpointMeta, save_checkpoint

    bundle = work / "export"
    if (bundle / "manifest.json").is_file():
        return bundle
    ckpt = work / "imagenet.pt"
    model = create(name, weights=weights).eval()
    meta = CheckpointMeta(task="classify", model=name, labels=[f"in1k_{i}" for i in range(1000)],
                          preprocess=get_model_info(name).preprocess_spec())
    save_checkpoint(ckpt, model.state_dict(), meta)
    export_checkpoint(ckpt, bundle, parity_data=calib, overwrite=True)
    return bundle


def reused_int8(bundle_dir: Path, exported: Path, calib: Path, *, target: str, **options: Any) -> Path:
    """The INT8 model of a copy of ``exported`` in ``bundle_dir``, quantized on 300 images of ``calib`` for
    ``target`` with ``options`` (`quantize_bundle` keywords that are `Int8Settings` fields) over today's defaults.
    An earlier one is reused only when its manifest records every setting these give now, so a changed default is
    quantized again rather than scored stale."""
    from edgetl.quantize import quantize_bundle
    from edgetl.quantize.int8 import TARGETS, Int8Settings
    from edgetl.quantize.sequential import BY_TASK

    expected = Int8Settings(**{"activation_type": TARGETS[target], "sequential_correction": BY_TASK["classify"],
                               **options}).to_dict()
    manifest = bundle_dir / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("quantization", {}).get("int8", {})
        if all(recorded.get(key) == value for key, value in expected.items()):
            return bundle_dir / "model.int8.onnx"
    shutil.rmtree(bundle_dir, ignore_errors=True)
    shutil.copytree(exported, bundle_dir)
    return quantize_bundle(bundle_dir, "int8", calib_data=calib, calib_size=300, target=target, **options).path


#: The working directory the ImageNet benchmarks share (crops, FP32 bundle, quantized variants).
DEFAULT_WORK = "/tmp/edgetl-qbench"


def work_args(description: str, extra: Any = None) -> argparse.Namespace:
    """The analysis scripts' command line: ``--work`` (see `workspace`), plus what ``extra(parser)`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", default=DEFAULT_WORK, help="shared working directory, reused between runs")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def publish(path: Path, results: dict, *tables: str) -> None:
    """Write ``results`` to ``path`` (atomically), then print ``tables`` and where the JSON went."""
    write_json(path, results)
    print("\n\n".join(tables))
    print(f"\nwritten {path}")


def workspace(work: Path, name: str = DEFAULT_MODEL, weights: str = "pretrained") -> tuple[Path, Path, Path]:
    """``work``'s calibration crops, evaluation crops and FP32 bundle of model ``name``, each made when missing."""
    work.mkdir(parents=True, exist_ok=True)
    calib, evaluation = photo_crops(work)
    return calib, evaluation, fp32_bundle(work, calib, name, weights)


def crops(bundle: Path, folder: Path, count: int) -> np.ndarray:
    """The first ``count`` crops of ``folder``, preprocessed as ``bundle`` preprocesses."""
    from edgetl.bundle import open_bundle
    from edgetl.data.imagesets import decode, find_images

    spec = open_bundle(bundle, verify=False).preprocess
    return np.ascontiguousarray(decode(find_images(folder, split="all"), spec).batch[:count], dtype=np.float32)


# A child's own peak RSS: VmHWM counts only its address space since exec, where getrusage's ru_maxrss also keeps
# the parent's resident size at fork (a 13 MB child of a 1.5 GB parent reads 1.5 GB there).
_PEAK_RSS = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

_FIRST_QUANTIZE = _PEAK_RSS + """
import json, sys, time
from edgetl.quantize import quantize_bundle
t0 = time.perf_counter()
r = quantize_bundle(sys.argv[1], "int8", calib_data=sys.argv[2], calib_size=300, target="tensorrt")
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
                  "calibration_seconds": r.info["calibration"]["seconds"]}))
"""


QAT_VARIANTS = {"trt-qat": "tensorrt", "cpu-qat": "cpu"}


def qat_variants(base: Path, calib: Path, work: Path) -> tuple[dict, dict]:
    """Every layer fine-tuned on the unlabelled calibration crops (`qat_bundle`), in each format."""
    from edgetl.quantize.qat import QatSettings
    from edgetl.quantize.qat_api import qat_bundle

    settings = QatSettings.for_task("classify", batch_size=16, images=0)
    paths, info = {}, {}
    for name, target in QAT_VARIANTS.items():
        bundle = work / name
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(base, bundle)
        result = qat_bundle(bundle, data=calib, settings=settings, calib_size=300, target=target)
        record = result.info.get("qat") or result.info["qat_attempt"]
        paths[name] = result.path
        info[name] = {"settings": {**settings.to_dict(), "target": target}, "kept": record["kept"],
                      "seconds": record["seconds"], "best_epoch": record["best_epoch"],
                      "held_out_agreement": {"ptq": record["ptq"]["agreement"], "qat": record["qat"]["agreement"]},
                      "graph": result.info["graph"]}
    return paths, info


def quantize_variants(base: Path, calib: Path, work: Path) -> tuple[dict, dict]:
    """One bundle per variant; the first computes the calibration statistics (measured), the rest reuse them."""
    from edgetl.quantize import quantize_bundle

    cost = json.loads(subprocess.run([sys.executable, "-c", _FIRST_QUANTIZE, str(base), str(calib)], check=True,
                                     capture_output=True, text=True).stdout.strip().splitlines()[-1])
    paths, info = {}, {}
    for name, kwargs in VARIANTS.items():
        target = work / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(base, target)
        result = quantize_bundle(target, "int8", calib_data=calib, calib_size=300, **kwargs)
        paths[name] = result.path
        info[name] = {"settings": kwargs, "weights": result.info["weights"], "graph": result.info["graph"]}
    return paths, {"first_quantize": cost, "variants": info}


_REFERENCE_PTQ = _PEAK_RSS + """
import json, sys, time
import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
src, out, calib, activations = sys.argv[1:5]
batch = np.load(calib)
name = onnx.load(src).graph.input[0].name
class Reader(CalibrationDataReader):
    def __init__(self):
        self.i = 0
    def get_next(self):
        if self.i >= len(batch):
            return None
        self.i += 10
        return {name: batch[self.i - 10:self.i]}
t0 = time.perf_counter()
act = QuantType.QInt8 if activations == "int8" else QuantType.QUInt8
quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=act,
                weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": activations == "int8",
                                                            "WeightSymmetric": True})
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}))
"""
REFERENCES = {"onnxruntime-quantize_static-int8": "int8", "onnxruntime-quantize_static-uint8": "uint8"}

# NVIDIA's TensorRT Model Optimizer PTQ (its ONNX path: TensorRT's Q/DQ placement, int8 symmetric, per-channel
# weights) on the same graph and crops. Its ``[onnx]`` extra pins other onnx/onnxruntime versions than edgetl's,
# so it runs in the interpreter given by --modelopt-python; its graph is scored here, in this run's numerics.
_MODELOPT_PTQ = _PEAK_RSS + """
import json, logging, sys, time
import numpy as np
import onnx
logging.disable(logging.WARNING)
from modelopt.onnx.quantization import quantize
src, out, calib, method = sys.argv[1:5]
t0 = time.perf_counter()
quantize(src, quantize_mode="int8", calibration_data={onnx.load(src).graph.input[0].name: np.load(calib)},
         calibration_method=method, output_path=out, calibration_eps=["cpu"])
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}))
"""
MODELOPT_REFERENCES = {"modelopt-int8-max": "max", "modelopt-int8-entropy": "entropy"}


def reference_ptq(src: Path, calib_batch: np.ndarray, work: Path,
                  modelopt_python: str | None = None) -> tuple[dict, dict]:
    """ONNX Runtime's own static quantizer (and, given its interpreter, Model Optimizer's) on the same graph and
    calibration images: paths and cost."""
    npy = work / "calib-batch.npy"
    np.save(npy, calib_batch)
    paths, cost = {}, {}
    jobs = [(name, sys.executable, _REFERENCE_PTQ, activations) for name, activations in REFERENCES.items()]
    if modelopt_python:
        jobs += [(name, modelopt_python, _MODELOPT_PTQ, method) for name, method in MODELOPT_REFERENCES.items()]
    for name, python, script, option in jobs:
        out = work / f"{name}.onnx"
        done = subprocess.run([python, "-c", script, str(src), str(out), str(npy), option],
                              capture_output=True, text=True)
        if done.returncode != 0:
            cost[name] = {"skipped": done.stderr.strip().splitlines()[-1:]}
            continue
        paths[name], cost[name] = out, json.loads(done.stdout.strip().splitlines()[-1])
    return paths, cost


def quantize_bundle_fp16(base: Path) -> Path:
    from edgetl.quantize import quantize_bundle

    return quantize_bundle(base, "fp16").path


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.sqrt(np.mean((a - b) ** 2))), 4)


def outputs(path: Path, batch: np.ndarray, numerics: str) -> np.ndarray:
    from edgetl.export.parity import backend_outputs
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(path, device="cpu", numerics=numerics) as backend:
        return backend_outputs(backend, batch, chunk=50)[backend.output_names[0]]


def timings(paths: dict, one: np.ndarray, iters: int, rounds: int = 5) -> dict:
    """Batch-1 p50 per model, round-robin in blocks after a warm-up."""
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backends = {k: OnnxRuntimeBackend(p, device="cpu") for k, p in paths.items()}
    lat: dict[str, list[float]] = {k: [] for k in backends}
    try:
        for b in backends.values():
            for _ in range(3):
                b.infer(one)
        for _ in range(rounds):
            for k, b in backends.items():
                time.sleep(0.05)
                b.infer(one)
                for _ in range(max(2, iters // rounds)):
                    t0 = time.perf_counter()
                    b.infer(one)
                    lat[k].append(time.perf_counter() - t0)
    finally:
        for b in backends.values():
            b.close()
    return {k: 1000 * float(np.median(v)) for k, v in lat.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a registered ImageNet classifier")
    parser.add_argument("--weights", default="pretrained",
                        help="its ImageNet weights: 'pretrained' (the offline source) or a state dict file")
    parser.add_argument("--out", default=None, help="working directory (default /tmp/edgetl-qbench[-MODEL])")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--modelopt-python", default=os.environ.get("EDGETL_MODELOPT_PYTHON"),
                        help="a Python with nvidia-modelopt[onnx] installed: adds Model Optimizer's PTQ as a reference")
    args = parser.parse_args()
    from edgetl.errors import EdgetlError
    from edgetl.models import get_model_info
    from edgetl.runtime.cpu import describe

    suffix = "" if args.model == DEFAULT_MODEL else f"-{args.model}"
    work = Path(args.out or f"{DEFAULT_WORK}{suffix}")
    t_start = time.perf_counter()
    try:
        calib, evaluation, exported = workspace(work, args.model, args.weights)
    except EdgetlError as exc:  # no offline weights for this model: say where to put them
        print(exc, file=sys.stderr)
        return 2
    title = f"{get_model_info(args.model).description.split(' ')[0].rstrip(':')} (ImageNet)"
    base = work / "base"  # a fresh copy of the export: the first quantize measures the whole cost
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(exported, base)
    paths, quantize_info = quantize_variants(base, calib, work)
    qat_paths, quantize_info["qat"] = qat_variants(base, calib, work)
    paths.update(qat_paths)
    batch, calib_batch = crops(base, evaluation, 400), crops(base, calib, 300)
    references, reference_cost = reference_ptq(base / "model.onnx", calib_batch, work, args.modelopt_python)
    paths.update(references)
    logits = outputs(base / "model.onnx", batch, "device")
    reference = logits.argmax(1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    margins = np.percentile(margin, [5, 10, 25, 50]).round(3).tolist()
    wide = margin >= np.percentile(margin, 25)  # the three quarters of images FP32 does not call a near-tie
    # The noise floor: FP16 only rounds (11-bit mantissa), so its disagreements are the near-ties of this set.
    fp16 = quantize_bundle_fp16(base)
    floor = float(np.mean(outputs(fp16, batch, "device").argmax(1) == reference))  # float: one numerics
    rows = {"fp16 (noise floor)": {"exact": floor, "device": floor, "bytes": fp16.stat().st_size}}
    for name, path in paths.items():
        logits_by_mode = {mode: outputs(path, batch, mode) for mode in ("exact", "device")}
        top1 = {mode: values.argmax(1) for mode, values in logits_by_mode.items()}
        rows[name] = {mode: float(np.mean(top1[mode] == reference)) for mode in top1}
        # Agreement on near-ties is coarse (one flip = 0.25 %); the logit error says how far every image moved.
        for mode in ("exact", "device"):
            rows[name][f"{mode}_logit_rmse"] = _rmse(logits_by_mode[mode], logits)
        # How far the two numerics are apart: near-ties that this much rounding flips move the agreements apart.
        rows[name]["exact_vs_device_logit_rmse"] = _rmse(logits_by_mode["exact"], logits_by_mode["device"])
        rows[name]["exact_above_p25_margin"] = float(np.mean(top1["exact"][wide] == reference[wide]))
        rows[name]["bytes"] = path.stat().st_size
    p50 = timings({"fp32": base / "model.onnx", **{k: paths[k] for k in ("before-trt", "before-cpu", "trt", "cpu")}},
                  batch[:1], args.iters)
    for name in ("before-trt", "before-cpu", "trt", "cpu"):
        rows[name]["b1_speedup_vs_ort_fp32"] = p50["fp32"] / p50[name]
    results = {"model": title, "images": int(len(batch)), "calibration_images": 300,
               "reference_quantizer_cost": reference_cost,
               "fp32_top1_top2_margin_percentiles": dict(zip(("p5", "p10", "p25", "p50"), margins)),
               "machine": describe(), "rows": rows, "p50_ms_batch1": p50, "quantize": quantize_info,
               "seconds": time.perf_counter() - t_start}
    lines = [f"{title}, {len(batch)} photo crops, top-1 agreement with FP32; "
             f"machine: {describe()}",
             "| variant | exact | this machine | exact, margin above p25 | logit RMSE exact / this machine "
             "| b1 vs ORT FP32 | size MB |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        speed = f"{r['b1_speedup_vs_ort_fp32']:.2f}x" if "b1_speedup_vs_ort_fp32" in r else "-"
        wide_agreement = f"{100 * r['exact_above_p25_margin']:.1f} %" if "exact_above_p25_margin" in r else "-"
        rmse = f"{r['exact_logit_rmse']:.3f} / {r['device_logit_rmse']:.3f}" if "exact_logit_rmse" in r else "-"
        lines.append(f"| {name} | {100 * r['exact']:.1f} % | {100 * r['device']:.1f} % | {wide_agreement} | {rmse} | "
                     f"{speed} | {r['bytes'] / 1e6:.1f} |")
    lines.append(f"FP32 top-1/top-2 logit margin percentiles (p5, p10, p25, p50): {margins}")
    first = quantize_info["first_quantize"]
    lines.append(f"first quantize (300 images, streamed statistics, GPTQ rounding, both bias corrections): "
                 f"{first['seconds']:.0f} s, "
                 f"calibration {first['calibration_seconds']:.0f} s, peak RSS {first['peak_rss_mb']:.0f} MB")
    for name, cost in reference_cost.items():
        if "seconds" in cost:
            lines.append(f"{name}: {cost['seconds']:.0f} s, peak RSS {cost['peak_rss_mb']:.0f} MB")
    results["table"] = "\n".join(lines)
    publish(Path(__file__).parent / "results" / f"quantization{suffix}.json", results, results["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
