"""Transfer gain on real data: what pretraining buys with 10 and with 50 training images per class.

On the digits sample (scikit-learn's handwritten digits rendered as RGB images; one validation set of
``--val-per-class`` images per class shared by every run), EfficientNet-Lite0 is trained with each
strategy for the same number of optimizer steps and batch size, and the best validation top-1 is
reported. ``scratch`` (no pretrained weights) is the baseline; each row shows its gain over it.

    python benchmarks/transfer.py [--size 96] [--steps 40] [--batch 25] [--per-class 10 50]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "transfer.json"
STRATEGIES = ("linear-probe", "partial", "full", "scratch")


def _subset(full: Path, out: Path, per_class: int) -> Path:
    """The first ``per_class`` training images of every class, and the same validation set."""
    for class_dir in sorted((full / "train").iterdir()):
        target = out / "train" / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(image, target / image.name)
    shutil.copytree(full / "val", out / "val")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="input side (px)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--val-per-class", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from edgetl.cli.common import format_table
    from edgetl.data.samples import write_digits
    from edgetl.train.classify import TrainConfig, train_classifier

    rows, records = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        full = tmp_path / "digits"
        write_digits(full, train_per_class=max(args.per_class), val_per_class=args.val_per_class,
                     size=args.size, seed=args.seed)
        for per_class in args.per_class:
            data = _subset(full, tmp_path / f"digits-{per_class}", per_class)
            results = {}
            for strategy in STRATEGIES:
                epochs = -(-args.steps // -(-10 * per_class // args.batch))  # enough epochs for the steps
                cfg = TrainConfig(
                    data=data, strategy=strategy, img_size=args.size, batch_size=args.batch, epochs=epochs,
                    max_steps=args.steps, hflip=False, seed=args.seed, device="cpu",
                    out=tmp_path / "runs" / f"{per_class}-{strategy}",
                )
                t0 = time.perf_counter()
                result = train_classifier(cfg, progress=False)
                results[strategy] = {
                    "per_class": per_class, "strategy": strategy, "top1": result.best_top1,
                    "best_epoch": result.best_epoch, "steps": result.history[-1]["step"],
                    "epochs": len(result.history), "seconds": round(time.perf_counter() - t0, 1),
                }
                print(f"  {per_class}/class {strategy}: top-1 {result.best_top1:.1f}%", file=sys.stderr)
            base = results["scratch"]["top1"]
            for record in results.values():
                record["gain_over_scratch"] = round(record["top1"] - base, 2)
                records.append(record)
                rows.append((per_class, record["strategy"], f"{record['top1']:.1f}",
                             f"{record['gain_over_scratch']:+.1f}", record["steps"], record["epochs"],
                             record["seconds"]))
    table = format_table(["train/class", "strategy", "val top-1 %", "vs scratch", "steps", "epochs", "seconds"], rows)
    print(f"EfficientNet-Lite0 on digits, {args.size} px, batch {args.batch}, {args.steps} steps each, "
          f"{args.val_per_class * 10} validation images, CPU ({torch.get_num_threads()} threads)")
    print(table)
    lowest = min(args.per_class)
    low = {r["strategy"]: r["top1"] for r in records if r["per_class"] == lowest}
    best_pretrained = max(low[s] for s in STRATEGIES if s != "scratch")
    verdict = best_pretrained >= low["scratch"] + 20
    print(f"pretrained beats scratch at {lowest}/class by {best_pretrained - low['scratch']:.1f} points: "
          f"{'yes' if verdict else 'NO'}")
    document = {
        "benchmark": "transfer", "model": "efficientnet_lite0", "size": args.size, "steps": args.steps,
        "batch": args.batch, "val_images": args.val_per_class * 10, "device": "cpu",
        "threads": torch.get_num_threads(), "results": records,
        "pretrained_clearly_beats_scratch": verdict, "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from edgetl.fileio import write_json

    write_json(args.out, document)
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
