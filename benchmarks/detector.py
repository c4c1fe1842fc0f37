"""Detector benchmark on the shapes sample, one run, CPU.

1. Transfer: mAP@0.5:0.95 of a pretrained (ImageNet EfficientNet-Lite0) vs a scratch backbone after the
   same training steps (same seed, data, schedule; both train every layer).
2. Quantization: FP32 vs INT8 mAP of the pretrained detector's bundle. The INT8 graph must stay within
   ``--max-drop`` mAP points: first every convolution INT8 (the quantizer keeps a detector's decode tail
   in float), and if that drops too much, again with the head's output convolutions (class logits and
   box distributions) kept in float, the layers a detector's accuracy is most sensitive to.
3. QAT (``edgetl quantize --qat``, its defaults, on a fresh copy of the bundle): its own PTQ start and the QAT
   model, every convolution INT8, mAP against FP32 on the same val images, and QAT's training time against the
   fine-tuning that produced the checkpoint. When the val images keep PTQ's model, QAT's own model is made again
   on another copy and scored on the held-out images too.
4. Latency of the full pipeline per image (decode + letterbox + model + NMS), batch 1: PyTorch eager vs
   ONNX Runtime FP32 vs ONNX Runtime INT8, same threads.

    python benchmarks/detector.py                 # ~10-15 min on 2 CPU cores
    python benchmarks/detector.py --epochs 2 --n-train 32   # quick look

Writes ``benchmarks/results/detector.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _train(data: Path, out: Path, args: argparse.Namespace, strategy: str) -> Any:
    from edgetl.train.detect import DetectTrainConfig, train_detector

    cfg = DetectTrainConfig(data=str(data), model=args.model, strategy=strategy, epochs=args.epochs,
                            batch_size=args.batch_size, img_size=args.img_size, seed=args.seed, out=str(out),
                            threads=args.threads, device="cpu", eval_interval=args.epochs)
    return train_detector(cfg, progress=False)


def _r(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _infer_fn(backend: Any):
    return lambda batch: backend.infer(batch)


def _map_of(bundle_dir: Path, candidate: str, data: Path, threads: int) -> dict[str, Any]:
    """mAP of the FP32 reference and a candidate ONNX graph on the val split, same images and code; the candidate
    (the TensorRT format) in exact numerics, the numerics it is gated in and the ones QAT's rows are scored in."""
    from edgetl.bundle.manifest import open_bundle
    from edgetl.detect.evaluate import eval_postprocess
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgetl.validate.detection import validate_detection

    bundle = open_bundle(bundle_dir)
    post = eval_postprocess(bundle.manifest["postprocess"])
    with OnnxRuntimeBackend(bundle_dir / "model.onnx", device="cpu", threads=threads) as ref, \
            OnnxRuntimeBackend(bundle_dir / candidate, device="cpu", threads=threads, numerics="exact") as cand:
        return validate_detection(_infer_fn(ref), _infer_fn(cand), str(data), bundle.preprocess, post, bundle.labels)


def _test_drop(bundle_dir: Path, test: Path, threads: int) -> dict[str, Any]:
    """The bundle's INT8 model against its FP32 one on the held-out images: 100 validation images move
    mAP@0.5:0.95 by a few tenths of a point between near-identical models, more than the bounds under test."""
    report = _map_of(bundle_dir, "model.int8.onnx", test / "data.yaml", threads)
    return {"images": report["reference"].get("images"), "fp32_map": round(report["reference"]["map"], 4),
            "int8_map": round(report["candidate"]["map"], 4),
            "map_drop_points": round(-report["deltas"]["map"], 2) + 0.0,
            "matched_iou": _r(report["agreement"].get("matched_iou_mean")),
            "recall_of_reference": _r(report["agreement"].get("recall_of_reference"))}


def _quantize(bundle_dir: Path, calib: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Plain INT8 first; when it misses the budget, the quantizer's accuracy-budget mode (mAP-scored)."""
    from edgetl.errors import EdgetlError
    from edgetl.quantize import quantize_bundle

    attempts = []
    for budget in (None, args.max_drop):
        t0 = time.perf_counter()
        try:
            result = quantize_bundle(bundle_dir, "int8", calib_data=str(calib), calib_size=args.calib_size,
                                     method=args.method, seed=args.seed, max_drop=budget, val_data=str(data),
                                     sequential_correction=args.sequential_correction)
            kept = list(result.info.get("kept_layers", []))
        except EdgetlError as exc:  # budget missed: the best model found is still written
            kept = [f"budget missed: {exc.message}"]
        seconds = time.perf_counter() - t0
        report = _map_of(bundle_dir, "model.int8.onnx", data, args.threads)
        drop = -report["deltas"]["map"]
        attempts.append({"budget_mode": budget is not None, "kept_float": kept, "seconds": round(seconds, 1),
                         "map_drop_points": round(drop, 2) + 0.0, "fp32": report["reference"],
                         "int8": report["candidate"], "agreement": report["agreement"]})
        if drop <= args.max_drop:
            break
    final = attempts[-1]
    final["within_budget"] = final["map_drop_points"] <= args.max_drop
    return {"attempts": attempts, "final": final}


def _qat(bundle_dir: Path, data: Path, test: Path, args: argparse.Namespace,
         train_seconds: float) -> dict[str, Any]:
    """QAT with its defaults on a copy of the bundle: PTQ start and QAT model, mAP of both, cost."""
    import shutil

    from edgetl.quantize.qat_api import qat_bundle

    copy = Path(shutil.copytree(bundle_dir, bundle_dir.parent / "bundle-qat"))
    t0 = time.perf_counter()
    result = qat_bundle(copy, data=data, calib_size=args.calib_size, val_data=data, val_size=args.n_val,
                        ptq_options={"sequential_correction": args.sequential_correction},
                        seed=args.seed)
    seconds = time.perf_counter() - t0
    record = result.info.get("qat") or result.info["qat_attempt"]
    report = _map_of(copy, "model.int8.onnx", data, args.threads)
    test_drop = _test_drop(copy, test, args.threads)
    return {"kept": record["kept"], "seconds": round(seconds, 1), "train_seconds": record["seconds"],
            "qat_vs_fine_tuning": round(record["seconds"] / train_seconds, 2), "history": record["history"],
            "ptq_start": record["ptq"], "qat_scored": record["qat"], "fp32": report["reference"],
            "int8": report["candidate"], "map_drop_points": round(-report["deltas"]["map"], 2) + 0.0,
            "int8_layers": result.info["graph"]["int8_layers"],
            "float_layers": len(result.info["graph"]["float_layers"]), "test": test_drop,
            "qat_model_test": test_drop if record["kept"] == "qat" else _qat_model_test(bundle_dir, data, test, args)}


def _qat_model_test(bundle_dir: Path, data: Path, test: Path, args: argparse.Namespace) -> dict[str, Any]:
    """QAT's own model on the held-out images when the 100 validation images kept PTQ's: the same run on another
    copy with the keep-or-not rule set aside, so that QAT is judged on 3x the images it was chosen against."""
    import shutil
    from unittest import mock

    from edgetl.quantize.qat_api import qat_bundle

    copy = Path(shutil.copytree(bundle_dir, bundle_dir.parent / "bundle-qat-model"))
    with mock.patch("edgetl.quantize.qat.worse", return_value=False):
        qat_bundle(copy, data=data, calib_size=args.calib_size, val_data=data, val_size=args.n_val, seed=args.seed,
                   ptq_options={"sequential_correction": args.sequential_correction})
    return _test_drop(copy, test, args.threads)


def _latency(model: Any, bundle_dir: Path, images: list[Path], threads: int, repeats: int) -> dict[str, Any]:
    """Per-image milliseconds of decode + letterbox + model + NMS at batch 1, for three engines."""
    import torch

    from edgetl.bundle.manifest import open_bundle
    from edgetl.preprocess import preprocess
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgetl.runtime.detection import postprocess_detections

    bundle = open_bundle(bundle_dir)
    spec, post, labels = bundle.preprocess, bundle.manifest["postprocess"], bundle.labels
    torch.set_num_threads(threads)
    model.eval()

    def torch_infer(batch):
        with torch.inference_mode():
            boxes, scores = model(torch.from_numpy(batch))
        return {"boxes": boxes.numpy(), "scores": scores.numpy()}

    def pipeline(infer) -> list[float]:
        times = []
        for i in range(repeats):
            path = images[i % len(images)]
            t0 = time.perf_counter()
            chw, info = preprocess(path, spec)
            postprocess_detections(infer(chw[None]), post, [info], labels)
            times.append((time.perf_counter() - t0) * 1000)
        return times

    rows = {}
    with OnnxRuntimeBackend(bundle_dir / "model.onnx", device="cpu", threads=threads) as fp32, \
            OnnxRuntimeBackend(bundle_dir / "model.int8.onnx", device="cpu", threads=threads) as int8:
        engines = {"pytorch-eager-fp32": torch_infer, "onnxruntime-fp32": fp32.infer, "onnxruntime-int8": int8.infer}
        for infer in engines.values():
            pipeline(infer)  # warm-up
        # Interleave engines round by round so load changes on a shared machine hit all of them alike.
        samples: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(3):
            for name, infer in engines.items():
                samples[name] += pipeline(infer)
    for name, times in samples.items():
        rows[name] = {"median_ms": round(statistics.median(times), 2), "mean_ms": round(statistics.fmean(times), 2),
                      "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))], 2), "runs": len(times)}
    base = rows["pytorch-eager-fp32"]["median_ms"]
    for row in rows.values():
        row["speedup_vs_eager"] = round(base / row["median_ms"], 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolo-lite0-n")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30,
                        help="fine-tuning epochs (edgetl train detect's default: QAT's cost is compared with them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=100,
                        help="validation images (fewer move mAP@0.5:0.95 by more than the 0.5-point QAT bound)")
    parser.add_argument("--n-test", type=int, default=300,
                        help="held-out images the INT8 drops are reported on (another seed of the shapes sample)")
    parser.add_argument("--calib-size", type=int, default=64)
    parser.add_argument("--method", default=None, choices=["mse-unbounded", "entropy", "minmax", "percentile", "mse"],
                        help="calibration method (default: the format's default, as `edgetl quantize` uses)")
    parser.add_argument("--max-drop", type=float, default=1.0, help="INT8 budget in mAP@0.5:0.95 points.")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for PyTorch and ONNX Runtime (1: steadiest on a busy 2-core machine).")
    parser.add_argument("--repeats", type=int, default=20, help="Latency images per engine per round.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequential-correction", action=argparse.BooleanOptionalAction, default=None,
                        help="INT8's sequential bias correction (default: the quantizer's for detectors, off); "
                             "benchmarks/results/detector-sequential-correction.json is --sequential-correction")
    parser.add_argument("--work", default=None, help="Working directory (default: a temporary one).")
    parser.add_argument("--out", default=str(RESULTS / "detector.json"))
    args = parser.parse_args(argv)

    from edgetl.data.shapes import write_shapes
    from edgetl.export import export_checkpoint
    from edgetl.fileio import write_json
    from edgetl.tables import format_table
    from edgetl.train.checkpoint import build_from_checkpoint

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-det-") as tmp:
        work = Path(args.work or tmp)
        shapes = work / "shapes"
        write_shapes(shapes, n_train=args.n_train, n_val=args.n_val, size=320, seed=args.seed)
        data = shapes / "data.yaml"
        # Held-out images that neither training nor QAT's epoch choice sees: the INT8 drops are reported on them.
        test = work / "shapes-test"
        write_shapes(test, n_train=1, n_val=args.n_test, size=320, seed=args.seed + 1)
        runs = {}
        for label, strategy in (("pretrained", "full"), ("scratch", "scratch")):
            print(f"training {label} ...", file=sys.stderr)
            result = _train(data, work / label, args, strategy)
            runs[label] = {"strategy": strategy, "map": round(result.best_map, 4), "map50": round(result.best_map50, 4),
                           "steps": sum(h["steps"] for h in result.history), "seconds": result.seconds,
                           "images_per_second": result.images_per_second,
                           "final_train_loss": round(result.history[-1]["train_loss"], 4)}
        print("export + int8 ...", file=sys.stderr)
        bundle_dir = work / "bundle"
        export_checkpoint(work / "pretrained" / "best.pt", bundle_dir, parity_data=str(shapes / "images" / "val"),
                          overwrite=True)
        quant = _quantize(bundle_dir, shapes / "images" / "train", data, args)
        quant["final"]["test"] = _test_drop(bundle_dir, test, args.threads)
        print("qat ...", file=sys.stderr)
        qat = _qat(bundle_dir, data, test, args, runs["pretrained"]["seconds"])
        print("latency ...", file=sys.stderr)
        model, _ = build_from_checkpoint(work / "pretrained" / "best.pt")
        images = sorted((shapes / "images" / "val").glob("*.*"))
        latency = _latency(model, bundle_dir, images, args.threads, args.repeats)

    document = {"benchmark": "detector", "config": vars(args), "transfer": runs, "quantization": quant,
                "qat": qat, "latency": latency, "seconds": round(time.perf_counter() - started, 1)}
    write_json(args.out, document)

    print(f"\nshapes sample: {args.n_train} train / {args.n_val} val / {args.n_test} held-out test images, "
          f"{args.model} at {args.img_size} px, "
          f"{args.epochs} epochs, batch {args.batch_size}, CPU, {args.threads} thread(s)\n")
    pre, scr = runs["pretrained"], runs["scratch"]
    print(format_table(
        ["backbone", "steps", "mAP@0.5:0.95", "mAP@0.5", "train s", "ratio vs scratch (mAP)"],
        [("pretrained (ImageNet)", pre["steps"], pre["map"], pre["map50"], pre["seconds"],
          round(pre["map"] / scr["map"], 2) if scr["map"] else "inf"),
         ("scratch", scr["steps"], scr["map"], scr["map50"], scr["seconds"], 1.0)],
    ))
    final = quant["final"]
    print()
    print(format_table(
        ["model", "mAP@0.5:0.95", "mAP@0.5", "drop (points)", "kept in float", "box IoU", "recall vs FP32",
         "test mAP", "test drop"],
        [("FP32 (ONNX Runtime)", round(final["fp32"]["map"], 4), round(final["fp32"]["map50"], 4), 0.0, "-", "-",
          "-", final["test"]["fp32_map"], 0.0),
         ("INT8 QDQ", round(final["int8"]["map"], 4), round(final["int8"]["map50"], 4), final["map_drop_points"],
          len(final["kept_float"]), _r(final["agreement"].get("matched_iou_mean")),
          _r(final["agreement"].get("recall_of_reference")), final["test"]["int8_map"],
          final["test"]["map_drop_points"])],
    ))
    print()
    print(format_table(
        ["QAT (every conv INT8)", "mAP@0.5:0.95", "drop (points)", "int8 layers", "float layers", "QAT s",
         "vs fine-tuning", "test drop"],
        [("PTQ start (scored on the val sample)", _r(qat["ptq_start"].get("map")), _r(qat["ptq_start"]["drop"]),
          "-", "-", "-", "-", "-"),
         (f"QAT ({qat['kept']} kept)", round(qat["int8"]["map"], 4), qat["map_drop_points"], qat["int8_layers"],
          qat["float_layers"], qat["train_seconds"], qat["qat_vs_fine_tuning"], qat["test"]["map_drop_points"]),
         ("QAT's own model", _r(qat["qat_scored"].get("map")), _r(qat["qat_scored"]["drop"]), "-", "-", "-", "-",
          qat["qat_model_test"]["map_drop_points"])],
    ))
    if len(quant["attempts"]) > 1:
        print(f"(fully quantized first: drop {quant['attempts'][0]['map_drop_points']} points > {args.max_drop}; "
              f"then the accuracy-budget mode kept {len(final['kept_float'])} layer(s) in float)")
    print()
    print(format_table(
        ["pipeline (pre + model + NMS), batch 1", "median ms", "p90 ms", "speed-up vs eager"],
        [(name, row["median_ms"], row["p90_ms"], row["speedup_vs_eager"]) for name, row in latency.items()],
    ))
    print(f"\ntotal {document['seconds']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
