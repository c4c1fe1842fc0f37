"""The budget search on a synthetic problem: each unit costs a known amount of accuracy when quantized."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetl.quantize import budget
from edgetl.quantize.budget import Sample, search
from edgetl.quantize.qdq_edit import ACTIVATION, LAYER, Unit

COST = {f"u{i}": c for i, c in enumerate([0.1, 3.0, 0.2, 5.0, 0.05, 1.0, 0.3, 2.0, 0.0, 0.4])}
UNITS = [Unit(LAYER if i % 2 else ACTIVATION, name) for i, name in enumerate(COST)]


def _stubbed(monkeypatch: pytest.MonkeyPatch, costs: dict[str, float]):
    """restore() records which units are in float; the 'model' output is the drop those still quantized cost."""
    monkeypatch.setattr(budget, "restore", lambda quantized, reference, kept: _doc(kept))
    calls: list[int] = []

    def run(path: Path, batch: np.ndarray) -> float:
        floated = set(filter(None, onnx.load(str(path)).doc_string.split(",")))
        calls.append(len(floated))
        return sum(c for name, c in costs.items() if name not in floated)

    def scorer(drop: float, sample: Sample) -> dict:
        return {"drop": drop, "agreement": 1.0 - drop / 100, "sensitivity": drop}

    sample = Sample(np.zeros((10, 1), np.float32), None, np.zeros((10, 1)), "synthetic")
    full = scorer(sum(costs.values()), sample)
    return run, scorer, sample, full, calls


def _doc(kept) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.doc_string = ",".join(sorted(u.name for u in kept))
    return model


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch):
    return _stubbed(monkeypatch, COST)


def test_keeps_the_fewest_most_costly_units(stub) -> None:
    run, scorer, sample, full, _ = stub
    outcome, path = search(onnx.ModelProto(), onnx.ModelProto(), UNITS, sample, run, max_drop=1.2,
                           min_agreement=None, full_metrics=full, scorer=scorer)
    # u3 (5.0), u1 (3.0), u7 (2.0), u5 (1.0) leave 1.05 <= 1.2; three would leave 2.05.
    assert [u.name for u in outcome.kept] == ["u3", "u1", "u7", "u5"] and outcome.within_budget
    assert outcome.final["drop"] == pytest.approx(1.05)
    assert [s["name"] for s in outcome.sensitivity][:4] == ["u3", "u1", "u7", "u5"]
    assert [s["kept"] for s in outcome.steps] == [0, 1, 2, 3, 4]  # 1, 2, 4 (hit), then bisection: 3
    assert path is not None and path.is_file() and outcome.units == len(UNITS)
    assert outcome.kept_layers == ["u3", "u1", "u7", "u5"] and outcome.kept_activations == []
    shutil.rmtree(path.parent)


def test_bisection_scores_few_candidates(stub) -> None:
    run, scorer, sample, full, calls = stub
    outcome, path = search(onnx.ModelProto(), onnx.ModelProto(), UNITS, sample, run, max_drop=0.06,
                           min_agreement=None, full_metrics=full, scorer=scorer)
    # Everything but u8 (free) and u4 (0.05) must be float: 8 units, found by 1, 2, 4, 8 then 5..7.
    assert len(outcome.kept) == 8 and outcome.within_budget
    assert len(outcome.steps) - 1 <= 7 and len(calls) == len(UNITS) + len(outcome.steps) - 1
    shutil.rmtree(path.parent)


def test_out_of_budget_keeps_max_kept_and_says_so(stub) -> None:
    run, scorer, sample, full, _ = stub
    outcome, path = search(onnx.ModelProto(), onnx.ModelProto(), UNITS, sample, run, max_drop=-1.0,
                           min_agreement=None, full_metrics=full, scorer=scorer, max_kept=3)
    assert not outcome.within_budget and len(outcome.kept) == 3
    assert [s["kept"] for s in outcome.steps] == [0, 1, 2, 3]
    shutil.rmtree(path.parent)


def test_within_budget_from_the_start_keeps_nothing(stub) -> None:
    run, scorer, sample, full, calls = stub
    outcome, path = search(onnx.ModelProto(), onnx.ModelProto(), UNITS, sample, run, max_drop=100.0,
                           min_agreement=None, full_metrics=full, scorer=scorer)
    assert outcome.within_budget and outcome.kept == [] and path is None and calls == []


def test_many_points_are_ranked_by_groups_with_far_fewer_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """78 points (EfficientNet-Lite0's count): 9 group runs, then the 18 members of the two worst groups."""
    costs = {f"p{i:02d}": 0.01 for i in range(78)}
    costs.update({"p01": 4.0, "p03": 2.5, "p40": 3.0})  # two near the input, one mid-network
    units = [Unit(LAYER, name) for name in costs]
    run, scorer, sample, full, runs = _stubbed(monkeypatch, costs)
    outcome, path = search(onnx.ModelProto(), onnx.ModelProto(), units, sample, run, max_drop=1.0,
                           min_agreement=None, full_metrics=full, scorer=scorer)
    assert [u.name for u in outcome.kept] == ["p01", "p40", "p03"] and outcome.within_budget
    probes = len(runs) - (len(outcome.steps) - 1)
    assert probes == len(budget.probe_groups(units)) + 2 * 9 == 27  # instead of 78
    measured = {s["name"] for s in outcome.sensitivity if not s["estimated"]}
    assert {"p01", "p03", "p40"} <= measured and len(measured) == 18
    shutil.rmtree(path.parent)
