"""One meaning per option name across verbs (`edgetl.cli.options`), and the old spellings still working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgetl.cli.main import cli
from edgetl.errors import BadInputError


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _param(verb: list[str], name: str):
    command = cli
    ctx = cli.make_context("edgetl", list(verb), resilient_parsing=True)
    for word in verb:
        command = command.get_command(ctx, word)
    return next(p for p in command.params if p.name == name)


DEVICE_VERBS = [["predict"], ["bench"], ["serve"], ["bundle", "check"], ["evaluate"], ["validate"],
                ["train", "classify"], ["train", "detect"], ["compile"]]


@pytest.mark.parametrize("verb", DEVICE_VERBS, ids=" ".join)
def test_device_means_where_to_run_in_every_verb(verb: list[str]) -> None:
    param = _param(verb, "device" if verb != ["validate"] else "backend_device")
    kinds = param.type.choices()
    assert set(kinds) <= {"auto", "cpu", "cuda", "cuda:N"} and "cuda" in kinds


def test_strategy_names_are_shared_by_classify_and_detect() -> None:
    classify = _param(["train", "classify"], "strategy").type.choices
    detect = _param(["train", "detect"], "strategy").type.choices
    assert list(classify) == list(detect)
    assert {"frozen", "partial", "full", "scratch"} <= set(classify)


def test_batch_size_is_one_integer_and_lists_have_their_own_names() -> None:
    for verb in (["predict"], ["evaluate"], ["train", "classify"], ["train", "detect"]):
        assert _param(verb, "batch_size").type.name == "integer range"
    assert _param(["bench"], "batch_sizes").default == "1,8"
    assert _param(["compile"], "batch_profile").default == "1,8,32"
    assert _param(["bench"], "batch").hidden and _param(["compile"], "batch").hidden


def test_old_strategy_name_still_trains_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``linear-probe`` (the old classifier name) and ``frozen`` reach the training library as the same plan."""
    import edgetl.train.classify as classify

    seen: list[str] = []

    def fake_train(cfg, progress: bool = True):
        seen.append(cfg.strategy)
        raise BadInputError("stop here")

    monkeypatch.setattr(classify, "train_classifier", fake_train)
    for name in ("frozen", "linear-probe"):
        result = _invoke(["train", "classify", "--data", tmp_path, "--strategy", name, "--out", tmp_path / name])
        assert result.exit_code == 2 and "stop here" in result.stderr
        assert ("deprecated" in result.stderr) == (name == "linear-probe")
    assert seen == ["linear-probe", "linear-probe"]
    assert "use --strategy frozen" in result.stderr


def test_old_bench_batch_spelling_works_from_the_command_line_and_a_config(colour_bundle: Path, tmp_path: Path) -> None:
    new = _invoke(["bench", colour_bundle, "--batch-sizes", "2", "--iters", "1", "--warmup", "0", "--no-torch",
                   "--no-verify", "--precision", "fp32", "--json"])
    assert new.exit_code == 0, new.stderr
    assert {r["batch"] for r in json.loads(new.stdout)["rows"]} == {2} and "deprecated" not in new.stderr
    old = _invoke(["bench", colour_bundle, "--batch", "3", "--iters", "1", "--warmup", "0", "--no-torch",
                   "--no-verify", "--precision", "fp32", "--json"])
    assert old.exit_code == 0, old.stderr
    assert {r["batch"] for r in json.loads(old.stdout)["rows"]} == {3}
    assert "--batch is deprecated" in old.stderr and "use --batch-sizes" in old.stderr
    config = tmp_path / "bench.yaml"
    config.write_text("batch: '4'\niters: 1\nwarmup: 0\nprecision: fp32\n")
    from_file = _invoke(["bench", colour_bundle, "--config", config, "--no-torch", "--json"])
    assert from_file.exit_code == 0, from_file.stderr
    assert {r["batch"] for r in json.loads(from_file.stdout)["rows"]} == {4} and "deprecated" in from_file.stderr


def test_compile_old_device_index_and_batch_spellings(colour_bundle: Path) -> None:
    """The old spellings parse (with notes); the machine has no TensorRT, so the verb then exits 3."""
    result = _invoke(["compile", colour_bundle, "--device", "0", "--batch", "1,2,4"])
    assert "--device 0 is deprecated" in result.stderr and "--device cuda:0" in result.stderr
    assert "--batch is deprecated" in result.stderr and "--batch-profile" in result.stderr
    assert result.exit_code in (0, 1, 3)


@pytest.mark.parametrize(("verb", "value"), [(["predict", "b", "x.jpg"], "gpu"), (["compile", "b"], "cpu"),
                                             (["train", "detect", "--data", "d"], "cuda:1")])
def test_bad_device_is_a_usage_error(verb: list[str], value: str) -> None:
    result = _invoke([*verb, "--device", value])
    assert result.exit_code == 2 and "--device" in result.stderr and "Traceback" not in result.stderr
