"""QAT benchmark: FP32 vs PTQ vs QAT on a fine-tuned classifier on real data, in one run.

Model: the demo's classifier (EfficientNet-Lite0 fine-tuned on the shipped Fashion-MNIST sample at 128 px,
`edgetl demo`), trained in this run; its training time is the baseline QAT's cost is compared with. Every INT8
model is the TensorRT format (symmetric int8 activations, per-channel int8 weights) and is scored in exact
numerics (ONNX Runtime, graph optimizations off: what TensorRT computes) on all 300 validation images, against
the labels (top-1) and against FP32 (agreement).

Variants, each on a fresh copy of the demo's bundle, each ``edgetl quantize`` in a child process (wall time and
peak RSS from ``os.wait4``):

  ptq        : ``edgetl quantize B --target tensorrt`` (the defaults)
  qat        : ``edgetl quantize B --qat`` (PTQ, then QAT with the defaults: every layer)
  qat-last-layers : only the last 2 layers train, on a cached prefix (``--qat-layers 2 --qat-epochs 10
               --qat-images 768``: the fast mode)
  ptq-nearest: ``--weight-rounding nearest``: the defaults with weights rounded to nearest instead of by GPTQ
  ptq-noseq  : ``--no-sequential-correction``: the defaults without the sequential bias correction (and
               ``ptq-cpu-noseq`` in the CPU format)
  ptq-7bit   : ``--reduce-range --weight-rounding nearest`` (7-bit weights on non-depthwise layers, rounded to
               nearest): PTQ that misses the gate on purpose
  qat-7bit   : ``--qat --reduce-range --weight-rounding nearest``: QAT from that start, weights kept at 7 bits
  qat-7bit-last-layers : the same start, only the last 2 layers trained (the fast mode): the errors of 7-bit
               weights are spread over the whole network, not only its last two layers
  ptq-7bit-gptq : ``--reduce-range``: the same 7-bit weights, rounded by GPTQ (PTQ only)
  qat-unlabelled : every layer trained (lr 3e-3, 2 epochs) on 6,000 unlabelled images of Fashion-MNIST's
               training split (the demo's sample has 1,000 labelled ones), against the FP32 model; skipped without
               Debian's ``dataset-fashion-mnist``
  ptq-cpu / qat-cpu : the CPU format (uint8 activations, what the demo deploys), scored in this machine's
               numerics (ONNX Runtime's fused kernels), the numerics that format is gated in

The gate: top-1 drop <= 0.2 point and agreement >= 99 %, every conv INT8.

QAT's result moves with its seed (which images it draws, the batch order): the ``qat`` variant runs again with
seeds 1 and 2 on both models (``seed_spread``), so a one-image difference is read as what it is.

Every INT8 model is scored a second time on images no step saw: a class-balanced, seeded subset of Fashion-MNIST's
official *test* split (``--test-images``, default 5,000 of its 10,000; read from Debian's ``dataset-fashion-mnist``,
skipped when it is not installed). The 300 validation images resolve one flip as 0.33 point and QAT chooses its
epoch on them; the test subset resolves 0.02 point. The test scoring runs after every child process has ended, so
its decoded images do not count in any child's peak RSS.

The same data fine-tuned the way ``edgetl train classify`` does by default (``--strategy partial --epochs 10``, at
the demo's 128 px) gives a second model and a second baseline for QAT's cost: PTQ and QAT in both formats on it.

    python benchmarks/qat.py [--out /tmp/edgetl-qatbench] [--test-images 5000]

Writes benchmarks/results/qat.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "qat.json"
#: The fast mode: the last two layers on a cached prefix (the default before QAT trained in code units).
LAST_LAYERS = ["--qat-layers", "2", "--qat-epochs", "10", "--qat-images", "768"]
VARIANTS = {
    "ptq": ["--target", "tensorrt"],
    "qat": ["--qat"],
    "qat-last-layers": ["--qat", *LAST_LAYERS],
    "ptq-nearest": ["--target", "tensorrt", "--weight-rounding", "nearest"],
    "ptq-noseq": ["--target", "tensorrt", "--no-sequential-correction"],
    "ptq-7bit": ["--target", "tensorrt", "--reduce-range", "--weight-rounding", "nearest"],
    "qat-7bit": ["--qat", "--reduce-range", "--weight-rounding", "nearest"],
    "qat-7bit-last-layers": ["--qat", "--reduce-range", "--weight-rounding", "nearest", *LAST_LAYERS],
    "ptq-7bit-gptq": ["--target", "tensorrt", "--reduce-range"],
    "ptq-cpu": ["--target", "cpu"],
    "ptq-cpu-noseq": ["--target", "cpu", "--no-sequential-correction"],
    "qat-cpu": ["--qat", "--target", "cpu"],
}
MAX_DROP, MIN_AGREEMENT = 0.2, 0.99
#: ``qat-unlabelled``: every layer trained on more images than the demo's 1,000 labelled ones, unlabelled images
#: of Fashion-MNIST's training split (never its test split; every fifth chooses the epoch). Two epochs over 4,800
#: images are 300 steps, twice the defaults' 160 over 1,000: lr 3e-3, the 8-bit defaults' best in one-off runs.
UNLABELLED_IMAGES = 6000
UNLABELLED_QAT = ["--qat", "--qat-lr", "3e-3", "--qat-epochs", "2", "--qat-images", "0"]
#: Debian's dataset-fashion-mnist: the official idx files, test split included.
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")


def _edgetl() -> list[str]:
    script = Path(sys.executable).with_name("edgetl")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from edgetl.cli.main import main; main()"]


def child(command: list[str], log: Path) -> dict[str, Any]:
    """Run ``command``; its JSON document (stdout), wall time, peak RSS and exit code."""
    out = log.with_suffix(".json")
    with out.open("wb") as stdout, log.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    try:
        document = json.loads(out.read_text())
    except json.JSONDecodeError:
        document = {"error": log.read_text()[-2000:]}
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit_code": code,
            "document": document}


DEFAULT_FINE_TUNING = ["--strategy", "partial", "--epochs", "10", "--img-size", "128"]
DEFAULT_VARIANTS = {k: VARIANTS[k] for k in ("ptq", "qat", "ptq-noseq", "ptq-cpu", "qat-cpu", "ptq-cpu-noseq")}


def quantize_rows(base: Path, work: Path, variants: dict[str, list[str]], prefix: str = "") -> dict[str, Any]:
    """Each variant's ``edgetl quantize`` on a fresh copy of ``base``, scored in its format's gate numerics."""
    rows: dict[str, Any] = {}
    for name, flags in variants.items():
        print(f"{prefix}{name}: edgetl quantize {' '.join(flags)}", file=sys.stderr)
        bundle = Path(shutil.copytree(base, work / f"{prefix}{name}"))
        run = child([*_edgetl(), "quantize", str(bundle), *flags, "--json"], work / f"{prefix}{name}.log")
        info = run["document"].get("info", {})
        numerics = "device" if "cpu" in flags else "exact"
        metrics = score(bundle, "model.int8.onnx", numerics) if run["exit_code"] == 0 else {}
        graph = info.get("graph", {})
        record = info.get("qat") or info.get("qat_attempt") or {}
        rows[name] = {
            "flags": flags, "exit_code": run["exit_code"], "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
            **metrics,
            "int8_layers": graph.get("int8_layers"), "float_layers": len(graph.get("float_layers", [])),
            "weight_bits": info.get("weight_bits"), "scheme": info.get("scheme", "ptq"),
            "qat_kept": record.get("kept"), "qat_train_s": record.get("seconds"),
            "qat_history": record.get("history"),
            "gate_passed": bool(metrics) and metrics["drop_points"] <= MAX_DROP
                           and metrics["agreement"] >= MIN_AGREEMENT and not graph.get("float_layers"),
        }
        if run["exit_code"] != 0:
            rows[name]["error"] = run["document"].get("error")
    return rows


SPREAD_SEEDS = (1, 2)


def seed_spread(base: Path, work: Path, prefix: str) -> dict[str, Any]:
    """The default QAT (TensorRT format) with other seeds: flips and drop per seed."""
    rows = quantize_rows(base, work, {f"qat-seed{seed}": [*VARIANTS["qat"], "--seed", str(seed)]
                                      for seed in SPREAD_SEEDS}, prefix=prefix)
    return {name: {"flips": r.get("flips"), "agreement": r.get("agreement"), "drop_points": r.get("drop_points")}
            for name, r in rows.items()}


def default_fine_tuning(work: Path, data: Path) -> dict[str, Any]:
    """Fine-tune the demo's data with ``edgetl train classify``'s defaults, export, then PTQ and QAT on it."""
    print("fine-tuning with the train command's defaults (partial, 10 epochs)...", file=sys.stderr)
    run_dir, bundle = work / "partial-run", work / "partial-bundle"
    train = child([*_edgetl(), "train", "classify", "--data", str(data), *DEFAULT_FINE_TUNING, "--out", str(run_dir),
                   "--quiet", "--json"], work / "partial-train.log")
    train_s = train["document"].get("seconds")
    exported = child([*_edgetl(), "export", str(run_dir / "best.pt"), str(bundle), "--json"],
                     work / "partial-export.log")
    if train_s is None or exported["exit_code"] != 0:
        return {"error": [train["document"], exported["document"]]}
    rows = quantize_rows(bundle, work, DEFAULT_VARIANTS, prefix="partial-")
    return {"flags": DEFAULT_FINE_TUNING, "train_s": train_s, "train_wall_s": train["wall_s"],
            "peak_rss_mb": train["peak_rss_mb"], "variants": rows,
            "seed_spread": seed_spread(bundle, work, "partial-"),
            "qat_vs_train": {name: round(r["qat_train_s"] / train_s, 2)
                             for name, r in rows.items() if r.get("qat_train_s")}}


def score(bundle: Path, model: str, numerics: str = "exact", source: Path | None = None,
          cache: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Top-1, agreement with FP32 and logit RMSE in ``numerics`` (FP32 itself: exact) on every validation image
    of the bundle's dataset, or on every image of ``source`` (a ``<class>/*.png`` folder). ``cache`` keeps the
    decoded images and each distinct model's logits between calls."""
    from edgetl.bundle import open_bundle
    from edgetl.data.imagesets import decode, find_images
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    cache = {} if cache is None else cache
    b = open_bundle(bundle)
    key = (str(source or b.dataset), repr(b.preprocess))
    if key not in cache:
        images = find_images(source or b.dataset, split="all" if source else "val", labels=b.labels)
        cache[key] = decode(images, b.preprocess)
    decoded = cache[key]
    labels = np.asarray(decoded.labels)

    def logits(path: Path, numerics: str) -> np.ndarray:
        entry = (key, hashlib.sha256(path.read_bytes()).hexdigest(), numerics)
        if entry not in cache:
            with OnnxRuntimeBackend(path, device="cpu", numerics=numerics) as backend:
                cache[entry] = np.concatenate([backend.infer(decoded.batch[i:i + 50])["logits"]
                                               for i in range(0, len(decoded.batch), 50)])
        return cache[entry]

    reference = logits(bundle / "model.onnx", "exact")
    quantized = logits(bundle / model, numerics)
    ref, pred = reference.argmax(1), quantized.argmax(1)
    return {"images": len(labels), "numerics": numerics, "fp32_top1": float((ref == labels).mean()),
            "top1": float((pred == labels).mean()),
            "drop_points": round(100.0 * float((ref == labels).mean() - (pred == labels).mean()), 3),
            "agreement": float((pred == ref).mean()), "flips": int((pred != ref).sum()),
            "logit_rmse": round(float(np.sqrt(np.mean((quantized - reference) ** 2))), 4)}


def write_fashion_subset(out: Path, split: str, count: int, seed: int, labelled: bool = True) -> Path | None:
    """``count`` images of Fashion-MNIST's official ``split`` (``train`` or ``t10k``), class-balanced and seeded,
    as ``out/<class>/<index>.png`` or, unlabelled, ``out/<index>.png`` (28 px grayscale, the shipped sample's
    format); None without the idx files."""
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from make_fashion_sample import read_idx

    from edgetl.data.imagesets import balanced_indices
    from edgetl.data.samples import FASHION_NAMES

    images_file = FASHION_IDX / f"{split}-images-idx3-ubyte.gz"
    labels_file = FASHION_IDX / f"{split}-labels-idx1-ubyte.gz"
    if count <= 0 or not (images_file.is_file() and labels_file.is_file()):
        return None
    images, labels = read_idx(images_file), read_idx(labels_file)
    for index in balanced_indices(labels.tolist(), count, seed):
        folder = out / FASHION_NAMES[labels[index]] if labelled else out
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index], "L").save(folder / f"{index:05d}.png")
    return out


def test_scores(work: Path, rows: dict[str, Any], test: Path, cache: dict[Any, Any], prefix: str = "") -> None:
    """Each row's INT8 model (``work/<prefix><name>``) scored on the test images, into ``row["test"]``, with the
    gate read there."""
    for name, row in rows.items():
        bundle = work / f"{prefix}{name}"
        if not (bundle / "model.int8.onnx").is_file():
            continue
        print(f"test split: {prefix}{name}", file=sys.stderr)
        metrics = score(bundle, "model.int8.onnx", row.get("numerics", "exact"), source=test, cache=cache)
        row["test"] = {**metrics, "gate_passed": metrics["drop_points"] <= MAX_DROP
                       and metrics["agreement"] >= MIN_AGREEMENT and not row.get("float_layers")}


def main() -> int:
    from edgetl.bundle import open_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/edgetl-qatbench")
    parser.add_argument("--test-images", type=int, default=5000,
                        help="images of Fashion-MNIST's official test split to score on as well (0: none)")
    args = parser.parse_args()
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_before = os.getloadavg()[0]
    print("training the demo's classifier (edgetl demo)...", file=sys.stderr)
    demo = child([*_edgetl(), "demo", "--out", str(work / "demo"), "--json"], work / "demo.log")
    train_s = (demo["document"].get("steps_s") or {}).get("train")
    if train_s is None:
        print(f"demo failed: {demo['document']}", file=sys.stderr)
        return 4
    base = work / "demo" / "bundle"
    rows = quantize_rows(base, work, VARIANTS)
    unlabelled = write_fashion_subset(work / "fashion-train-unlabelled", "train", UNLABELLED_IMAGES, seed=7,
                                      labelled=False)
    if unlabelled is not None:
        rows.update(quantize_rows(base, work, {"qat-unlabelled": [*UNLABELLED_QAT, "--data",
                                                                              str(unlabelled)]}))
    partial = default_fine_tuning(work, Path(open_bundle(base).dataset))
    fp32 = next((r["fp32_top1"] for r in rows.values() if "fp32_top1" in r), None)
    document = {
        "benchmark": "qat",
        "command": "python benchmarks/qat.py",
        "host": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                 "load_average_1m_before": round(load_before, 2),
                 "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "model": "EfficientNet-Lite0, edgetl demo (linear probe, 128 px, Fashion-MNIST sample)",
        "gate": {"max_drop_points": MAX_DROP, "min_agreement": MIN_AGREEMENT,
                 "numerics": "exact for the TensorRT format, device for the CPU format"},
        "fine_tuning": {"train_s": train_s, "demo_wall_s": demo["wall_s"], "peak_rss_mb": demo["peak_rss_mb"]},
        "fp32_top1": fp32,
        "variants": rows,
        "qat_vs_train": {name: round(r["qat_train_s"] / train_s, 2)
                         for name, r in rows.items() if r.get("qat_train_s")},
        "seed_spread": seed_spread(base, work, ""),
        "default_fine_tuning": partial,
    }
    test = write_fashion_subset(work / "fashion-test", "t10k", args.test_images, seed=0)
    document["test_split"] = None if test is None else {
        "images": sum(1 for _ in test.rglob("*.png")), "source": str(FASHION_IDX / "t10k-images-idx3-ubyte.gz"),
        "choice": "class-balanced, seeded (edgetl.data.imagesets.balanced_indices, seed 0)"}
    if test is not None:
        cache: dict[Any, Any] = {}
        test_scores(work, rows, test, cache)
        test_scores(work, document["seed_spread"], test, cache)
        test_scores(work, partial.get("variants") or {}, test, cache, prefix="partial-")
        test_scores(work, partial.get("seed_spread") or {}, test, cache, prefix="partial-")
    from edgetl.fileio import write_json

    write_json(RESULTS, document)
    print(f"{'variant':10} {'top-1':>7} {'drop':>6} {'agree':>7} {'flips':>5} {'int8':>5} {'wall s':>7} "
          f"{'RSS MB':>7} gate")
    for name, r in rows.items():
        if "top1" in r:
            print(f"{name:10} {r['top1']:7.4f} {r['drop_points']:6.2f} {r['agreement']:7.4f} {r['flips']:5d} "
                  f"{r['int8_layers']!s:>5} {r['wall_s']:7.1f} {r['peak_rss_mb']:7.0f} {r['gate_passed']}")
    print(f"FP32 top-1 {fp32}; fine-tuning {train_s} s; QAT/train {document['qat_vs_train']}")
    for name, r in (partial.get("variants") or {}).items():
        if "top1" in r:
            print(f"partial-{name:10} {r['top1']:7.4f} {r['drop_points']:6.2f} {r['agreement']:7.4f} {r['flips']:5d} "
                  f"{r['wall_s']:7.1f} {r['gate_passed']}")
    print(f"default fine-tuning {partial.get('train_s')} s; QAT/train {partial.get('qat_vs_train')}")
    print(f"QAT flips with seeds {SPREAD_SEEDS}: demo {document['seed_spread']}; "
          f"partial {partial.get('seed_spread')}")
    if test is not None:
        print(f"on {document['test_split']['images']} images of the official test split:")
        for prefix, group in (("", {**rows, **document["seed_spread"]}),
                              ("partial-", {**(partial.get("variants") or {}), **(partial.get("seed_spread") or {})})):
            for name, r in group.items():
                if "test" in r:
                    t = r["test"]
                    print(f"{prefix + name:24} {t['top1']:7.4f} {t['drop_points']:6.2f} {t['agreement']:7.4f} "
                          f"{t['flips']:5d} rmse {t['logit_rmse']:.4f} {t['gate_passed']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
