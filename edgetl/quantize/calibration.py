"""Calibration data for INT8: seeded class-balanced images, the data reader, and the statistics cache.

Calibration runs on exactly the deployment preprocessing (`edgetl.preprocess` via
`edgetl.validate.samples`). The per-tensor ranges ONNX Runtime computes are cached under
``calibration/`` in the bundle, keyed by the reference model, the preprocessing, the method and the
chosen files, so re-quantizing (another activation type, other layers kept in float) skips the
expensive part.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import BadInputError, optional_import
from edgetl.fileio import write_json
from edgetl.preprocess import PreprocessSpec
from edgetl.validate.samples import ImageSet, balanced_indices, decode, describe_failures, find_images

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
#: Fewer usable images than this is an error: ranges from a handful of images are not trustworthy.
MIN_CALIB_IMAGES = 8
DEFAULT_PERCENTILE = 99.999


@dataclass
class CalibrationSet:
    """The images chosen for calibration and, once decoded, their preprocessed batch.

    Attributes:
        images: the chosen files (seeded, class-balanced).
        key: cache key over model, preprocessing, method and files.
        cache_path: where the ranges live (may not exist yet).
        batch: NCHW float32, ``None`` until `load` (not needed on a cache hit).
        failures: ``(file, why)`` of chosen files that did not decode.
    """

    images: ImageSet
    key: str
    cache_path: Path
    method: str
    requested: int
    batch: np.ndarray | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.cache_path.is_file() and self.meta_path.is_file()

    @property
    def meta_path(self) -> Path:
        return self.cache_path.with_suffix(".meta.json")

    def load(self, spec: PreprocessSpec, *, progress: bool = False) -> None:
        """Decode the chosen images; too few usable ones is an error that gives the counts."""
        decoded = decode(self.images, spec, progress=progress, what="calibration images")
        self.batch, self.failures = decoded.batch, decoded.failures
        usable = len(decoded.batch)
        if usable < MIN_CALIB_IMAGES:
            why = f"; undecodable: {describe_failures(decoded.failures)}" if decoded.failures else ""
            raise BadInputError(
                f"too few calibration images: {usable} usable of {len(self.images.paths)} chosen from "
                f"{self.images.source} (need at least {MIN_CALIB_IMAGES}){why}",
                hint="point --calib-data at the training images (a few hundred is typical)",
            )
        if usable < self.requested:
            log.warning("calibrating on %d images (%d requested)", usable, self.requested)

    def used(self) -> int:
        if self.batch is not None:
            return len(self.batch)
        return int(json.loads(self.meta_path.read_text(encoding="utf-8")).get("images", 0))

    def save_meta(self, extra: dict[str, Any]) -> None:
        write_json(self.meta_path, {
            "key": self.key, "method": self.method, "images": self.used(), "requested": self.requested,
            "source": self.images.source, "files": [str(p) for p in self.images.paths][:2000],
            "undecodable": [f"{p}: {why}" for p, why in self.failures], **extra,
        })


def select_calibration(source: str | Path, *, labels: list[str], model_sha256: str, spec: PreprocessSpec,
                       method: str, size: int, seed: int, cache_dir: Path, percentile: float) -> CalibrationSet:
    """Choose ``size`` seeded class-balanced training images and work out their cache entry.

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
    facts = {"model": model_sha256, "preprocess": spec.to_dict(), "method": method,
             "percentile": percentile if method == "percentile" else None}
    digest.update(json.dumps(facts, sort_keys=True).encode())
    for path in picked.paths:
        try:
            stat = Path(path).stat()
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    key = digest.hexdigest()[:16]
    return CalibrationSet(picked, key, cache_dir / f"{method}-{key}.json", method, size)


def make_reader(batch: np.ndarray, input_name: str, *, chunk: int, fixed_batch: int | None = None):
    """An ONNX Runtime ``CalibrationDataReader`` over a preprocessed batch (rewindable)."""
    quant = optional_import("onnxruntime.quantization", "train", purpose="INT8 calibration")

    class _Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            step = fixed_batch or chunk
            self._chunks = []
            for start in range(0, len(batch), step):
                piece = batch[start:start + step]
                if fixed_batch and len(piece) < fixed_batch:
                    piece = np.concatenate([piece, batch[: fixed_batch - len(piece)]])
                self._chunks.append(np.ascontiguousarray(piece))
            self._pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._pos >= len(self._chunks):
                return None
            self._pos += 1
            return {input_name: self._chunks[self._pos - 1]}

        def rewind(self) -> None:
            self._pos = 0

        def __len__(self) -> int:
            return len(self._chunks)

    return _Reader()
