"""Error-compensating weight rounding (GPTQ: Frantar et al., 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"; the OBQ update of Frantar & Alistarh, 2022).

Rounding each weight to its nearest code minimises the error of the weights, not of the layer's output.
With the second moment of the layer's input patches, ``H = E[x x^T]``, the output error of a row of weights
is ``(w_q - w) H (w_q - w)^T``: weights are rounded one input column at a time, and the error each rounding
makes is spread over the columns not yet rounded, along ``H^-1``, so that the output moves as little as
possible. The per-channel scales are kept (the format's bias-scale rule depends on them); only the codes change.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Ridge added to ``H``'s diagonal, as a fraction of its mean. GPTQ's published default is 0.01, for language
#: models calibrated on many independent tokens. A few hundred images give far fewer independent samples than
#: positions (neighbouring patches overlap), and the wide late layers then fit their rounding to the calibration
#: images: on EfficientNet-Lite0 with 150 calibration photos, the 1152-channel expand convs and the classifier
#: lost 10-30 % more output error on 150 other photos than rounding to nearest did at 0.01, and about as much
#: as it at 0.1, while the early layers kept most of their gain (output error 0.05-0.8x of rounding to nearest).
DAMPING = 0.1


def conv_geometry(node: Any) -> dict[str, Any]:
    """A Conv node's attributes with ONNX's defaults filled in (also read by `edgetl.quantize.weights`)."""
    attrs = {a.name: a for a in node.attribute}
    return {
        "group": attrs["group"].i if "group" in attrs else 1,
        "strides": list(attrs["strides"].ints) if "strides" in attrs else [1, 1],
        "dilations": list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1],
        "pads": list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0],
        "auto_pad": attrs["auto_pad"].s if "auto_pad" in attrs else b"NOTSET",
    }


#: Output positions per image whose patches are measured; larger maps are sampled on a regular grid whose offset
#: moves with each batch. Neighbouring patches overlap and say little more than one of them. On
#: EfficientNet-Lite0 (300 calibration photos) the moments add 8 s to a 26 s calibration pass at 64 positions and
#: 43 s with every position, for a logit RMSE of 0.108 against 0.104 (0.116 rounding to nearest).
MAX_POSITIONS = 64


def input_patches(node: Any, weight_shape: tuple[int, ...], x: np.ndarray, phase: int = 0) -> np.ndarray | None:
    """A batch's input patches of a layer, ``(group, d, positions)`` in the weight's flattening order (input
    channel, then kernel row, then column), at most `MAX_POSITIONS` output positions per image (``phase``
    shifts the sampling grid). ``None`` for a layout this does not cover (the layer is then rounded to nearest).
    """
    if node.op_type in ("Gemm", "MatMul"):
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        return x.astype(np.float32).T[None] if x.ndim == 2 and not trans_a else None
    if node.op_type != "Conv" or x.ndim != 4 or len(weight_shape) != 4:
        return None
    geo = conv_geometry(node)
    if geo["auto_pad"] not in (b"", b"NOTSET"):
        return None
    group = geo["group"]
    cin_g, kh, kw = weight_shape[1:]
    b, c = x.shape[:2]
    if c != cin_g * group:
        return None
    pads, (sh, sw), (dh, dw) = geo["pads"], geo["strides"], geo["dilations"]
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        return None
    every = max(1, int(np.ceil(np.sqrt(oh * ow / MAX_POSITIONS))))
    rows, cols = range(phase % every, oh, every), range(phase % every, ow, every)
    taps = kh * kw
    patches = np.empty((group, cin_g * taps, b * len(rows) * len(cols)), dtype=np.float32)
    by_tap = patches.reshape(group, cin_g, taps, b, len(rows), len(cols))
    for i in range(kh):
        for j in range(kw):
            tap = x[:, :, rows.start * sh + i * dh::sh * every, cols.start * sw + j * dw::sw * every]
            by_tap[:, :, i * kw + j] = tap[:, :, :len(rows), :len(cols)].reshape(
                b, group, cin_g, len(rows), len(cols)).transpose(1, 2, 0, 3, 4)
    return patches


class PatchMoments:
    """Running mean and covariance of a layer's input patches, one ``(d, d)`` block per group.

    Batches are merged with Chan et al.'s pairwise update: each batch is centred on its own mean before its
    float32 product, so a large common offset (a centred ReLU6 output sits near -3) does not cancel the small
    variances that the rounding needs.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, patches: np.ndarray) -> None:
        """Fold in a batch's ``(group, d, positions)`` float32 patches, which are centred in place."""
        n = patches.shape[2]
        mean = patches.mean(axis=2, dtype=np.float64)
        patches -= mean[:, :, None].astype(np.float32)
        m2 = np.matmul(patches, patches.transpose(0, 2, 1)).astype(np.float64)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + np.einsum("gi,gj->gij", delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def second_moment(self) -> np.ndarray:
        """``E[x x^T]`` of the patches: the output error of a weight error ``e`` is ``e E[x x^T] e^T``."""
        if self.mean is None or self.m2 is None:
            raise ValueError("no batches")
        return self.m2 / self.count + np.einsum("gi,gj->gij", self.mean, self.mean)

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(m2's upper triangle per group, mean, count) for a cache file: the matrices are symmetric, and
        float32 keeps the relative precision the rounding needs."""
        if self.mean is None or self.m2 is None:
            raise ValueError("no batches")
        upper = np.triu_indices(self.m2.shape[1])
        return self.m2[:, upper[0], upper[1]].astype(np.float32), self.mean, np.array(self.count)

    @classmethod
    def from_arrays(cls, upper: np.ndarray, mean: np.ndarray, count: np.ndarray) -> PatchMoments:
        d = mean.shape[1]
        rows, cols = np.triu_indices(d)
        m2 = np.zeros((mean.shape[0], d, d))
        m2[:, rows, cols] = upper
        m2[:, cols, rows] = upper
        moments = cls()
        moments.m2, moments.mean, moments.count = m2, mean.astype(np.float64), int(count)
        return moments


#: Columns per lazy batch of `gptq_codes` (the paper's 128). Lite0's 50 layers took 10-18 s one column at a time
#: (6.3 s of it the 1000 x 1280 classifier) and take 2.2 s in blocks, with every one of the 4.6 M codes the same
#: (the grouped sums could tip a tie the other way; none did).
GPTQ_BLOCK = 128


def gptq_codes(weight: np.ndarray, axis: int, scales: np.ndarray, qmax: int, second_moment: np.ndarray,
               group: int = 1, damping: float = DAMPING) -> np.ndarray:
    """Integer codes (int8, ``weight``'s shape) for ``weight`` with per-channel ``scales`` along ``axis`` and
    ``|q| <= qmax``, rounded to minimise the layer's output error over inputs whose patches have
    ``second_moment`` (``(group, d, d)``, `PatchMoments.second_moment`)."""
    w = np.moveaxis(weight, axis, 0).astype(np.float64)
    shape = w.shape
    cout = shape[0]
    w = w.reshape(group, cout // group, -1)  # (group, rows, d)
    d = w.shape[2]
    if second_moment.shape != (group, d, d):
        raise ValueError(f"second moment {second_moment.shape} does not fit weights {(group, d, d)}")
    steps = (np.asarray(scales, dtype=np.float64).reshape(-1) * np.ones(cout)).reshape(group, cout // group)
    safe = np.where(steps > 0, steps, 1.0)
    diag = np.einsum("gii->gi", second_moment)
    live = diag > 0
    ridge = damping * (diag * live).sum(axis=1) / np.maximum(live.sum(axis=1), 1)
    # An input never seen (always zero) gets a unit diagonal: no error flows to or from it.
    h = second_moment + np.eye(d) * (ridge[:, None] + np.where(live, 0.0, 1.0))[:, :, None]
    u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # upper triangular: H^-1 = U^T U
    q = np.zeros_like(w)
    # GPTQ's lazy batch updates: the error of each column is spread at once only over the columns of its block;
    # the block's errors reach the columns after it in one matrix product (the same sums, grouped otherwise).
    for first in range(0, d, GPTQ_BLOCK):
        last = min(first + GPTQ_BLOCK, d)
        block, errors = w[:, :, first:last], np.empty((group, w.shape[1], last - first))
        for k in range(last - first):
            i = first + k
            codes = np.clip(np.round(block[:, :, k] / safe), -qmax, qmax)
            q[:, :, i] = codes
            errors[:, :, k] = err = (block[:, :, k] - codes * safe) / u[:, i, i][:, None]
            block[:, :, k + 1:] -= err[:, :, None] * u[:, None, i, i + 1:last]
        if last < d:
            w[:, :, last:] -= errors @ u[:, first:last, last:]
    q = np.where(steps[:, :, None] > 0, q, 0.0)
    return np.moveaxis(q.reshape(shape), 0, axis).astype(np.int8)
