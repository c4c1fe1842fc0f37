"""Accuracy-budget mode: put the most INT8-sensitive quantization points back in float until the model is within
budget.

A quantization point ("unit", `edgetl.quantize.qdq_edit`) is a layer's weights or one activation tensor.

1. Sensitivity: for each unit, a model with only that unit quantized (every other unit restored to float in
   the fully quantized graph, so it keeps its calibrated scale) is compared with FP32 on a validation sample.
2. Search: units are ordered most sensitive first; the candidate with the first ``k`` units in float is scored
   on the whole sample for k = 1, 2, 4, 8... until one is within the budget, then a bisection finds the
   smallest such k. About 2 log2(units) candidates are scored instead of one per unit.

What "drop", "agreement" and "sensitivity" mean is the task's scorer: `score` for classifiers (top-1
drop against labels, or disagreement with FP32 without labels; top-1 agreement; KL of the softmax),
`edgetl.metrics.detection.budget_scorer` for detectors (mAP@0.5:0.95 drop; box agreement; output
error). The search itself is the same for every task.

Every candidate scored is recorded so the report can say which units were kept and what each step bought.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.lazy import lazy_import
from edgetl.metrics.classification import classification_agreement, topk_accuracy
from edgetl.quantize.qdq_edit import ACTIVATION, LAYER, Unit, restore

onnx = lazy_import("onnx", "train", purpose="the accuracy-budget search")

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """The validation sample of budget mode.

    Attributes:
        batch: preprocessed inputs.
        labels: class labels (classifiers), or None.
        reference: the FP32 model's output on ``batch``: the logits, or (detectors) the outputs by name.
        source: where the images came from.
        index: position of each image in the full sample, so a scorer can find per-image data (ground
            truth) after `subset`.
    """

    batch: np.ndarray
    labels: np.ndarray | None
    reference: Any
    source: str
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if len(self.index) != len(self.batch):
            self.index = np.arange(len(self.batch))

    def subset(self, pick: np.ndarray) -> Sample:
        """The images at positions ``pick``."""
        ref = ({k: v[pick] for k, v in self.reference.items()} if isinstance(self.reference, dict)
               else self.reference[pick])
        return Sample(self.batch[pick], None if self.labels is None else self.labels[pick], ref, self.source,
                      self.index[pick])


#: scorer(candidate_output, sample) -> {"drop" (points), "agreement" (0-1), "sensitivity" (higher: worse), ...}
Scorer = Callable[[Any, Sample], dict[str, Any]]


@dataclass
class BudgetOutcome:
    """Result of the budget search.

    Attributes:
        kept: units kept in float, most sensitive first.
        within_budget: whether the final model meets the budget.
        final: metrics of the final candidate.
        steps: metrics of each candidate scored, by number of units kept (0: fully quantized).
        sensitivity: per-unit sensitivity, most sensitive first.
        units: how many units the search could choose from.
    """

    kept: list[Unit]
    within_budget: bool
    final: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    units: int = 0

    @property
    def kept_layers(self) -> list[str]:
        return [u.name for u in self.kept if u.kind == LAYER]

    @property
    def kept_activations(self) -> list[str]:
        return [u.name for u in self.kept if u.kind == ACTIVATION]

    def to_dict(self) -> dict[str, Any]:
        return {"kept_layers": self.kept_layers, "kept_activations": self.kept_activations,
                "within_budget": self.within_budget, "final": self.final, "units": self.units,
                "steps": self.steps, "sensitivity": self.sensitivity}


def score(logits: np.ndarray, sample: Sample) -> dict[str, Any]:
    """The classifier scorer: top-1 (when labelled), its drop in points, top-1 agreement and KL against FP32."""
    agree = classification_agreement(sample.reference, logits)
    out: dict[str, Any] = {"top1_agreement": agree["top1_agreement"], "kl": agree["kl_mean"],
                           "cosine": agree["cosine_mean"], "agreement": agree["top1_agreement"],
                           "sensitivity": agree["kl_mean"]}
    if sample.labels is not None:
        ref_top1 = topk_accuracy(sample.reference, sample.labels, 1)
        top1 = topk_accuracy(logits, sample.labels, 1)
        out.update({"top1": top1, "reference_top1": ref_top1, "drop": 100.0 * (ref_top1 - top1)})
    else:  # no labels: disagreement with FP32 bounds the possible drop
        out["drop"] = 100.0 * (1.0 - agree["top1_agreement"])
    return out


def within(metrics: dict[str, Any], max_drop: float, min_agreement: float | None) -> bool:
    ok = metrics["drop"] <= max_drop + 1e-9
    if min_agreement is not None:
        ok = ok and metrics["agreement"] >= min_agreement - 1e-9
    return ok


def describe_bound(max_drop: float, min_agreement: float | None) -> str:
    """What `within` checks, in words: ``drop <= 1 points, agreement >= 0.99``."""
    return f"drop <= {max_drop:g} points" + ("" if min_agreement is None else f", agreement >= {min_agreement:g}")


#: Above this many quantization points the sensitivity is measured by groups first (`probe_groups`).
GROUPED_FROM = 24
#: The most sensitive groups whose members are then measured one by one.
REFINED_GROUPS = 2


def probe_groups(units: list[Unit]) -> list[list[Unit]]:
    """Consecutive units in groups of about sqrt(n) (graph order: neighbours share a stage), or one per unit
    for a small model. Measuring each group once and then the members of the two most sensitive groups takes
    3 sqrt(n) runs instead of n (27 instead of 78 on EfficientNet-Lite0): the quantization noise of points in
    different groups adds up nearly independently, so a group's score ranks its members' sum."""
    if len(units) <= GROUPED_FROM:
        return [[unit] for unit in units]
    size = math.ceil(math.sqrt(len(units)))
    return [units[i:i + size] for i in range(0, len(units), size)]


def search(
    reference: Any,
    quantized: Any,
    units: list[Unit],
    sample: Sample,
    run: Callable[[Path, np.ndarray], Any],
    *,
    max_drop: float,
    min_agreement: float | None,
    full_metrics: dict[str, Any],
    weights: dict[str, int] | None = None,
    max_kept: int | None = None,
    probe_images: int = 64,
    progress: bool = False,
    scorer: Scorer = score,
) -> tuple[BudgetOutcome, Path | None]:
    """Run the sensitivity analysis and the search for the fewest units to keep in float.

    Args:
        reference: the FP32 model (ONNX ModelProto).
        quantized: the fully quantized QDQ model made from it.
        units: the quantization points the search may put back in float (`qdq_edit.list_units`).
        sample: validation sample with the reference outputs.
        run: ``run(model_path, batch) -> output`` through the runtime backend (what ``scorer`` takes).
        full_metrics: metrics of the fully quantized model (step 0).
        weights: parameter count per layer (the size cost of keeping it in float).
        max_kept: most units the search may keep in float (default: all of them).
        probe_images: the per-unit probes use an evenly strided subset of this many images (the ranking
            needs far fewer than the budget decision, which always uses the whole sample).
        scorer: the task's scorer (`score` for classifiers).

    Returns:
        The outcome, and the path of the final model in a temporary directory the caller must remove
        (``None`` when nothing had to be kept).
    """
    steps = [{"kept": 0, "unit": None, **full_metrics}]
    already = within(full_metrics, max_drop, min_agreement)
    if already or not units:
        return BudgetOutcome([], already, full_metrics, steps, [], len(units)), None
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-budget-"))
    weights = weights or {}

    def score_model(kept: list[Unit], on: Sample, name: str) -> dict[str, Any]:
        path = tmp / name
        onnx.save(restore(quantized, reference, kept), str(path))
        return scorer(run(path, on.batch), on)

    pick = np.unique(np.linspace(0, len(sample.batch) - 1, min(probe_images, len(sample.batch))).astype(int))
    small = sample.subset(pick)
    groups = probe_groups(units)
    # Grouped: every group once, then the members of the two most sensitive; the groups are equal but the last,
    # so two full groups is the count unless the short last one ranks among them (then the bar is adjusted).
    runs = len(groups) + sum(len(g) for g in groups[:REFINED_GROUPS]) if len(groups) < len(units) else len(units)
    log.info("budget mode: measuring the sensitivity of %d quantization points (%d runs on %d images each)",
             len(units), runs, len(small.batch))
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=runs, desc="sensitivity", unit="run", leave=False)

    done = [0]

    def probe(quantize_only: list[Unit]) -> dict[str, Any]:
        """The scores with only ``quantize_only`` quantized, everything else in float."""
        result = score_model([u for u in units if u not in quantize_only], small, "probe.onnx")
        done[0] += 1
        if bar is not None:
            bar.update()
        if done[0] == 1 and runs > 1:
            estimate = (time.perf_counter() - started) * runs
            log.info("budget mode: about %s for the sensitivity (%.1f s per run), then a few candidates",
                     f"{estimate / 60:.0f} min" if estimate >= 90 else f"{estimate:.0f} s", estimate / runs)
        return result

    def record(unit: Unit, scores: dict[str, Any], estimated: bool) -> dict[str, Any]:
        return {**unit.to_dict(), "sensitivity": scores["sensitivity"], "agreement": scores["agreement"],
                "params": weights.get(unit.name, 0) if unit.kind == LAYER else 0, "estimated": estimated}

    sensitivity = []
    if len(groups) == len(units):  # few points: each measured alone
        sensitivity = [record(unit, probe([unit]), False) for unit in units]
    else:  # each group measured once; the members of the most sensitive groups then alone
        group_scores = [probe(group) for group in groups]
        order_of_groups = sorted(range(len(groups)), key=lambda i: -group_scores[i]["sensitivity"])
        if bar is not None:
            bar.total = len(groups) + sum(len(groups[i]) for i in order_of_groups[:REFINED_GROUPS])
            bar.refresh()
        for rank, i in enumerate(order_of_groups):
            if rank < REFINED_GROUPS:
                sensitivity += [record(unit, probe([unit]), False) for unit in groups[i]]
            else:  # its share of the group's score: a guess that ranks it below the measured ones it trails
                share = {**group_scores[i], "sensitivity": group_scores[i]["sensitivity"] / len(groups[i])}
                sensitivity += [record(unit, share, True) for unit in groups[i]]
    if bar is not None:
        bar.close()
    sensitivity.sort(key=lambda s: (-s["sensitivity"], s["agreement"]))
    order = [Unit(s["kind"], s["name"]) for s in sensitivity]
    limit = min(len(order), max_kept if max_kept is not None else len(order))
    scored: dict[int, dict[str, Any]] = {0: full_metrics}

    def candidate(k: int) -> dict[str, Any]:
        if k not in scored:
            scored[k] = score_model(order[:k], sample, f"candidate-{k}.onnx")
            log.info("%d unit(s) in float: drop %.2f points, agreement %.4f", k, scored[k]["drop"],
                     scored[k]["agreement"])
        return scored[k]

    # Exponential steps, then bisection between the last miss and the first hit.
    low, high, k = 0, None, 1
    while k <= limit:
        if within(candidate(k), max_drop, min_agreement):
            high = k
            break
        low = k
        if k == limit:
            break
        k = min(2 * k, limit)
    if high is not None:
        while high - low > 1:
            mid = (low + high) // 2
            if within(candidate(mid), max_drop, min_agreement):
                high = mid
            else:
                low = mid
    chosen = high if high is not None else limit  # out of budget: the candidate closest to FP32
    for n in sorted(scored):
        if n:
            steps.append({"kept": n, "unit": order[n - 1].to_dict(), **scored[n],
                          "float_bytes_added": sum(3 * s["params"] for s in sensitivity[:n])})
    final = tmp / f"candidate-{chosen}.onnx"
    for path in tmp.glob("*.onnx"):
        if path != final:
            path.unlink()
    if not chosen:  # --max-kept 0: nothing was kept, nothing for the caller to pick up
        shutil.rmtree(tmp, ignore_errors=True)
    outcome = BudgetOutcome(order[:chosen], high is not None, scored[chosen], steps, sensitivity, len(units))
    return outcome, (final if chosen else None)
