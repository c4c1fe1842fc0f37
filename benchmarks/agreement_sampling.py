"""The INT8 agreement of quantization.py's bundles on further draws of evaluation crops: how precise it is.

How precise is a 400-crop agreement figure, and which of `benchmarks/quantization.py`'s differences between
variants survive more crops? The same bundles, scored on further draws of evaluation crops.

`benchmarks/quantization.py` scores every variant on one draw of 400 random crops of the evaluation photos. Each
further draw here uses the same crop generator on the same photos (none of them seen in calibration) with its own
seed; draw 0 is that benchmark's own set. For the default TensorRT-format bundle (exact numerics), the default
CPU-format bundle (exact numerics and this machine's kernels) and FP16 (the noise floor), per draw and pooled:

- top-1 agreement with FP32 and the logit RMSE;
- a 95 % interval for the pooled agreement from a bootstrap over photos, not crops: crops of one photo share its
  content, so they are not independent samples, and a bootstrap over crops would claim more precision than the
  photos give;
- the agreement per photo (TensorRT format) beside FP32's median top-1/top-2 logit margin there, to show where
  the flips sit.

Then each one-step variant of `quantization.py` named in ``--variants`` (its bundle and settings, reused from the
shared working directory when they match), pooled over every crop: its agreement (exact; CPU formats also on this
machine's kernels) and logit RMSE, and its agreement minus its format's default's, paired crop by crop, with a 95 %
interval from the same bootstrap over photos: an interval that holds 0 is a difference these photos cannot show.

    python benchmarks/agreement_sampling.py [--work /tmp/edgetl-qbench] [--draws 5] [--variants a,b,...]

Writes benchmarks/results/agreement_sampling.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "agreement_sampling.json"
CROPS_PER_DRAW = 400
BOOTSTRAP_RESAMPLES = 2000
#: Draw k > 0 is seeded with DRAW_SEED + k (draw 0 is quantization.py's own set, seed 0).
DRAW_SEED = 1000
#: quantization.py's variants scored by default: each differs from its format's default in one setting.
VARIANTS = ("trt-noseq", "trt-nearest", "trt-minmax", "trt-nobc", "cpu-noseq", "cpu-nearest", "cpu-minmax",
            "cpu-nobc", "cpu-mse", "cpu-percentile", "cpu-mse-ranges")
#: The formats, by variant-name prefix; each one's default is quantization.py's variant of that name.
FORMATS = ("trt", "cpu")


def format_of(variant: str) -> str:
    """The format a quantization.py variant belongs to: its name's prefix (`FORMATS`)."""
    return variant.split("-")[0]


def draws(work: Path, first: Path, count: int) -> list[Path]:
    """``first`` (quantization.py's evaluation crops) and ``count - 1`` further draws of as many crops of the
    same photos, each made once in ``work``."""
    from quantization import EVALUATION_PHOTOS, draw_crops

    folders = [first]
    for k in range(1, count):
        folder = work / f"eval-draw-{k}"
        if not folder.is_dir():
            partial = work / f"eval-draw-{k}.partial"
            draw_crops(partial, EVALUATION_PHOTOS, CROPS_PER_DRAW, np.random.default_rng(DRAW_SEED + k))
            partial.rename(folder)
        folders.append(folder)
    return folders


def photo_of(path: Path) -> str:
    """The photo a crop came from: its file is ``<photo>-<k>.png``."""
    return path.stem.rsplit("-", 1)[0]


def bootstrap_interval(values: np.ndarray, photos: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> list[float]:
    """The 2.5th and 97.5th percentiles of the mean of ``values`` (one per crop: 1/0 for agreement, or a paired
    difference of two models' agreement) when whole photos (all their crops) are resampled with replacement."""
    names = np.unique(photos)
    sums = np.array([values[photos == n].sum() for n in names], dtype=np.float64)
    sizes = np.array([(photos == n).sum() for n in names], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(resamples, len(names)))
    means = sums[picks].sum(1) / sizes[picks].sum(1)
    return [round(float(q), 4) for q in np.percentile(means, [2.5, 97.5])]


def scored(logits: np.ndarray, reference: np.ndarray, draw: np.ndarray, photos: np.ndarray) -> dict[str, Any]:
    """Per-draw and pooled agreement and logit RMSE of ``logits`` against ``reference`` (one row per crop)."""
    from quantization import _rmse

    agree = agreement_of(logits, reference)
    per_draw = [{"agreement": float(agree[draw == k].mean()),
                 "logit_rmse": _rmse(logits[draw == k], reference[draw == k])} for k in np.unique(draw)]
    rates = [d["agreement"] for d in per_draw]
    return {"per_draw": per_draw, "pooled_agreement": float(agree.mean()),
            "pooled_interval_95": bootstrap_interval(agree, photos),
            "draw_range": [min(rates), max(rates)], "draw_spread_points": round(100 * (max(rates) - min(rates)), 2),
            "pooled_logit_rmse": _rmse(logits, reference)}


def agreement_of(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1.0 where ``logits`` pick FP32's top-1 class, else 0.0 (one per crop)."""
    return (logits.argmax(1) == reference.argmax(1)).astype(np.float64)


def variant_rows(names: list[str], work: Path, exported: Path, calib: Path, batch: np.ndarray,
                 reference: np.ndarray, photos: np.ndarray, defaults: dict[tuple[str, str], np.ndarray]) -> dict:
    """Each named quantization.py variant pooled over every crop, and its agreement minus its format default's
    (``defaults[(format, numerics)]``, per crop), paired, with the photo bootstrap's interval."""
    from quantization import VARIANTS as SETTINGS
    from quantization import _rmse, outputs, reused_int8

    rows: dict[str, Any] = {}
    for name in names:
        fmt = format_of(name)
        print(f"  {name}", file=sys.stderr)
        path = reused_int8(work / name, exported, calib, **SETTINGS[name])
        row: dict[str, Any] = {"settings": SETTINGS[name]}
        for numerics in ("exact", "device") if fmt == "cpu" else ("exact",):
            logits = outputs(path, batch, numerics)
            agree = agreement_of(logits, reference)
            difference = agree - defaults[(fmt, numerics)]
            row[numerics] = {
                "pooled_agreement": float(agree.mean()),
                "pooled_logit_rmse": _rmse(logits, reference),
                "vs_default_points": round(100 * float(difference.mean()), 2),
                "vs_default_interval_95_points": [round(100 * v, 2) for v in bootstrap_interval(difference, photos)]}
        rows[name] = row
    return rows


def main() -> int:
    from quantization import VARIANTS as SETTINGS
    from quantization import crops, outputs, publish, quantize_bundle_fp16, reused_int8, work_args, workspace

    from edgetl.data.imagesets import find_images

    def options(parser: Any) -> None:
        parser.add_argument("--draws", type=int, default=5, help="draws of 400 crops, the first being "
                            "quantization.py's own")
        parser.add_argument("--variants", default=",".join(VARIANTS),
                            help="quantization.py variants to compare with their format's default ('' for none)")

    args = work_args(__doc__.splitlines()[0], options)
    names = [v for v in args.variants.split(",") if v]
    comparable = [v for v in SETTINGS if format_of(v) in FORMATS and v not in FORMATS]
    unknown = [v for v in names if v not in comparable]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(comparable)}")
    work = Path(args.work)
    t0 = time.perf_counter()
    calib, evaluation, exported = workspace(work)
    folders = draws(work, evaluation, max(2, args.draws))
    batches, draw, photos = [], [], []
    for k, folder in enumerate(folders):
        batches.append(crops(exported, folder, CROPS_PER_DRAW))
        crop_photos = [photo_of(p) for p in find_images(folder, split="all").paths][:len(batches[-1])]
        draw += [k] * len(crop_photos)
        photos += crop_photos
    batch, draw_ids, photo_ids = np.concatenate(batches), np.array(draw), np.array(photos)
    print(f"{len(folders)} draws, {len(batch)} crops of {len(np.unique(photo_ids))} photos", file=sys.stderr)

    models = {  # name: (path, numerics, (format, numerics) when it is a format's default)
        "TensorRT format (default), exact": (reused_int8(work / "trt", exported, calib, **SETTINGS["trt"]), "exact",
                                             ("trt", "exact")),
        "CPU format (default), exact": (reused_int8(work / "cpu", exported, calib, **SETTINGS["cpu"]), "exact",
                                        ("cpu", "exact")),
        "CPU format (default), this machine's kernels": (work / "cpu" / "model.int8.onnx", "device",
                                                         ("cpu", "device")),
    }
    fp16_bundle = work / "fp16"
    if not (fp16_bundle / "model.fp16.onnx").is_file():
        import shutil

        shutil.rmtree(fp16_bundle, ignore_errors=True)
        shutil.copytree(exported, fp16_bundle)
        quantize_bundle_fp16(fp16_bundle)
    models["FP16 (noise floor)"] = (fp16_bundle / "model.fp16.onnx", "exact", None)

    reference = outputs(exported / "model.onnx", batch, "exact")
    top_two = np.sort(reference, axis=1)[:, -2:]
    margin = top_two[:, 1] - top_two[:, 0]
    rows: dict[str, Any] = {}
    defaults: dict[tuple[str, str], np.ndarray] = {}
    for name, (path, numerics, default_of) in models.items():
        print(f"  {name}", file=sys.stderr)
        logits = outputs(path, batch, numerics)
        rows[name] = scored(logits, reference, draw_ids, photo_ids)
        if default_of is not None:
            defaults[default_of] = agreement_of(logits, reference)
        if name.startswith("TensorRT"):
            agree = defaults[default_of]
            rows[name]["per_photo"] = {n: {"crops": int((photo_ids == n).sum()),
                                           "agreement": round(float(agree[photo_ids == n].mean()), 4),
                                           "fp32_median_margin": round(float(np.median(margin[photo_ids == n])), 3)}
                                       for n in np.unique(photo_ids)}
    variants = variant_rows(names, work, exported, calib, batch, reference, photo_ids, defaults)

    result = {"benchmark": "agreement_sampling", "command": "python benchmarks/agreement_sampling.py",
              "model": "efficientnet_lite0 (ImageNet)", "draws": len(folders), "crops_per_draw": CROPS_PER_DRAW,
              "crops": int(len(batch)), "photos": sorted(set(photos)),
              "interval": f"95 %, bootstrap over photos ({BOOTSTRAP_RESAMPLES} resamples)", "rows": rows,
              "variants": variants, "seconds": round(time.perf_counter() - t0, 1)}
    result["table"] = "\n".join(draw_table(rows, len(folders), len(batch)) + variant_table(variants, len(batch)))
    publish(RESULTS, result, result["table"])
    return 0


def draw_table(rows: dict[str, Any], draws_made: int, crops_made: int) -> list[str]:
    header = " | ".join(f"draw {k}" for k in range(draws_made))
    lines = [f"| model | {header} | spread | pooled ({crops_made} crops) | 95 % interval | pooled logit RMSE |",
             "|---|" + "---|" * (draws_made + 4)]
    for name, r in rows.items():
        cells = " | ".join(f"{100 * d['agreement']:.2f} %" for d in r["per_draw"])
        low, high = r["pooled_interval_95"]
        lines.append(f"| {name} | {cells} | {r['draw_spread_points']} points | {100 * r['pooled_agreement']:.2f} % "
                     f"| {100 * low:.1f}-{100 * high:.1f} % | {r['pooled_logit_rmse']} |")
    per_photo = rows["TensorRT format (default), exact"]["per_photo"]
    by_agreement = sorted(per_photo.items(), key=lambda kv: kv[1]["agreement"])
    lines.append("TensorRT format, agreement per photo (FP32's median top-1/top-2 margin): " + ", ".join(
        f"{n} {100 * v['agreement']:.1f} % ({v['fp32_median_margin']})" for n, v in by_agreement))
    return lines


def variant_table(variants: dict[str, Any], crops_made: int) -> list[str]:
    if not variants:
        return []
    lines = ["", f"| variant ({crops_made} crops) | numerics | agreement | vs its format's default, points "
             "(95 % interval) | logit RMSE |", "|---|---|---|---|---|"]
    for name, row in variants.items():
        for numerics in ("exact", "device"):
            if numerics in row:
                r = row[numerics]
                low, high = r["vs_default_interval_95_points"]
                lines.append(f"| {name} | {numerics} | {100 * r['pooled_agreement']:.2f} % | "
                             f"{r['vs_default_points']:+.2f} ({low:+.2f} to {high:+.2f}) | {r['pooled_logit_rmse']} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
