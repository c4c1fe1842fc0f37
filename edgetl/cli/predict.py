"""``edgetl predict BUNDLE IMAGES_OR_DIRS...``: one result per image, errors kept per image.

A corrupt, unreadable or missing image gets an error entry and the others are still predicted; the
exit code is 0 when every input succeeded and 2 when some were bad.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetl.cli.common import (
    EXIT_BAD_INPUT,
    config_option,
    emit_json,
    format_table,
    handle_errors,
    json_option,
    say,
    show,
    use_workstation_extensions,
)
from edgetl.cli.options import batch_size_option, device_option, no_verify_option, precision_option

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def expand_inputs(items: tuple[str, ...]) -> list[Path]:
    """Files as given (whatever their suffix), plus image files found under directories, sorted."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(path)  # a missing or non-image file becomes an error entry, not a crash
    return out


def _summary(result: Any) -> tuple[str, str, str]:
    if hasattr(result, "top_k"):
        others = ", ".join(f"{lab} {s:.3f}" for lab, s in result.top_k[1:])
        return result.label, f"{result.score:.3f}", others
    n = len(getattr(result, "scores", []))
    names = getattr(result, "label_names", None) or []
    shown = ", ".join(f"{lab} {float(s):.2f}" for lab, s in list(zip(names, result.scores))[:5])
    return f"{n} detection(s)", "", shown


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1), help="Classes per image.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxruntime", "tensorrt", "torch"]))
@precision_option("best")
@device_option("auto")
@batch_size_option(None, help="Largest batch sent at once.")
@click.option("--bgr", is_flag=True, hidden=True)
@click.option("--save-vis", type=click.Path(file_okay=False), default=None,
              help="Write images with boxes drawn into this directory (detection bundles).")
@no_verify_option()
@config_option
@json_option
@handle_errors
def command(bundle: str, inputs: tuple[str, ...], top_k: int, backend: str, precision: str, device: str,
            batch_size: int | None, bgr: bool, save_vis: str | None, no_verify: bool, as_json: bool) -> None:
    """Run BUNDLE on image files and/or directories of images."""
    from edgetl.runtime import PredictionError, load
    from edgetl.runtime.results import result_to_dict

    paths = expand_inputs(inputs)
    if not paths:
        raise click.UsageError("no images found in the given inputs")
    if backend in ("torch", "tensorrt", "auto"):
        use_workstation_extensions()
    with load(bundle, backend=backend, precision=precision, device=device, verify=not no_verify,
              max_batch=batch_size) as predictor:
        desc = predictor.describe()
        say(f"{desc['name']}: {desc['backend']} {desc['artifact']} ({desc['precision']}) - {desc['why']}")
        results = predictor.predict([str(p) for p in paths], top_k=top_k, on_error="return")
        if save_vis:
            _save_visualisations(predictor, paths, results, Path(save_vis))
    entries, rows, bad = [], [], 0
    for path, result in zip(paths, results):
        if isinstance(result, PredictionError):
            bad += 1
            entries.append({"source": str(path), "error": result.error})
            rows.append([str(path), "ERROR", "", result.error.splitlines()[0]])
        else:
            entries.append({"source": str(path), **result_to_dict(result)})
            rows.append([str(path), *_summary(result)])
    if as_json:
        emit_json({"bundle": bundle, "predictor": desc, "results": entries,
                   "ok": len(paths) - bad, "errors": bad})
    else:
        show(format_table(["image", "prediction", "score", "next" if predictor.task == "classify" else "top"], rows))
        say(f"{len(paths) - bad} predicted, {bad} failed")
    if bad:
        raise SystemExit(EXIT_BAD_INPUT)


def _save_visualisations(predictor: Any, paths: list[Path], results: list[Any], out: Path) -> None:
    from edgetl.runtime import PredictionError

    if predictor.task != "detect":
        say("--save-vis draws detection boxes; this is a classification bundle, nothing drawn")
        return
    from edgetl.fileio import atomic_path
    from edgetl.preprocess import load_image
    from edgetl.runtime.visualize import draw_detections

    out.mkdir(parents=True, exist_ok=True)
    for path, result in zip(paths, results):
        if isinstance(result, PredictionError):
            continue
        image = draw_detections(load_image(path), result)
        with atomic_path(out / f"{path.stem}.png") as tmp:
            image.save(tmp, format="PNG")
    say(f"visualisations written to {out}")
