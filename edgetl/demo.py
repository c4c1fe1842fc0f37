"""The whole pipeline on embedded defaults, offline, in a few minutes on a laptop CPU.

digits sample -> fine-tune EfficientNet-Lite0 -> export to ONNX -> INT8 (QDQ) -> validate -> predict
-> bench, ending in one summary: accuracy FP32 vs INT8 and their agreement (measured by the runtime
a device uses), latency, sizes, and the path of the bundle.

The output directory is owned by the demo: a rerun replaces it cleanly. A directory the demo did not
create (no ``.edgetl-demo`` marker) is never deleted.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import BadInputError

MARKER = ".edgetl-demo"


@dataclass
class DemoConfig:
    """Settings of `run_demo`; the defaults are the embedded demo.

    Args:
        out: output directory (replaced on every run).
        epochs: fine-tuning epochs.
        quick: a smaller, faster run (smoke tests, CI): fewer images, 64 px, fewer epochs of the linear
            probe on cached backbone features.
        strategy: fine-tuning strategy (`edgetl.train.strategies`).
        train_per_class, val_per_class: digits sample size.
        img_size: model input side in pixels.
        calib_size: INT8 calibration images.
        bench_iters: timed calls per artifact and batch size.
        seed: seeds the sample, the split and training.
    """

    out: str | Path = "edgetl-demo"
    epochs: int | None = None
    quick: bool = False
    strategy: str | None = None
    train_per_class: int | None = None
    val_per_class: int | None = None
    img_size: int | None = None
    calib_size: int | None = None
    bench_iters: int | None = None
    seed: int = 0

    def resolved(self) -> dict[str, Any]:
        """Concrete values: explicit settings win over the (quick) defaults."""
        base = (dict(strategy="linear-probe", epochs=15, train_per_class=20, val_per_class=10, img_size=64,
                     calib_size=32, bench_iters=10)
                if self.quick else
                dict(strategy="linear-probe", epochs=20, train_per_class=30, val_per_class=20, img_size=128,
                     calib_size=100, bench_iters=30))
        for key in base:
            if getattr(self, key) is not None:
                base[key] = getattr(self, key)
        if base["epochs"] < 1:
            raise BadInputError("--epochs must be >= 1")
        return base


@dataclass
class DemoResult:
    """What the demo produced: the bundle, the measured numbers, and per-step timings."""

    out_dir: Path
    bundle_dir: Path
    archive: Path
    summary: dict[str, Any]
    steps: dict[str, float] = field(default_factory=dict)
    validation_passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out_dir), "bundle": str(self.bundle_dir), "archive": str(self.archive),
                "summary": self.summary, "steps_s": self.steps, "validation_passed": self.validation_passed}


def _prepare(out: Path) -> None:
    """Empty ``out`` for a new run, refusing to delete anything the demo did not create."""
    if out.exists():
        if not out.is_dir():
            raise BadInputError(f"{out} exists and is not a directory", hint="choose another --out")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise BadInputError(f"{out} exists and was not created by `edgetl demo`; refusing to replace it",
                                hint="choose another --out, or remove the directory yourself")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("created by `edgetl demo`; rerunning the demo replaces this directory\n")


def _accuracy(predictor: Any, samples: list[Any], labels: list[str]) -> tuple[float, list[int]]:
    preds = []
    for i in range(0, len(samples), 32):
        chunk = samples[i : i + 32]
        preds += [r.index for r in predictor.predict([s.path for s in chunk], top_k=1)]
    correct = sum(int(p == s.label) for p, s in zip(preds, samples))
    return correct / max(1, len(samples)), preds


def run_demo(cfg: DemoConfig, *, say: Callable[[str], None] = lambda _m: None) -> DemoResult:
    """Run the demo pipeline; ``say`` receives one line per step (the CLI prints them to stderr).

    Raises:
        BadInputError: ``out`` exists and was not made by the demo.
        MissingDependencyError: the ``train`` extra is missing (torch, timm, onnx...).
    """
    settings = cfg.resolved()
    out = Path(cfg.out).resolve()
    _prepare(out)  # before the heavy imports: a wrong --out fails in a second
    from edgetl.bundle import pack
    from edgetl.data import load_classification_data
    from edgetl.data.samples import write_digits
    from edgetl.export import export_checkpoint
    from edgetl.quantize import quantize_bundle
    from edgetl.runtime import load
    from edgetl.runtime.bench import bench_bundle
    from edgetl.train.classify import TrainConfig, train_classifier
    from edgetl.validate import validate_bundle

    steps: dict[str, float] = {}
    n_steps = 7

    def step(i: int, name: str, text: str) -> float:
        say(f"[{i}/{n_steps}] {text}")
        return time.perf_counter()

    t = step(1, "data", f"writing the digits sample ({settings['train_per_class']} train + "
                        f"{settings['val_per_class']} val images per class, {settings['img_size']} px)")
    data_dir = out / "data" / "digits"
    write_digits(data_dir, train_per_class=settings["train_per_class"], val_per_class=settings["val_per_class"],
                 size=settings["img_size"], seed=cfg.seed)
    data = load_classification_data(data_dir)
    steps["data"] = time.perf_counter() - t

    t = step(2, "train", f"fine-tuning EfficientNet-Lite0 (ImageNet weights, {settings['strategy']}, "
                         f"{settings['epochs']} epoch(s))")
    train_cfg = TrainConfig(data=str(data_dir), model="efficientnet_lite0", weights="pretrained",
                            strategy=settings["strategy"],
                            epochs=settings["epochs"], batch_size=32, img_size=settings["img_size"], hflip=False,
                            warmup_epochs=0.0 if settings["epochs"] == 1 else 1.0, seed=cfg.seed, device="auto",
                            out=str(out / "run"))
    trained = train_classifier(train_cfg, progress=True)
    steps["train"] = time.perf_counter() - t
    torch_top1 = trained.best_top1 / 100.0  # the training loop reports percentages
    say(f"      best validation top-1 (PyTorch): {100 * torch_top1:.1f}%")

    t = step(3, "export", "exporting to ONNX with a PyTorch parity check and golden samples")
    bundle_dir = out / "bundle"
    export_checkpoint(trained.best_checkpoint, bundle_dir, parity_data=str(data_dir), golden=8,
                      name="digits-efficientnet-lite0")
    steps["export"] = time.perf_counter() - t

    t = step(4, "quantize", f"INT8 post-training quantization (QDQ, {settings['calib_size']} calibration images)")
    # The demo deploys on this machine's CPU: uint8 activations are ONNX Runtime's fast CPU path. A TensorRT
    # target uses the default symmetric int8 instead (`edgetl quantize --activations int8`).
    quantize_bundle(bundle_dir, "int8", calib_data=str(data_dir), calib_size=settings["calib_size"],
                    activation_type="uint8", seed=cfg.seed, progress=True)
    steps["quantize"] = time.perf_counter() - t

    t = step(5, "validate", "validating INT8 against the FP32 reference on the validation split")
    report = validate_bundle(bundle_dir, candidate="int8", reference="fp32", data=str(data_dir))
    steps["validate"] = time.perf_counter() - t
    passed = bool(getattr(report, "passed", False))
    say(f"      validation gate: {'PASSED' if passed else 'FAILED'}")

    t = step(6, "predict", "predicting with the device runtime (FP32 and INT8, ONNX Runtime)")
    with load(bundle_dir, precision="fp32") as fp32, load(bundle_dir, precision="int8") as int8:
        acc32, pred32 = _accuracy(fp32, data.val, data.classes)
        acc8, pred8 = _accuracy(int8, data.val, data.classes)
    with load(bundle_dir) as best:
        chosen = best.describe()
        examples = []
        for sample in data.val[:: max(1, len(data.val) // 4)][:4]:
            r = best.predict(sample.path, top_k=1)
            examples.append({"image": Path(sample.path).name, "truth": data.classes[sample.label],
                             "predicted": r.label, "score": round(r.score, 3)})
    agreement = sum(int(a == b) for a, b in zip(pred32, pred8)) / max(1, len(pred32))
    steps["predict"] = time.perf_counter() - t
    for ex in examples:
        say(f"      {ex['image']}: {ex['predicted']} ({ex['score']:.2f}), truth {ex['truth']}")

    t = step(7, "bench", f"benchmarking every artifact (batch 1 and 8, {settings['bench_iters']} iterations)")
    bench = bench_bundle(bundle_dir, batches=(1, 8), iters=settings["bench_iters"], warmup=3,
                         checkpoint=trained.best_checkpoint, verify=False)
    archive = pack(bundle_dir, out / "digits-efficientnet-lite0.tar.gz")
    steps["bench"] = time.perf_counter() - t

    def row(precision: str, batch: int) -> dict[str, Any]:
        wanted = ("int8", "mixed") if precision == "int8" else (precision,)
        for r in bench["rows"]:
            if r["batch"] == batch and r["precision"] in wanted and r["backend"] != "torch":
                return r
        return {}

    from edgetl.bundle import open_bundle

    bundle = open_bundle(bundle_dir, verify=False)
    sizes = {a.precision: a.bytes for a in bundle.find(kind="onnx")}
    summary = {
        "val_images": len(data.val),
        "top1": {"pytorch": torch_top1, "fp32": acc32, "int8": acc8},
        "agreement_fp32_int8": agreement,
        "latency_ms_b1": {"fp32": row("fp32", 1).get("p50_ms"), "int8": row("int8", 1).get("p50_ms"),
                          "pytorch": next((r["p50_ms"] for r in bench["rows"]
                                           if r["backend"] == "torch" and r["batch"] == 1), None)},
        "throughput_b8": {"fp32": row("fp32", 8).get("throughput_ips"), "int8": row("int8", 8).get("throughput_ips"),
                          "pytorch": next((r["throughput_ips"] for r in bench["rows"]
                                           if r["backend"] == "torch" and r["batch"] == 8), None)},
        "size_bytes": {"checkpoint": Path(trained.best_checkpoint).stat().st_size,
                       "fp32": sizes.get("fp32"), "int8": sizes.get("int8", sizes.get("mixed"))},
        "runtime_choice": {"artifact": chosen["artifact"], "why": chosen["why"]},
        "validation": report.to_dict() if hasattr(report, "to_dict") else None,
        "examples": examples,
        "bench": bench,
    }
    return DemoResult(out, bundle_dir, archive, summary, steps, passed)


def format_summary(result: DemoResult) -> str:
    """The one table the demo ends with."""
    from edgetl.cli.common import format_table

    s = result.summary

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    def ips(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} img/s"

    def mb(v: int | None) -> str:
        return "-" if v is None else f"{v / 1e6:.2f} MB"

    rows = [
        ["top-1 accuracy", pct(s["top1"]["pytorch"]), pct(s["top1"]["fp32"]), pct(s["top1"]["int8"])],
        ["FP32/INT8 agreement", "", "", pct(s["agreement_fp32_int8"])],
        ["latency p50, batch 1", ms(s["latency_ms_b1"]["pytorch"]), ms(s["latency_ms_b1"]["fp32"]),
         ms(s["latency_ms_b1"]["int8"])],
        ["throughput, batch 8", ips(s["throughput_b8"]["pytorch"]), ips(s["throughput_b8"]["fp32"]),
         ips(s["throughput_b8"]["int8"])],
        ["model size", mb(s["size_bytes"]["checkpoint"]), mb(s["size_bytes"]["fp32"]), mb(s["size_bytes"]["int8"])],
    ]
    table = format_table(["", "PyTorch (checkpoint)", "ONNX FP32", "ONNX INT8"], rows)
    total = sum(result.steps.values())
    lines = [
        "",
        f"edgetl demo: digits, EfficientNet-Lite0, {s['val_images']} validation images "
        f"(accuracy measured by the device runtime)",
        table,
        f"validation gate (INT8 vs FP32): {'PASSED' if result.validation_passed else 'FAILED'}",
        f"runtime auto choice: {s['runtime_choice']['artifact']} ({s['runtime_choice']['why']})",
        "steps: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.steps.items()) + f" (total {total:.0f}s)",
        f"bundle: {result.bundle_dir}",
        f"packed: {result.archive}",
        f"next:   edgetl predict {result.bundle_dir} IMAGE.png   |   edgetl info {result.bundle_dir}",
    ]
    return "\n".join(lines)
