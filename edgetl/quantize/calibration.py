"""Calibration data for INT8: seeded class-balanced images, streamed in batches, and the statistics cache.

Calibration runs on exactly the deployment preprocessing (`edgetl.preprocess` via
`edgetl.data.imagesets`). Images are decoded a batch at a time and folded into running statistics
(`edgetl.quantize.statistics`), so memory does not grow with the number of images. The statistics (|x|
histograms, min/max, layer input means) are cached under ``calibration/`` in the bundle, keyed by the
graph calibrated (the exported model, or its centred rewrite for the TensorRT format: `edgetl.quantize.shift`),
the preprocessing and the chosen files: re-quantizing with another method or set of float layers skips the
expensive part.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.data.imagesets import ImageSet, balanced_indices, decode, describe_failures, find_images
from edgetl.errors import BadInputError
from edgetl.fileio import write_json
from edgetl.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

METHODS = ("mse-unbounded", "minmax", "entropy", "percentile", "mse")
#: Fewer usable images than this is an error: ranges from a handful of images are not trustworthy.
MIN_CALIB_IMAGES = 8
#: Bias correction and GPTQ rounding estimate each layer's input statistics; below this many images the estimates
#: are too noisy (the rounding would fit itself to those images), and both steps are skipped with a warning.
MIN_WEIGHT_STEP_IMAGES = 32
#: Images decoded and run per calibration batch: bounds memory (one batch of activations at a time).
CALIB_BATCH = 8
DEFAULT_PERCENTILE = 99.999


@dataclass
class CalibrationSet:
    """The images chosen for calibration and, once decoded, their preprocessed batch.

    Attributes:
        images: the chosen files (seeded, class-balanced).
        key: cache key over model, preprocessing and files.
        cache_path: where the statistics live (may not exist yet).
        decoded: images decoded so far by `batches`.
        failures: ``(file, why)`` of chosen files that did not decode.
    """

    images: ImageSet
    key: str
    cache_path: Path
    method: str
    requested: int
    decoded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.cache_path.is_file() and self.meta_path.is_file()

    @property
    def meta_path(self) -> Path:
        return self.cache_path.with_suffix(".meta.json")

    def batches(self, spec: PreprocessSpec, *, fixed_batch: int | None = None,
                progress: bool = False) -> Iterator[np.ndarray]:
        """Decode and yield the chosen images ``CALIB_BATCH`` at a time (or in batches of a fixed-batch graph's
        size, the last one padded by repetition); undecodable files are counted in ``failures``."""
        step = fixed_batch or CALIB_BATCH
        paths = self.images.paths
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc="calibration images", unit="img", leave=False)
        for start in range(0, len(paths), step):
            part = decode(self.images.subset(range(start, min(start + step, len(paths)))), spec)
            self.failures.extend(part.failures)
            if bar is not None:
                bar.update(min(step, len(paths) - start))
            batch = part.batch
            if len(batch) == 0:
                continue
            self.decoded += len(batch)
            if fixed_batch and len(batch) < fixed_batch:
                batch = np.concatenate([batch] * (fixed_batch // len(batch) + 1))[:fixed_batch]
            yield np.ascontiguousarray(batch, dtype=np.float32)
        if bar is not None:
            bar.close()

    def check_usable(self) -> None:
        """Too few usable images is an error that gives the counts."""
        usable = self.decoded
        if usable < MIN_CALIB_IMAGES:
            why = f"; undecodable: {describe_failures(self.failures)}" if self.failures else ""
            raise BadInputError(
                f"too few calibration images: {usable} usable of {len(self.images.paths)} chosen from "
                f"{self.images.source} (need at least {MIN_CALIB_IMAGES}){why}",
                hint="point --calib-data at the training images (a few hundred is typical)",
            )
        if usable < self.requested:
            log.warning("calibrating on %d images (%d requested)", usable, self.requested)

    def used(self) -> int:
        if self.decoded:
            return self.decoded
        return int(json.loads(self.meta_path.read_text(encoding="utf-8")).get("images", 0))

    def save_meta(self, extra: dict[str, Any]) -> None:
        write_json(self.meta_path, {
            "key": self.key, "method": self.method, "images": self.used(), "requested": self.requested,
            "source": self.images.source, "files": [str(p) for p in self.images.paths][:2000],
            "undecodable": [f"{p}: {why}" for p, why in self.failures], **extra,
        })


def select_calibration(source: str | Path, *, labels: list[str], model_sha256: str, spec: PreprocessSpec,
                       method: str, size: int, seed: int, cache_dir: Path) -> CalibrationSet:
    """Choose ``size`` seeded class-balanced training images and work out their cache entry.

    The entry depends on the model, the preprocessing and the files only: ranges for any method (and
    percentile) come from the same statistics.

    Raises:
        BadInputError: unknown method, no images at the source.
    """
    if method not in METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    if size < MIN_CALIB_IMAGES:
        raise BadInputError(f"--calib-size {size} is too small; use at least {MIN_CALIB_IMAGES}",
                            hint="a few hundred images is typical")
    images = find_images(source, split="train", labels=labels)
    if not images.paths:
        raise BadInputError(f"no calibration images found in {source}")
    picked = images.subset(balanced_indices(images.labels, size, seed))
    digest = hashlib.sha256()
    facts = {"model": model_sha256, "preprocess": spec.to_dict(), "statistics": 2}
    digest.update(json.dumps(facts, sort_keys=True).encode())
    for path in picked.paths:
        try:
            stat = Path(path).stat()
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    key = digest.hexdigest()[:16]
    return CalibrationSet(picked, key, cache_dir / f"stats-{key}.npz", method, size)
