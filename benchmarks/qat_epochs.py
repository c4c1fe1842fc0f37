"""What QAT buys per epoch: its cost against the fine-tuning that made the checkpoint, and its held-out flips.

QAT's cost target is a third of the fine-tuning's time. On two CPU cores one every-layer QAT epoch over the
demo's 1,000 training images costs about twice an epoch of the default partial fine-tune, so a third of that
fine-tune holds about one QAT epoch. This script measures what fewer epochs give up, on the case where PTQ fails
the gate on purpose (`benchmarks/qat.py`'s ``qat-7bit``: 7-bit weights rounded to nearest), in one run:

- the default fine-tuning on the same data (``edgetl train classify --strategy partial --epochs 10 --img-size
  128``, as `benchmarks/qat.py` runs it), timed: the baseline each QAT's seconds are divided by;
- ``edgetl quantize --qat --reduce-range --weight-rounding nearest --qat-epochs N`` for each N in ``--epochs``,
  each on a fresh copy of the demo's bundle with its calibration statistics cached (the PTQ start costs the same
  in every row), in its own child process: QAT's own seconds after PTQ (`QatOutcome.seconds`), the model kept,
  the validation gate (300 images, exact numerics), and the flips on the held-out Fashion-MNIST test images.
  An entry ``N@L`` adds ``--qat-layers L``: the cheaper epoch of training only the last L weighted layers (the
  graph before them runs once per image), to price what skipping the early layers' backward gives up.

Needs `benchmarks/qat.py`'s working directory (its demo bundle, its ``qat-7bit`` bundle's calibration cache and
its test images): run that first.

    python benchmarks/qat_epochs.py [--work /tmp/edgetl-qatbench] [--epochs 1,2,3,5,2@40,5@40]

Writes benchmarks/results/qat_epochs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qat import DEFAULT_FINE_TUNING, MAX_DROP, MIN_AGREEMENT, _edgetl, child, score

RESULTS = Path(__file__).parent / "results" / "qat_epochs.json"
SEVEN_BIT = ["--qat", "--reduce-range", "--weight-rounding", "nearest"]


def fine_tuning_seconds(work: Path, data: Path, out: Path) -> dict[str, Any]:
    """The default fine-tuning of the demo's data, timed (its training seconds, as `benchmarks/qat.py` reads them)."""
    run = child([*_edgetl(), "train", "classify", "--data", str(data), *DEFAULT_FINE_TUNING, "--out", str(out),
                 "--quiet", "--json"], work / "fine-tune.log")
    return {"flags": DEFAULT_FINE_TUNING, "train_s": run["document"].get("seconds"), "wall_s": run["wall_s"],
            "peak_rss_mb": run["peak_rss_mb"]}


def qat_row(start: Path, work: Path, epochs: int, test: Path, cache: dict[Any, Any],
            layers: int | None = None) -> dict[str, Any]:
    """QAT with ``epochs`` epochs from the 7-bit start (every layer, or the last ``layers``): its cost, the model
    kept, validation and test scores."""
    name = f"qat-7bit-{epochs}ep" + ("" if layers is None else f"-last{layers}")
    trained = layers or "all"
    bundle = Path(shutil.copytree(start, work / name))
    only = [] if layers is None else ["--qat-layers", str(layers)]
    run = child([*_edgetl(), "quantize", str(bundle), *SEVEN_BIT, "--qat-epochs", str(epochs), *only, "--json"],
                work / f"{name}.log")
    if run["exit_code"] != 0:
        return {"epochs": epochs, "layers": trained, "exit_code": run["exit_code"],
                "error": run["document"].get("error")}
    info = run["document"].get("info", {})
    record = info.get("qat") or info.get("qat_attempt") or {}
    validation = score(bundle, "model.int8.onnx", "exact", cache=cache)
    held_out = score(bundle, "model.int8.onnx", "exact", source=test, cache=cache)
    return {
        "epochs": epochs, "layers": trained, "exit_code": 0, "wall_s": run["wall_s"],
        "peak_rss_mb": run["peak_rss_mb"], "epoch_s": [h["seconds"] for h in record.get("history", [])[1:]],
        "qat_s": record.get("seconds"), "kept": record.get("kept"), "best_epoch": record.get("best_epoch"),
        "validation": {**validation, "gate_passed": validation["drop_points"] <= MAX_DROP
                       and validation["agreement"] >= MIN_AGREEMENT},
        "test": held_out,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-qatbench",
                        help="benchmarks/qat.py's working directory")
    parser.add_argument("--epochs", default="1,2,3,5,2@40,5@40",
                        help="QAT epoch counts, comma-separated; N@L trains only the last L weighted layers")
    args = parser.parse_args()
    start, test = args.work / "qat-7bit", args.work / "fashion-test"
    demo = args.work / "demo" / "bundle"
    if not ((start / "calibration").is_dir() and test.is_dir() and (demo / "manifest.json").is_file()):
        print(f"error: {args.work} lacks benchmarks/qat.py's demo bundle, qat-7bit bundle or test images; run "
              f"`python benchmarks/qat.py --out {args.work}` first", file=sys.stderr)
        return 2
    from edgetl.bundle import open_bundle

    out = args.work / "epochs"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load_before = os.getloadavg()[0]
    print("timing the default fine-tuning...", file=sys.stderr)
    fine_tuning = fine_tuning_seconds(out, Path(open_bundle(demo).dataset), out / "fine-tune")
    # The start: the demo's bundle with the 7-bit variant's calibration cache, so each row's PTQ reads it.
    base = Path(shutil.copytree(demo, out / "start"))
    shutil.copytree(start / "calibration", base / "calibration", dirs_exist_ok=True)
    cache: dict[Any, Any] = {}
    rows = []
    for spec in (e for e in args.epochs.split(",") if e):
        epochs, _, layers = spec.partition("@")
        print(f"QAT, {spec}...", file=sys.stderr)
        rows.append(qat_row(base, out, int(epochs), test, cache, int(layers) if layers else None))
        print(f"  {json.dumps(rows[-1])}", file=sys.stderr)
    train_s = fine_tuning.get("train_s")
    for row in rows:
        if row.get("qat_s") and train_s:
            row["qat_vs_fine_tuning"] = round(row["qat_s"] / train_s, 2)
    document = {
        "benchmark": "qat_epochs",
        "command": "python benchmarks/qat_epochs.py",
        "host": {"cpu_count": os.cpu_count(), "load_average_1m_before": round(load_before, 2),
                 "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "model": "EfficientNet-Lite0, edgetl demo classifier at 128 px, 7-bit weights rounded to nearest (PTQ fails "
                 "the gate on purpose), TensorRT format, exact numerics",
        "gate": {"max_drop_points": MAX_DROP, "min_agreement": MIN_AGREEMENT},
        "fine_tuning": fine_tuning,
        "test_images": sum(1 for _ in test.rglob("*.png")),
        "rows": rows,
    }
    from edgetl.fileio import write_json

    write_json(RESULTS, document)
    print(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
