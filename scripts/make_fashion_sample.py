#!/usr/bin/env python3
"""Regenerate ``edgetl/data/assets/fashion_mnist_sample.npz`` from the official Fashion-MNIST files.

The shipped asset is a fixed, seeded subset of the official *training* split, so ``edgetl data sample
fashion`` works offline without the full 60,000-image download. This script is how the asset was
made; rerunning it with the same seed and counts reproduces it byte for byte.

Source files: Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``)
installs the official idx files under ``/usr/share/datasets/fashion-mnist``. Only the training split
(``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``) is read.

Selection: for every class, the indices of that class in the training split are permuted with
``numpy.random.default_rng(seed)`` (one generator, classes in label order); the first ``--train``
of the permutation are training images, the next ``--val`` validation images. The chosen indices are
stored in the asset beside the pixels.

    python scripts/make_fashion_sample.py [--source DIR] [--train 100] [--val 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "edgetl" / "data" / "assets"
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip-compressed) as a uint8 array; the header gives the magic and the shape."""
    raw = gzip.decompress(path.read_bytes())
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08: unsigned byte data
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def select(labels: np.ndarray, n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class choice of training-split indices: ``(indices, split)`` with split 0 train, 1 val."""
    rng = np.random.default_rng(seed)
    indices, split = [], []
    for label in range(10):
        members = np.flatnonzero(labels == label)
        chosen = rng.permutation(members)[: n_train + n_val]
        if len(chosen) < n_train + n_val:
            raise ValueError(f"class {label} has only {len(members)} images")
        indices += [chosen[:n_train], chosen[n_train:]]
        split += [np.zeros(n_train, np.uint8), np.ones(n_val, np.uint8)]
    return np.concatenate(indices).astype(np.uint32), np.concatenate(split)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz with fixed member timestamps, so the same data gives the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue(), compresslevel=9)
    path.write_bytes(buffer.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the official idx files")
    parser.add_argument("--train", type=int, default=100, help="training images per class")
    parser.add_argument("--val", type=int, default=30, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS / "fashion_mnist_sample.npz")
    args = parser.parse_args()

    images_path = args.source / "train-images-idx3-ubyte.gz"
    labels_path = args.source / "train-labels-idx1-ubyte.gz"
    if not images_path.is_file():
        print(f"{images_path} not found: apt-get install dataset-fashion-mnist, or pass --source", file=sys.stderr)
        return 2
    images, labels = read_idx(images_path), read_idx(labels_path)
    indices, split = select(labels, args.train, args.val, args.seed)
    arrays = {
        "images": images[indices],
        "labels": labels[indices],
        "indices": indices,
        "split": split,
        "seed": np.array(args.seed, dtype=np.int64),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(args.out, arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest}): {len(indices)} images, "
          f"{args.train} train + {args.val} val per class, seed {args.seed}")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        print(f"  source {name}: sha256 {hashlib.sha256((args.source / name).read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
