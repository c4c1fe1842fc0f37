"""Training throughput per strategy: images/s and the time of one epoch, on CPU (and CUDA with AMP).

Each image strategy runs real training steps (digits images from disk, augmentation, forward,
backward, optimizer) through `edgetl.train.loop`; ``linear-probe`` is measured as the library runs it:
one backbone pass to cache features, then epochs over the cached features (head only). The epoch
time is for ``--images`` training images; ratios are against ``full`` measured in the same run.

    python benchmarks/train_throughput.py [--size 96] [--batch 32] [--steps 4] [--images 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
IMAGE_STRATEGIES = ("partial", "full", "scratch")


def _measure_images(strategy: str, samples: list, spec, args, device, amp: bool) -> float:
    """Images/s of training steps for one strategy (after one warm-up step)."""
    import torch

    from edgetl.data.torch_datasets import ImageDataset, make_loader
    from edgetl.data.transforms import train_transform
    from edgetl.models import create
    from edgetl.train.loop import StepContext, build_optimizer, run_epoch
    from edgetl.train.strategies import DEFAULT_LR, apply_strategy

    torch.manual_seed(0)
    model = create("efficientnet_lite0", weights="none" if strategy == "scratch" else "pretrained", num_classes=10)
    plan = apply_strategy(model, strategy, lr=DEFAULT_LR[strategy], unfreeze=2)
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(plan.param_groups, "adamw", None)
    ctx = StepContext(model=model, optimizer=optimizer, loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=0.1),
                      device=device, total_steps=1000, warmup_steps=0, amp=amp, channels_last=True,
                      scaler=torch.amp.GradScaler("cuda") if amp else None)
    dataset = ImageDataset(samples, train_transform(spec, hflip=False))
    plan.apply_train_mode(model)
    loader = make_loader(dataset, batch_size=args.batch, shuffle=True, workers=args.workers,
                         generator=torch.Generator().manual_seed(0))
    batches = iter(loader)
    ctx.max_steps = 1
    run_epoch(ctx, model, [next(batches)])  # warm-up
    chosen = [next(batches) for _ in range(args.steps)]
    _sync(device)
    ctx.max_steps = None
    t0 = time.perf_counter()
    record = run_epoch(ctx, model, chosen)
    _sync(device)
    return record["images"] / (time.perf_counter() - t0)


def _measure_linear_probe(samples: list, spec, args, device, amp: bool) -> dict:
    """Feature caching (images/s) and one head-only epoch over cached features (seconds)."""
    import torch

    from edgetl.models import create
    from edgetl.train.features import extract_features
    from edgetl.train.loop import StepContext, build_optimizer, run_epoch, tensor_batches
    from edgetl.train.strategies import DEFAULT_LR, apply_strategy

    torch.manual_seed(0)
    model = create("efficientnet_lite0", num_classes=10)
    plan = apply_strategy(model, "linear-probe", lr=DEFAULT_LR["linear-probe"])
    model.to(device).to(memory_format=torch.channels_last)
    extract_features(model, samples[: args.batch], spec, batch_size=args.batch, device=device,
                     channels_last=True, amp=amp)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    feats, labels, _ = extract_features(model, samples, spec, batch_size=64, device=device,
                                        channels_last=True, amp=amp)
    _sync(device)
    cache_seconds = time.perf_counter() - t0
    feats, labels = feats.to(device), labels.to(device)
    head = model.get_classifier()
    ctx = StepContext(model=head, optimizer=build_optimizer(plan.param_groups, "adamw", None),
                      loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=0.1), device=device,
                      total_steps=1000, warmup_steps=0)
    run_epoch(ctx, head, tensor_batches(feats, labels, args.batch, torch.Generator().manual_seed(0)))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    epochs = 5
    for epoch in range(epochs):
        run_epoch(ctx, head, tensor_batches(feats, labels, args.batch, torch.Generator().manual_seed(epoch)))
    _sync(device)
    head_epoch = (time.perf_counter() - t0) / epochs
    return {"cache_images_per_second": len(samples) / cache_seconds, "cache_seconds": cache_seconds,
            "head_epoch_seconds": head_epoch}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _run_device(device_name: str, samples: list, spec, args) -> list[dict]:
    import torch

    device = torch.device(device_name)
    amp = device.type == "cuda"
    n = args.images
    rows = []
    ips = {}
    for strategy in IMAGE_STRATEGIES:
        ips[strategy] = _measure_images(strategy, samples, spec, args, device, amp)
        print(f"  {device_name} {strategy}: {ips[strategy]:.1f} img/s", file=sys.stderr)
    lp = _measure_linear_probe(samples[:n], spec, args, device, amp)
    full_epoch = n / ips["full"]
    for strategy in IMAGE_STRATEGIES:
        epoch = n / ips[strategy]
        rows.append({"device": device_name, "amp": amp, "strategy": strategy,
                     "images_per_second": round(ips[strategy], 1), "epoch_seconds": round(epoch, 3),
                     "speedup_vs_full": round(full_epoch / epoch, 2)})
    head_epoch = lp["head_epoch_seconds"]
    rows.append({"device": device_name, "amp": amp, "strategy": "linear-probe (cached epoch)",
                 "images_per_second": round(n / head_epoch, 1), "epoch_seconds": round(head_epoch, 4),
                 "speedup_vs_full": round(full_epoch / head_epoch, 1)})
    first = lp["cache_seconds"] + head_epoch
    rows.append({"device": device_name, "amp": amp, "strategy": "linear-probe (1st epoch, incl. caching)",
                 "images_per_second": round(n / first, 1), "epoch_seconds": round(first, 3),
                 "speedup_vs_full": round(full_epoch / first, 2)})
    ten = lp["cache_seconds"] + 10 * head_epoch
    rows.append({"device": device_name, "amp": amp, "strategy": "linear-probe (10 epochs incl. caching, per epoch)",
                 "images_per_second": round(10 * n / ten, 1), "epoch_seconds": round(ten / 10, 3),
                 "speedup_vs_full": round(10 * full_epoch / ten, 2)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per strategy")
    parser.add_argument("--images", type=int, default=500, help="training images per epoch")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--devices", choices=("all", "cpu", "cuda"), default="all",
                        help="all = the CPU, plus CUDA when a GPU is visible")
    args = parser.parse_args()

    import torch

    from edgetl.data import load_classification_data
    from edgetl.data.samples import write_digits
    from edgetl.fileio import write_json
    from edgetl.models import get_model_info
    from edgetl.tables import format_table

    spec = get_model_info("efficientnet_lite0").preprocess_spec(args.size)
    per_class = max(-(-args.images // 10), -(-(args.steps + 1) * args.batch // 10))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp) / "digits", train_per_class=per_class, val_per_class=1, size=args.size)
        samples = load_classification_data(Path(tmp) / "digits").train
        devices = ["cpu"] if args.devices != "cuda" else []
        devices += ["cuda"] if args.devices != "cpu" and torch.cuda.is_available() else []
        for device in devices:
            rows += _run_device(device, samples, spec, args)
    print(f"EfficientNet-Lite0 training throughput, {args.size} px, batch {args.batch}, epoch = {args.images} images; "
          f"CPU threads {torch.get_num_threads()}"
          + (f"; GPU {torch.cuda.get_device_name(0)} (AMP)" if torch.cuda.is_available() else "; no CUDA GPU"))
    print(format_table(["device", "strategy", "images/s", "epoch s", "x full"],
                       [(r["device"], r["strategy"], r["images_per_second"], r["epoch_seconds"], r["speedup_vs_full"])
                        for r in rows]))
    first = next(r for r in rows if r["strategy"] == "linear-probe (cached epoch)")
    ok = first["speedup_vs_full"] >= 5
    print(f"linear-probe with cached features is {first['speedup_vs_full']}x faster per epoch than full "
          f"fine-tuning on {first['device']} (>= 5x: {'yes' if ok else 'NO'})")
    write_json(args.out, {"benchmark": "train_throughput", "model": "efficientnet_lite0", "size": args.size,
                          "batch": args.batch, "epoch_images": args.images, "rows": rows,
                          "cpu_threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "linear_probe_cached_at_least_5x": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
