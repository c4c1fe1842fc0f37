"""INT8 entropy calibration for TensorRT when the bundle has no QDQ graph (implicit quantization).

The calibrator feeds TensorRT batches preprocessed by `edgetl.preprocess` (the one implementation),
from the calibration images the user gives or the bundle records, and keeps TensorRT's calibration
cache in the bundle so a rebuild on another device of the same family skips calibration.

Implicit quantization is deprecated since TensorRT 10.1 and removed in 11: prefer the bundle's QDQ
graph (``edgetl quantize --precision int8``), which TensorRT uses as explicit quantization.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.fileio import write_bytes
from edgetl.lazy import lazy_import
from edgetl.runtime.backends.cuda_mem import CudaApi

trt = lazy_import("tensorrt", "tensorrt", purpose="INT8 calibration in TensorRT")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(root: str | Path, limit: int, seed: int = 0) -> list[Path]:
    """Up to ``limit`` image files under ``root`` (recursive), a seeded sample when there are more."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else [root]
    if len(files) > limit:
        rng = np.random.default_rng(seed)
        files = [files[i] for i in sorted(rng.choice(len(files), size=limit, replace=False))]
    return files


def iter_batches(sources: Sequence[Any], spec: Any, batch_size: int) -> Iterator[np.ndarray]:
    """NCHW float32 batches of exactly ``batch_size`` (the last partial batch is dropped)."""
    from edgetl.preprocess import preprocess_batch

    for start in range(0, len(sources) - batch_size + 1, batch_size):
        batch, _ = preprocess_batch(list(sources[start : start + batch_size]), spec)
        yield np.ascontiguousarray(batch, dtype=np.float32)


def make_entropy_calibrator(
    cuda: CudaApi,
    batches: Iterator[np.ndarray],
    *,
    batch_size: int,
    sample_shape: tuple[int, ...],
    cache_path: Path,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches`` that reads/writes ``cache_path``.

    TensorRT asks ``read_calibration_cache`` first: when the bundle already has a cache, no image is
    touched. Otherwise it pulls batches with ``get_batch`` (device pointers, one per input name).
    """

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = batches
            self.batch_size = batch_size
            self.cache_path = Path(cache_path)
            nbytes = batch_size * int(np.prod(sample_shape)) * 4
            self.host = cuda.alloc_host((batch_size, *sample_shape), np.float32)
            self.device = cuda.alloc_device(nbytes)
            self.stream = cuda.create_stream()
            self.nbytes = nbytes
            self.seen = 0

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.host.array[...] = batch
            cuda.htod(self.device, self.host, self.nbytes, self.stream)
            cuda.synchronize(self.stream)
            self.seen += batch.shape[0]
            return [self.device.ptr for _ in names]

        def read_calibration_cache(self) -> bytes | None:
            return self.cache_path.read_bytes() if self.cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            write_bytes(self.cache_path, bytes(cache))

        def free(self) -> None:
            cuda.free_device(self.device)
            cuda.free_host(self.host)
            cuda.destroy_stream(self.stream)

    return _EntropyCalibrator()
