"""The README's CLI tour, run as a new user runs it: from an empty directory, with relative paths.

The commands are read from the README's tour block, so the two cannot drift apart; only sizes are made
smaller (`SMALLER`) so that the whole tour takes a minute or two on two CPU cores. The time of every
step is printed (``pytest -s``); the README's step times come from the same commands at full size.
"""

from __future__ import annotations

import importlib.util
import shlex
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]

# Options replaced (or added) per verb; every other word of a command is the README's.
SMALLER: dict[tuple[str, ...], dict[str, str]] = {
    ("data", "sample", "digits"): {"--per-class": "4", "--val-per-class": "3", "--size": "32"},
    ("train", "classify"): {"--epochs": "1", "--img-size": "64", "--batch-size": "20"},
    ("quantize",): {"--calib-size": "8", "--val-size": "10"},
    ("validate",): {"--latency-runs": "2"},
    ("bench",): {"--iters": "3", "--warmup": "1"},
}
# Exit codes a step may end with: a validation gate may fail on a model trained for one epoch (1), and
# compile needs TensorRT (3 without it).
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
EXPECTED: dict[tuple[str, ...], set[int]] = {
    ("quantize",): {0, 1},
    ("validate",): {0, 1},
    ("bundle", "check"): {0, 1},
    ("compile",): {0, 1} if HAS_TENSORRT else {3},
}
# Verbs the tour shows but a test cannot run to the end: the daemon serves until it is stopped.
NOT_RUN = {("serve",)}


def tour_commands() -> list[list[str]]:
    """The ``edgetl`` commands of the README's "A tour of the CLI" block, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## A tour of the CLI", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [words for words in commands if words]


def _verb(words: list[str], table: dict[tuple[str, ...], object]) -> tuple[str, ...] | None:
    """The longest key of ``table`` that the command starts with (after ``edgetl``)."""
    keys = [k for k in table if tuple(words[1:1 + len(k)]) == k]
    return max(keys, key=len) if keys else None


def smaller(words: list[str]) -> list[str]:
    """The command with `SMALLER`'s option values in place of the README's (added where it has none)."""
    out = list(words)
    key = _verb(words, SMALLER)
    for option, value in (SMALLER[key] if key else {}).items():
        if option in out:
            out[out.index(option) + 1] = value
        else:
            out += [option, value]
    return out


def test_tour_block_is_what_the_test_expects() -> None:
    commands = tour_commands()
    assert all(words[0] == "edgetl" for words in commands)
    firsts = [tuple(words[1:3]) for words in commands]
    for needed in [("models",), ("data", "sample"), ("train", "classify"), ("evaluate",), ("export",),
                   ("quantize",), ("validate",), ("compile",), ("info",), ("predict",), ("bench",),
                   ("bundle", "pack"), ("bundle", "unpack"), ("bundle", "check")]:
        assert any(first[:len(needed)] == needed for first in firsts), f"the README tour lost {needed}"
    for key in SMALLER:  # an option renamed in the README would silently stop shrinking the tour
        for words in commands:
            if tuple(words[1:1 + len(key)]) == key:
                assert all(option in smaller(words) for option in SMALLER[key])


@pytest.mark.slow
def test_readme_tour_runs_from_an_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    timings = []
    for words in tour_commands():
        if _verb(words, dict.fromkeys(NOT_RUN)):
            continue
        args = smaller(words)[1:]
        started = time.perf_counter()
        result = runner.invoke(cli, args)
        timings.append((shlex.join(args), time.perf_counter() - started, result.exit_code))
        key = _verb(words, EXPECTED)
        expected = EXPECTED[key] if key else {0}
        assert result.exit_code in expected, f"edgetl {shlex.join(args)} -> {result.exit_code}\n{result.output}"
        assert "Traceback" not in result.output, result.output
    print("\n".join(f"{seconds:6.1f} s  exit {code}  edgetl {command}" for command, seconds, code in timings))

    # The results of the query verbs are on stdout, for pipes.
    predicted = runner.invoke(cli, ["predict", "bundles/digits", "data/digits/val", "--top-k", "1"])
    assert predicted.exit_code == 0 and "data/digits/val/" in predicted.stdout
    # The bundle names its training data so that it is found from any directory, not only from here.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    validated = runner.invoke(cli, ["validate", str(tmp_path / "bundles" / "digits"), "--candidate", "fp16",
                                    "--latency-runs", "1"])
    assert validated.exit_code in (0, 1), validated.output
