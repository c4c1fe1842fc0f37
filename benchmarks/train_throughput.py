"""Training throughput: the classifier per strategy, and the detector against Ultralytics YOLOv8n.

Classifier (``--task classify``): images/s and the time of one epoch per strategy, on CPU (and CUDA
with AMP).

Each image strategy runs real training steps (digits images from disk, augmentation, forward,
backward, optimizer) through `edgetl.train.loop`; ``linear-probe`` is measured as the library runs it:
one backbone pass to cache features, then epochs over the cached features (head only). The epoch
time is for ``--images`` training images; ratios are against ``full`` measured in the same run.

Detector (``--task detect``): edgetl's ``yolo-lite0-n`` trained from scratch on the shapes sample (``edgetl data
sample shapes``) at 256 px, batch 16, for ``--epochs`` epochs with validation every epoch, each run in its own
process with ``--threads`` CPU threads; beside it, in the same run, the same training before the allocator,
memory-layout and activation-memory changes, the same model with ``edgetl train detect``'s default recipe (the
ImageNet backbone, its stem and stride-2/4 blocks frozen: no gradients and no saved activations there), and
Ultralytics YOLOv8n (from ``yolov8n.yaml``, no weights, the same YOLO folders, size, batch, epochs and threads)
when ``ultralytics`` is installed. Ultralytics trains every layer when it fine-tunes too, so its row is also its
fine-tuning speed. Images/s is the images each run trained on (edgetl drops a last partial batch every epoch,
Ultralytics does not) over the whole run's wall time; user and system CPU, minor page faults and peak RSS come
from the kernel's accounting of the child.
Targets: images/s at least Ultralytics', system CPU under 10 % of user CPU.

Model step (``--task step``): where the detector gap comes from. Each model's bare training step (forward,
a loss that touches every output, backward; no data, loss or optimizer) on the same random batch, each in
its own process with ``--threads`` threads (three processes per model, round robin, the median kept), in the
memory layout its trainer uses; its forward GFLOPs per
image (PyTorch's flop counter), the megabytes its layers' forward outputs take per image (written in the forward
pass and read back in the backward: what a memory-bound step streams), and the share of the step that the
depthwise convolutions' weight gradients take (the step again with those weights frozen). Compared with the
whole-run ratio of ``--task detect``, it shows how much of that gap the networks' own arithmetic explains. The
same step with PyTorch's own ReLU6, which keeps a copy of each activation's input, measures what edgetl's
output-saving ReLU6 (`edgetl.train.activations`) changes.

Scaling (``--task scale``): the same detector training in 1 and 2 data-parallel CPU processes
(torchrun, Gloo) with the same global batch, ``--threads`` threads each; on a machine with a CUDA GPU
also 1 GPU without and with AMP. Images/s is over the whole run's wall time (process start, validation
included); "train-loop images/s" counts the training steps only.

    python benchmarks/train_throughput.py [--task all|classify|detect|step|scale] [--size 96] [--batch 32] [--steps 4]
        [--images 500] [--epochs 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


# ---- detector: edgetl against Ultralytics YOLOv8n, same data, size, batch and threads -----------------------

DETECT_VARIANTS = ("edgetl", "edgetl-before", "edgetl-default", "ultralytics")
DETECT_LABELS = {
    "edgetl": "edgetl yolo-lite0-n",
    "edgetl-before": "edgetl yolo-lite0-n, before (glibc default allocator, NCHW, PyTorch's ReLU6)",
    "edgetl-default": "edgetl yolo-lite0-n, its default recipe (ImageNet backbone, partial)",
    "ultralytics": "Ultralytics YOLOv8n",
}
# How each run starts (weights, which layers train): from scratch (random weights, every layer trains, as
# Ultralytics' row does) or ``edgetl train detect``'s default, the ImageNet backbone with its stem and stride-2/4
# blocks frozen (``partial``). The edgetl children train with these; the rows report them.
DETECT_START = {"edgetl": ("none", "scratch"), "edgetl-before": ("none", "scratch"),
                "edgetl-default": ("pretrained", "partial"), "ultralytics": ("none", "all")}


def _detect_child(args: argparse.Namespace) -> int:
    """One training run in this (child) process; the parent measures its CPU, faults and RSS."""
    import json

    import torch

    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.child_out)
    t0 = time.perf_counter()
    if args.child == "ultralytics":
        import ultralytics.utils.torch_utils as ul_torch
        from ultralytics import YOLO, settings

        settings.update({"sync": False})
        ul_torch.NUM_THREADS = args.threads  # it resets torch's threads to cpu_count - 1 otherwise
        model = YOLO("yolov8n.yaml")
        model.train(data=str(data), epochs=args.epochs, imgsz=args.det_size, batch=args.det_batch, workers=0,
                    device="cpu", pretrained=False, amp=False, plots=False, project=str(out), name="ul",
                    exist_ok=True, verbose=False, seed=0, deterministic=False)
        metric = float(model.trainer.metrics.get("metrics/mAP50-95(B)", float("nan")))
        params = sum(p.numel() for p in model.model.parameters())
        trained = len(model.trainer.train_loader.dataset) * args.epochs  # its loader keeps the last partial batch
    else:
        import edgetl.train.engine as engine
        from edgetl.train.detect import DetectTrainConfig, train_detector

        before = args.child == "edgetl-before"
        if before:
            import edgetl.train.activations as activations

            engine.keep_freed_memory = lambda: False
            activations.lean_relu6 = lambda model: 0
        weights, strategy = DETECT_START[args.child]
        cfg = DetectTrainConfig(data=str(data), weights=weights, strategy=strategy, epochs=args.epochs,
                                img_size=args.det_size,
                                batch_size=args.det_batch, out=str(out / "edgetl"), device="cpu",
                                threads=args.threads, channels_last=not before, workers=0)
        result = train_detector(cfg, progress=False)
        metric = result.best_map
        trained = sum(epoch["images"] for epoch in result.history)
        from edgetl.detect.model import build_detector

        params = sum(p.numel() for p in build_detector(cfg.model, num_classes=5, weights="none").parameters())
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_seconds": wall, "map50_95": metric, "parameters": params, "trained_images": trained}))
    return 0


def _ultralytics_yaml(root: Path) -> Path:
    """The shapes sample as Ultralytics reads it: the same YOLO folders, an absolute ``path``."""
    import yaml

    source = yaml.safe_load((root / "data.yaml").read_text())
    target = root / "ultralytics.yaml"
    target.write_text(yaml.safe_dump({"path": str(root), "train": source["train"], "val": source["val"],
                                      "names": dict(enumerate(source["names"]))}))
    return target


def _child_json(cmd: list[str], scratch: Path, threads: int) -> tuple[dict[str, Any] | None, int, Any]:
    """Run ``cmd`` (this script as a child) with ``threads`` threads and Ultralytics kept offline in ``scratch``:
    the JSON of its last stdout line (None when it failed), its exit status, and the kernel's accounting of it."""
    import json
    import subprocess

    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(scratch / "ultralytics-config"),
           "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0 or not stdout.strip():
        return None, status, usage
    return json.loads(stdout.strip().splitlines()[-1]), status, usage


def _run_child(variant: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant in a fresh process; its wall time, user/system CPU, minor faults and peak RSS."""

    cmd = [sys.executable, __file__, "--child", variant, "--data", str(data), "--child-out", str(out),
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--det-size", str(args.det_size),
           "--det-batch", str(args.det_batch)]
    t0 = time.perf_counter()
    child, status, usage = _child_json(cmd, out, args.threads)
    wall = time.perf_counter() - t0
    if child is None:
        return {"variant": variant, "error": f"exit status {status}"}
    # The images each run trained on: edgetl drops a last partial batch every epoch, Ultralytics does not.
    images = child["trained_images"]
    return {
        "variant": variant, "label": DETECT_LABELS[variant], "threads": args.threads,
        "weights": DETECT_START[variant][0], "trains": DETECT_START[variant][1],
        "parameters_m": round(child["parameters"] / 1e6, 2), "trained_images": images,
        "wall_seconds": round(wall, 1), "images_per_second": round(images / wall, 2),
        "user_seconds": round(usage.ru_utime, 1), "system_seconds": round(usage.ru_stime, 1),
        "system_vs_user": round(usage.ru_stime / max(usage.ru_utime, 1e-9), 3),
        # Near 1 for a single-threaded run on an idle machine; well below, the run waited for a busy CPU and its
        # wall-clock figures understate it (the CPU-time figures do not).
        "cpu_seconds_per_wall_second": round((usage.ru_utime + usage.ru_stime) / max(wall, 1e-9), 2),
        "cpu_images_per_second": round(images / max(usage.ru_utime + usage.ru_stime, 1e-9), 2),
        "minor_page_faults_m": round(usage.ru_minflt / 1e6, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "map50_95": round(child["map50_95"], 4),
    }


def _ratio(ours: dict[str, Any], theirs: dict[str, Any], key: str) -> float:
    """``ours[key] / theirs[key]`` to two decimals: each verdict here is a ratio of two rows of the same run."""
    return round(ours[key] / theirs[key], 2)


def _detect_rows(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    from edgetl.data.shapes import write_shapes

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(DETECT_VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(DETECT_VARIANTS)}")
    notes = []
    if "ultralytics" in variants and importlib.util.find_spec("ultralytics") is None:
        variants.remove("ultralytics")
        notes.append("ultralytics is not installed (pip install ultralytics): no side-by-side row")
    rows = []
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        write_shapes(root)
        args.train_images = len(list((root / "images" / "train").iterdir()))
        for variant in variants:
            data = _ultralytics_yaml(root) if variant == "ultralytics" else root / "data.yaml"
            print(f"  detector: {DETECT_LABELS[variant]} ({args.epochs} epochs)...", file=sys.stderr)
            rows.append(_run_child(variant, data, Path(tmp) / variant, args))
            print(f"    {rows[-1]}", file=sys.stderr)
    ok_rows = {r["variant"]: r for r in rows if "error" not in r}
    verdict: dict[str, Any] = {"notes": notes}
    ours = ok_rows.get("edgetl")
    if ours is not None:
        verdict["system_under_10pct_of_user"] = ours["system_vs_user"] < 0.10
        if "ultralytics" in ok_rows:
            theirs = ok_rows["ultralytics"]
            verdict["images_per_second_vs_ultralytics"] = _ratio(ours, theirs, "images_per_second")
            verdict["cpu_images_per_second_vs_ultralytics"] = _ratio(ours, theirs, "cpu_images_per_second")
            verdict["at_least_ultralytics"] = ours["images_per_second"] >= theirs["images_per_second"]
        if "ultralytics" in ok_rows and "edgetl-default" in ok_rows:
            # Ultralytics fine-tunes every layer by default, so its from-scratch row is also its fine-tuning speed.
            default, theirs = ok_rows["edgetl-default"], ok_rows["ultralytics"]
            for key in ("images_per_second", "cpu_images_per_second"):
                verdict[f"default_recipe_{key}_vs_ultralytics"] = _ratio(default, theirs, key)
        if "edgetl-before" in ok_rows:
            verdict["speedup_vs_before"] = _ratio(ours, ok_rows["edgetl-before"], "images_per_second")
    return {"data": "edgetl shapes sample", "train_images": args.train_images, "img_size": args.det_size,
            "batch": args.det_batch, "epochs": args.epochs, "threads": args.threads,
            "host": {"cpu_count": os.cpu_count(), "load_average_1m_before": load_before,
                     "load_average_1m_after": round(os.getloadavg()[0], 2)},
            "rows": rows, "verdict": verdict}


def _print_detect(section: dict[str, Any]) -> bool:
    from edgetl.cli.common import format_table

    print(f"\nDetector training on the shapes sample ({section['train_images']} train images), "
          f"{section['img_size']} px, batch {section['batch']}, {section['epochs']} epochs, "
          f"{section['threads']} thread(s), validation every epoch; whole-run wall time")
    print(format_table(
        ["variant", "weights", "params M", "wall s", "images/s", "user s", "sys s", "sys/user", "faults M",
         "peak RSS MB", "mAP50-95"],
        [(r.get("label", r["variant"]), r.get("weights"), r.get("parameters_m"), r.get("wall_seconds"),
          r.get("images_per_second"), r.get("user_seconds"), r.get("system_seconds"), r.get("system_vs_user"),
          r.get("minor_page_faults_m"), r.get("peak_rss_mb"), r.get("map50_95", r.get("error")))
         for r in section["rows"]]))
    verdict = section["verdict"]
    for note in verdict.get("notes", []):
        print(f"note: {note}")
    ok = bool(verdict.get("system_under_10pct_of_user", False))
    print(f"system CPU under 10 % of user CPU: {'yes' if ok else 'NO'}")
    if "at_least_ultralytics" in verdict:
        print(f"images/s vs Ultralytics: {verdict['images_per_second_vs_ultralytics']}x "
              f"(per CPU second: {verdict['cpu_images_per_second_vs_ultralytics']}x): "
              f"{'yes' if verdict['at_least_ultralytics'] else 'NO'}")
        ok = ok and verdict["at_least_ultralytics"]
    if "default_recipe_images_per_second_vs_ultralytics" in verdict:
        print(f"edgetl's default recipe vs Ultralytics: {verdict['default_recipe_images_per_second_vs_ultralytics']}x "
              f"images/s (per CPU second: {verdict['default_recipe_cpu_images_per_second_vs_ultralytics']}x)")
    if "speedup_vs_before" in verdict:
        print(f"edgetl now vs before: {verdict['speedup_vs_before']}x images/s")
    return ok


# ---- model step: the networks' own forward + backward, profiled -----------------------------------------------

STEP_VARIANTS = ("step-edgetl", "step-edgetl-pytorch-relu6", "step-edgetl-default", "step-ultralytics")
STEP_LABELS = {"step-edgetl": "edgetl yolo-lite0-n (channels-last)",
               "step-edgetl-pytorch-relu6": "edgetl yolo-lite0-n with PyTorch's own ReLU6 (before)",
               "step-edgetl-default": "edgetl yolo-lite0-n, default recipe (stem and stride-2/4 blocks frozen)",
               "step-ultralytics": "Ultralytics YOLOv8n"}
STEP_STEPS = 4
STEP_REPEATS = 3


def _step_child(args: argparse.Namespace) -> int:
    """Time one model's bare training step in this (child) process, with and without its depthwise weight
    gradients, and count its forward FLOPs; print a JSON line."""
    import json

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgetl.train.cpu_memory import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # what edgetl's trainer does; Ultralytics' process gets the same allocator
    torch.manual_seed(0)
    if args.child == "step-ultralytics":
        from ultralytics.nn.tasks import DetectionModel

        model, layout = DetectionModel("yolov8n.yaml", nc=5, verbose=False), torch.contiguous_format
        run = model
    else:
        from edgetl.detect.model import build_detector
        from edgetl.train.activations import lean_relu6

        weights, strategy = DETECT_START["edgetl-default" if args.child == "step-edgetl-default" else "edgetl"]
        model = build_detector("yolo-lite0-n", num_classes=5, weights=weights)
        if strategy != "scratch":
            model.set_backbone_trainable(strategy)
        if args.child != "step-edgetl-pytorch-relu6":
            lean_relu6(model)  # what edgetl's trainer does
        layout = torch.channels_last
        model.to(memory_format=layout)
        run = model.forward_train
    model.train()
    x = torch.randn(args.det_batch, 3, args.det_size, args.det_size).contiguous(memory_format=layout)

    def outputs(value: Any) -> list:
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        return [t for v in values for t in (outputs(v) if isinstance(v, (list, tuple, dict)) else [v])
                if torch.is_tensor(t) and t.is_floating_point()]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        (sum(t.float().mean() for t in outputs(run(x)))).backward()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(STEP_STEPS):
        step()
    seconds = (time.perf_counter() - t0) / STEP_STEPS
    # The depthwise convolutions' weight gradients, measured by their absence: the same step with those weights
    # frozen (PyTorch then skips their gradient). A profiler's per-op shares moved by 10 points between runs.
    depthwise = [m.weight for m in model.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    for weight in depthwise:
        weight.requires_grad_(False)
    step()
    t0 = time.perf_counter()
    for _ in range(STEP_STEPS):
        step()
    without_depthwise_grads = (time.perf_counter() - t0) / STEP_STEPS
    one = x[:1]
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        run(one)
    # What the step streams through memory besides arithmetic: every leaf module's forward output for one image
    # (convolutions, normalizations, activations), each written in the forward pass and read back in the backward.
    written = [0]

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        written[0] += sum(t.numel() * t.element_size() for t in outputs(output))

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        run(one)
    for hook in hooks:
        hook.remove()
    # What autograd itself keeps for the backward pass (each storage once, parameters excluded): below the layer
    # outputs where layers save less than their output, or where frozen layers save nothing.
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    pair = x[:2]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kept = outputs(run(pair))  # alive until counted, so no storage is freed and reused in between
    del kept
    print(json.dumps({"step_seconds": seconds, "forward_gflops_per_image": flops.get_total_flops() / 1e9,
                      "activation_mb_per_image": written[0] / 2**20,
                      "saved_for_backward_mb_per_image": sum(saved.values()) / len(pair) / 2**20,
                      "parameters": sum(p.numel() for p in model.parameters()), "depthwise_convs": len(depthwise),
                      "depthwise_weight_gradient_share":
                          round(1 - without_depthwise_grads / seconds, 3) if depthwise else None}))
    return 0


def _step_rows(args: argparse.Namespace, detect: dict[str, Any] | None) -> dict[str, Any]:
    import importlib.util

    variants = [v for v in STEP_VARIANTS
                if v != "step-ultralytics" or importlib.util.find_spec("ultralytics") is not None]
    runs: dict[str, list[tuple[dict[str, Any], Any]]] = {v: [] for v in variants}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Round robin, STEP_REPEATS times: one process's step time moves by up to 10 % from the next one's on a
        # shared machine, so each row takes the median of its processes, and drift hits every variant alike.
        for repeat in range(STEP_REPEATS):
            for variant in variants:
                if variant in errors:
                    continue
                print(f"  model step: {variant} ({repeat + 1}/{STEP_REPEATS})...", file=sys.stderr)
                cmd = [sys.executable, __file__, "--child", variant, "--threads", str(args.threads),
                       "--det-size", str(args.det_size), "--det-batch", str(args.det_batch)]
                child, status, usage = _child_json(cmd, Path(tmp), args.threads)
                if child is None:
                    errors[variant] = f"exit status {status}"
                else:
                    runs[variant].append((child, usage))
    rows = []
    for variant in variants:
        if variant in errors:
            rows.append({"variant": variant, "error": errors[variant]})
            continue
        child = runs[variant][0][0]
        times = [c["step_seconds"] for c, _ in runs[variant]]
        step_seconds = statistics.median(times)
        rows.append({"variant": variant, "label": STEP_LABELS[variant],
                     "parameters_m": round(child["parameters"] / 1e6, 2),
                     "step_seconds": round(step_seconds, 3), "step_seconds_runs": [round(t, 3) for t in times],
                     "images_per_second": round(args.det_batch / step_seconds, 1),
                     "forward_gflops_per_image": round(child["forward_gflops_per_image"], 3),
                     "activation_mb_per_image": round(child["activation_mb_per_image"], 1),
                     "saved_for_backward_mb_per_image": round(child["saved_for_backward_mb_per_image"], 1),
                     "peak_rss_mb": round(statistics.median(u.ru_maxrss for _, u in runs[variant]) / 1024),
                     "depthwise_convs": child["depthwise_convs"],
                     "depthwise_weight_gradient_share": None if child["depthwise_weight_gradient_share"] is None
                     else round(statistics.median(c["depthwise_weight_gradient_share"] for c, _ in runs[variant]), 3)})
        print(f"    {rows[-1]}", file=sys.stderr)
    ok = {r["variant"]: r for r in rows if "error" not in r}
    verdict: dict[str, Any] = {}
    if "step-edgetl" in ok and "step-edgetl-pytorch-relu6" in ok:
        ours, before = ok["step-edgetl"], ok["step-edgetl-pytorch-relu6"]
        for key in ("step_seconds", "saved_for_backward_mb_per_image", "peak_rss_mb"):
            verdict[f"lean_relu6_{key}_vs_pytorch_relu6"] = _ratio(ours, before, key)
    if "step-edgetl" in ok and "step-ultralytics" in ok:
        ours, theirs = ok["step-edgetl"], ok["step-ultralytics"]
        verdict["step_time_vs_ultralytics"] = _ratio(ours, theirs, "step_seconds")
        verdict["forward_flops_vs_ultralytics"] = _ratio(ours, theirs, "forward_gflops_per_image")
        verdict["activation_memory_vs_ultralytics"] = _ratio(ours, theirs, "activation_mb_per_image")
        verdict["saved_for_backward_vs_ultralytics"] = _ratio(ours, theirs, "saved_for_backward_mb_per_image")
        if "step-edgetl-default" in ok:
            default = ok["step-edgetl-default"]
            verdict["default_recipe_step_time_vs_ultralytics"] = _ratio(default, theirs, "step_seconds")
            verdict["default_recipe_saved_for_backward_vs_ultralytics"] = _ratio(
                default, theirs, "saved_for_backward_mb_per_image")
        whole = (detect or {}).get("verdict", {}).get("cpu_images_per_second_vs_ultralytics")
        if whole:
            verdict["whole_run_cpu_time_vs_ultralytics"] = round(1 / whole, 2)
    return {"img_size": args.det_size, "batch": args.det_batch, "threads": args.threads, "steps": STEP_STEPS,
            "processes_per_variant": STEP_REPEATS, "rows": rows, "verdict": verdict}



def _print_step(section: dict[str, Any]) -> None:
    from edgetl.cli.common import format_table

    print(f"\nModel step only (forward + backward, random batch of {section['batch']} at {section['img_size']} px, "
          f"{section['threads']} thread(s), mean of {section['steps']} steps, median of "
          f"{section.get('processes_per_variant', 1)} processes per model)")
    print(format_table(
        ["model", "params M", "fwd GFLOPs/image", "activations MB/image", "saved for backward MB/image", "step s",
         "images/s", "peak RSS MB", "depthwise convs", "their weight gradients"],
        [(r.get("label", r["variant"]), r.get("parameters_m"), r.get("forward_gflops_per_image"),
          r.get("activation_mb_per_image"), r.get("saved_for_backward_mb_per_image"),
          r.get("step_seconds"), r.get("images_per_second"), r.get("peak_rss_mb"), r.get("depthwise_convs"),
          f"{100 * r['depthwise_weight_gradient_share']:.0f} % of the step" if r.get("depthwise_convs")
          else r.get("error", "-")) for r in section["rows"]]))
    verdict = section["verdict"]
    if "step_time_vs_ultralytics" in verdict:
        line = (f"edgetl's step takes {verdict['step_time_vs_ultralytics']}x Ultralytics' time for "
                f"{verdict['forward_flops_vs_ultralytics']}x its forward FLOPs and "
                f"{verdict.get('activation_memory_vs_ultralytics', '?')}x its activation memory")
        if "whole_run_cpu_time_vs_ultralytics" in verdict:
            line += f"; the whole training run takes {verdict['whole_run_cpu_time_vs_ultralytics']}x its CPU time"
        print(line)
    if "lean_relu6_step_seconds_vs_pytorch_relu6" in verdict:
        print(f"edgetl's output-saving ReLU6 against PyTorch's: {verdict['lean_relu6_step_seconds_vs_pytorch_relu6']}x "
              f"the step time, {verdict['lean_relu6_saved_for_backward_mb_per_image_vs_pytorch_relu6']}x what the "
              f"step keeps for the backward pass, {verdict['lean_relu6_peak_rss_mb_vs_pytorch_relu6']}x the peak RSS")
    if "default_recipe_step_time_vs_ultralytics" in verdict:
        print(f"with the default recipe's frozen stem and stride-2/4 blocks: "
              f"{verdict['default_recipe_step_time_vs_ultralytics']}x Ultralytics' step time, "
              f"{verdict['default_recipe_saved_for_backward_vs_ultralytics']}x what it keeps for the backward pass")


# ---- data-parallel scaling: 1 vs 2 processes on CPU; 1 GPU with and without AMP --------------------------

def _scale_run(root: Path, out: Path, processes: int, device: str, amp: bool, args: argparse.Namespace) -> dict:
    """``edgetl train detect`` in ``processes`` processes (torchrun for more than one), same global batch."""
    import json
    import os
    import subprocess

    per_process = max(1, args.det_batch // processes)
    train = ["train", "detect", "--data", str(root / "data.yaml"), "--img-size", str(args.det_size),
             "--epochs", str(args.epochs), "--batch-size", str(per_process), "--strategy", "scratch",
             "--device", device, "--threads", str(args.threads), "--out", str(out), "--quiet", "--json",
             "--amp" if amp else "--no-amp"]
    launcher = (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
                if processes > 1 else [])
    cmd = [sys.executable, *launcher, "-m", "edgetl", *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    row = {"device": device, "processes": processes, "amp": amp, "batch_per_process": per_process,
           "global_batch": per_process * processes, "threads_per_process": args.threads,
           "wall_seconds": round(wall, 1)}
    if done.returncode != 0:
        return {**row, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    result = json.loads(done.stdout)
    return {**row, "images_per_second": round(args.train_images * args.epochs / wall, 2),
            "train_loop_images_per_second": result["images_per_second"], "best_map": round(result["best_map"], 4)}


def _scale_rows(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgetl.data.shapes import write_shapes

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        write_shapes(root)
        args.train_images = len(list((root / "images" / "train").iterdir()))
        plans = [(1, "cpu", False), (2, "cpu", False)]
        if torch.cuda.is_available():
            plans += [(1, "cuda", False), (1, "cuda", True)]
        for processes, device, amp in plans:
            print(f"  scaling: {processes} process(es) on {device}{' with AMP' if amp else ''}...", file=sys.stderr)
            rows.append(_scale_run(root, Path(tmp) / f"{device}{processes}{amp}", processes, device, amp, args))
            print(f"    {rows[-1]}", file=sys.stderr)
    base = next((r for r in rows if r["device"] == "cpu" and r["processes"] == 1 and "error" not in r), None)
    for row in rows:
        if base is not None and "error" not in row:
            row["speedup_vs_1_cpu_process"] = _ratio(row, base, "images_per_second")
    return {"model": "yolo-lite0-n", "data": "edgetl shapes sample", "img_size": args.det_size,
            "epochs": args.epochs, "cpu_cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "rows": rows}


def _print_scale(section: dict[str, Any]) -> None:
    from edgetl.cli.common import format_table

    print(f"\nData-parallel detector training ({section['model']}, {section['img_size']} px, {section['epochs']} "
          f"epochs, from scratch, same global batch; {section['cpu_cores']} CPU cores"
          + (f", GPU {section['gpu']})" if section["gpu"] else ", no CUDA GPU)"))
    print(format_table(
        ["device", "processes", "AMP", "batch/process", "wall s", "images/s", "train-loop images/s", "x 1 CPU process",
         "mAP50-95"],
        [(r["device"], r["processes"], r["amp"], r["batch_per_process"], r["wall_seconds"], r.get("images_per_second"),
          r.get("train_loop_images_per_second"), r.get("speedup_vs_1_cpu_process"), r.get("best_map", r.get("error")))
         for r in section["rows"]]))


def _classify_section(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    import torch

    from edgetl.cli.common import format_table
    from edgetl.data import load_classification_data
    from edgetl.data.samples import write_digits
    from edgetl.models import get_model_info

    spec = get_model_info("efficientnet_lite0").preprocess_spec(args.size)
    per_class = max(-(-args.images // 10), -(-(args.steps + 1) * args.batch // 10))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp) / "digits", train_per_class=per_class, val_per_class=1, size=args.size)
        samples = load_classification_data(Path(tmp) / "digits").train
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            rows += _run_device(device, samples, spec, args)
    print(f"EfficientNet-Lite0 training throughput, {args.size} px, batch {args.batch}, epoch = {args.images} images; "
          f"CPU threads {torch.get_num_threads()}"
          + (f"; GPU {torch.cuda.get_device_name(0)} (AMP)" if torch.cuda.is_available() else "; no CUDA GPU"))
    print(format_table(["device", "strategy", "images/s", "epoch s", "x full"],
                       [(r["device"], r["strategy"], r["images_per_second"], r["epoch_seconds"], r["speedup_vs_full"])
                        for r in rows]))
    cpu_cached = next(r for r in rows if r["device"] == "cpu" and r["strategy"] == "linear-probe (cached epoch)")
    ok = cpu_cached["speedup_vs_full"] >= 5
    print(f"linear-probe with cached features is {cpu_cached['speedup_vs_full']}x faster per epoch than full "
          f"fine-tuning on CPU (>= 5x: {'yes' if ok else 'NO'})")
    return {"model": "efficientnet_lite0", "size": args.size, "batch": args.batch, "epoch_images": args.images,
            "rows": rows, "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "linear_probe_cached_at_least_5x": ok}, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["classify", "detect", "step", "scale", "all"], default="all",
                        help="which part to measure; the JSON keeps the other part's last figures")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per strategy")
    parser.add_argument("--images", type=int, default=500, help="training images per epoch")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10, help="detector: epochs per run")
    parser.add_argument("--threads", type=int, default=1, help="detector: CPU threads of every run")
    parser.add_argument("--det-size", type=int, default=256, help="detector: input side")
    parser.add_argument("--det-batch", type=int, default=16, help="detector: batch size")
    parser.add_argument("--variants", default=",".join(DETECT_VARIANTS),
                        help=f"detector runs, comma-separated: {', '.join(DETECT_VARIANTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=DETECT_VARIANTS + STEP_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child in STEP_VARIANTS:
        return _step_child(args)
    if args.child:
        return _detect_child(args)

    import json

    from edgetl.fileio import write_json

    document: dict[str, Any] = {"benchmark": "train_throughput"}
    if args.out.is_file():
        previous = json.loads(args.out.read_text())
        document.update({k: previous[k] for k in ("classify", "detect", "step", "scale") if k in previous})
    ok = True
    if args.task in ("classify", "all"):
        document["classify"], classify_ok = _classify_section(args)
        ok = ok and classify_ok
    if args.task in ("detect", "all"):
        document["detect"] = _detect_rows(args)
        ok = _print_detect(document["detect"]) and ok
    if args.task in ("step", "all"):
        document["step"] = _step_rows(args, document.get("detect"))
        _print_step(document["step"])
    if args.task in ("scale", "all"):
        document["scale"] = _scale_rows(args)
        _print_scale(document["scale"])
    write_json(args.out, document)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
