"""Transfer gain on real data, against a classical baseline: what pretraining buys on Fashion-MNIST.

On the Fashion-MNIST sample shipped with edgetl (28 px grayscale product photos, 10 classes; one
validation set of all 300 shipped validation images shared by every run), EfficientNet-Lite0 is trained
with each strategy on 10, 50 and all 100 shipped training images per class, for the same number of
optimizer steps and batch size, and the best validation top-1 is reported:

- ``linear-probe``: frozen ImageNet backbone, new head (features cached);
- ``partial``: the last backbone stage and the head train;
- ``full``: everything trains, the backbone at a tenth of the head's learning rate;
- ``scratch``: no pretrained weights (what the architecture alone does in the same steps);
- ``logistic regression``: scikit-learn's logistic regression on the raw 784 pixels (the classical
  baseline: if transfer learning cannot beat it, it is not earning its cost).

Negative transfer is flagged when fine-tuning (``partial``, ``full``) loses to the baseline or to the
frozen backbone (``linear-probe``), i.e. when training the pretrained features made them worse.

Cost: 96 px inputs (the 28 px images upscaled; the linear probe gains 2 points more at 128 px, see
`edgetl.demo`) and 300 steps of batch 25 keep the 12 runs near 8 minutes on a quiet 2-core CPU (150 steps
took 4 minutes and left fine-tuning at 100 images per class after 4 epochs, still improving). 300 steps
are 75 epochs at 10 images per class and 7.5 at 100. One seed; with 300 validation images one image is
0.33 points and differences under ~3 points are noise.

    python benchmarks/transfer.py [--size 96] [--steps 300] [--batch 25] [--per-class 10 50 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "transfer.json"
STRATEGIES = ("linear-probe", "partial", "full", "scratch")
BASELINE = "logistic-regression"
#: fine-tuning strategies that must beat the baseline and the frozen backbone
FINE_TUNING = ("partial", "full")


def _pixels(root: Path, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The split's images as raw pixels in [0, 1] (784 per 28 px image) and their labels."""
    from PIL import Image

    features, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).glob("*.png")):
            with Image.open(path) as image:
                features.append(np.asarray(image.convert("L"), dtype=np.float32).ravel() / 255.0)
            labels.append(label)
    return np.stack(features), np.asarray(labels)


def logistic_regression(root: Path, classes: list[str], seed: int) -> dict[str, Any]:
    """scikit-learn's logistic regression (default regularisation) on raw pixels: top-1 on ``val``."""
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    x_train, y_train = _pixels(root, "train", classes)
    x_val, y_val = _pixels(root, "val", classes)
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(x_train, y_train)
    top1 = 100.0 * float(np.mean(model.predict(x_val) == y_val))
    return {"strategy": BASELINE, "top1": round(top1, 3), "seconds": round(time.perf_counter() - started, 1)}


def negative_transfer(results: dict[str, dict[str, Any]]) -> list[str]:
    """Where fine-tuning lost to the pixel baseline or to the frozen backbone, in words."""
    flags = []
    for strategy in FINE_TUNING:
        top1 = results[strategy]["top1"]
        for rival in (BASELINE, "linear-probe"):
            if top1 < results[rival]["top1"]:
                flags.append(f"{strategy} {top1:.1f} < {rival} {results[rival]['top1']:.1f}")
    return flags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="input side (px)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from edgetl.data.samples import FASHION_NAMES, fashion_shipped_counts, write_fashion
    from edgetl.fileio import write_json
    from edgetl.tables import format_table
    from edgetl.train.classify import TrainConfig, train_classifier

    val_images = 10 * fashion_shipped_counts()["val"]
    classes = sorted(FASHION_NAMES)
    rows, records, verdicts = [], [], {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for per_class in args.per_class:
            data = tmp_path / f"fashion-{per_class}"
            write_fashion(data, train_per_class=per_class)  # nested: the 10 are among the 50
            results = {BASELINE: {"per_class": per_class, **logistic_regression(data, classes, args.seed)}}
            print(f"  {per_class}/class {BASELINE}: top-1 {results[BASELINE]['top1']:.1f}%", file=sys.stderr)
            steps_per_epoch = -(-10 * per_class // args.batch)
            for strategy in STRATEGIES:
                cfg = TrainConfig(
                    data=data, strategy=strategy, unfreeze=1, img_size=args.size, batch_size=args.batch,
                    epochs=-(-args.steps // steps_per_epoch), max_steps=args.steps, seed=args.seed, device="cpu",
                    out=tmp_path / "runs" / f"{per_class}-{strategy}",
                )
                t0 = time.perf_counter()
                result = train_classifier(cfg, progress=False)
                results[strategy] = {
                    "per_class": per_class, "strategy": strategy, "top1": result.best_top1,
                    "best_epoch": result.best_epoch, "steps": result.history[-1]["step"],
                    "epochs": len(result.history), "seconds": round(time.perf_counter() - t0, 1),
                }
                print(f"  {per_class}/class {strategy}: top-1 {result.best_top1:.1f}% "
                      f"({results[strategy]['seconds']:.0f} s)", file=sys.stderr)
            base = results[BASELINE]["top1"]
            for record in results.values():
                record["gain_over_baseline"] = round(record["top1"] - base, 2)
                records.append(record)
            verdicts[per_class] = negative_transfer(results)
            rows.append((per_class, *(f"{results[s]['top1']:.1f}" for s in (BASELINE, *STRATEGIES)),
                         f"{max(results[s]['top1'] for s in STRATEGIES) - base:+.1f}",
                         "; ".join(verdicts[per_class]) or "none"))
    headers = ["train/class", "logistic regression (pixels)", *STRATEGIES, "best vs baseline", "negative transfer"]
    print(f"EfficientNet-Lite0 on the Fashion-MNIST sample, {args.size} px, batch {args.batch}, {args.steps} steps "
          f"each, {val_images} validation images, CPU ({torch.get_num_threads()} threads); top-1 %")
    print(format_table(headers, rows))
    for per_class, flags in verdicts.items():
        print(f"negative transfer at {per_class}/class: {'; '.join(flags) if flags else 'none'}")
    document = {
        "benchmark": "transfer", "dataset": "fashion-mnist sample", "model": "efficientnet_lite0",
        "size": args.size, "steps": args.steps, "batch": args.batch, "val_images": val_images, "device": "cpu",
        "threads": torch.get_num_threads(), "baseline": f"{BASELINE} on raw pixels (scikit-learn, default C=1)",
        "results": records, "negative_transfer": {str(k): v for k, v in verdicts.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
