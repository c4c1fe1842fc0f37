"""Tiny real training runs: every strategy, the run directory, resume after Ctrl-C, early stopping, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from edgetl.cli.main import cli  # noqa: E402
from edgetl.train.checkpoint import build_from_checkpoint, load_checkpoint  # noqa: E402
from edgetl.train.classify import TrainConfig, train_classifier  # noqa: E402
from edgetl.train.evaluate import evaluate_checkpoint  # noqa: E402

RUN_FILES = ("best.pt", "last.pt", "metrics.json", "curves.png", "confusion.png", "config.yaml")


def _cfg(data: Path, out: Path, **overrides: object) -> TrainConfig:
    base = dict(data=data, out=out, img_size=32, epochs=1, batch_size=8, max_steps=2, hflip=False,
                device="cpu", unfreeze=1)
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["linear-probe", "partial", "full", "scratch"])
def test_every_strategy_trains_and_writes_a_deployable_run(strategy: str, tiny_digits: Path, tmp_path: Path) -> None:
    result = train_classifier(_cfg(tiny_digits, tmp_path / strategy, strategy=strategy), progress=False)
    for name in RUN_FILES:
        assert (result.run_dir / name).is_file(), name
    assert len(result.history) == 1 and result.history[0]["step"] == 2
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "max_steps" or metrics["status"] == "completed"
    assert metrics["strategy"] == strategy and len(metrics["best"]["confusion"]) == 10
    _, meta = build_from_checkpoint(result.best_checkpoint)
    assert meta.labels == sorted(p.name for p in (tiny_digits / "train").iterdir())
    assert meta.preprocess.size == (32, 32) and meta.train_config["strategy"] == strategy
    # the checkpoint's accuracy through the deployment preprocessing is what training reported
    # (within one image: training runs NHWC, evaluation NCHW, so logits may differ in the last bits)
    evaluation = evaluate_checkpoint(result.best_checkpoint, tiny_digits)
    assert evaluation["images"] == 20
    assert evaluation["top1"] == pytest.approx(result.best_top1, abs=100 / 20 + 1e-6)


@pytest.mark.slow
def test_linear_probe_runs_the_backbone_once_and_changes_only_the_head(
    tiny_digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgetl.train.features as features
    from edgetl.models import create

    calls = []
    original = features.pooled_features
    monkeypatch.setattr(features, "pooled_features", lambda m, x: calls.append(len(x)) or original(m, x))
    cfg = _cfg(tiny_digits, tmp_path / "lp", strategy="linear-probe", epochs=3, max_steps=None)
    result = train_classifier(cfg, progress=False)
    assert sum(calls) == 50 + 20  # train + val images, once, for three epochs
    trained, _ = build_from_checkpoint(result.last_checkpoint)
    pretrained = create("efficientnet_lite0", num_classes=10).state_dict()
    for key, value in trained.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, pretrained[key]), key


@pytest.mark.slow
def test_ctrl_c_keeps_a_usable_last_checkpoint_and_resume_matches_an_uninterrupted_run(
    tiny_digits: Path, tmp_path: Path
) -> None:
    common = dict(strategy="partial", epochs=2, batch_size=13, max_steps=None)  # 4 steps per epoch
    straight = train_classifier(_cfg(tiny_digits, tmp_path / "straight", **common), progress=False)

    def interrupt(step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(_cfg(tiny_digits, tmp_path / "cut", **common), progress=False, on_step=interrupt)
    raw, meta = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert meta.epoch == 1 and raw["resume"]["step"] == 4
    build_from_checkpoint(tmp_path / "cut" / "last.pt")  # usable as is
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["status"] == "interrupted"
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    resumed = train_classifier(
        _cfg(tiny_digits, tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", **common), progress=False
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    a = load_checkpoint(straight.last_checkpoint)[0]["state_dict"]
    b = load_checkpoint(resumed.last_checkpoint)[0]["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_early_stopping_and_skipped_files_are_reported(tiny_digits: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import edgetl.train.classify as classify

    # validation top-1 that never improves after epoch 1 (a tiny learning rate no longer ensures that:
    # from a zero head, any step reorders the logits)
    real = classify.classification_metrics
    monkeypatch.setattr(classify, "classification_metrics", lambda *a, **k: {**real(*a, **k), "top1": 50.0})
    data = tmp_path / "data"
    shutil.copytree(tiny_digits, data)
    (data / "train" / "one" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = _cfg(data, tmp_path / "es", strategy="linear-probe", epochs=6, max_steps=None, patience=1)
    result = train_classifier(cfg, progress=False)
    assert result.stopped == "early_stopping" and len(result.history) == 2 and result.best_epoch == 1
    assert [Path(p).name for p, _ in result.skipped] == ["broken.png"]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["skipped"]["count"] == 1 and "broken.png" in metrics["skipped"]["files"][0]


def test_cli_train_evaluate_and_config_reuse(tiny_digits: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train", "classify", "--data", str(tiny_digits), "--strategy", "linear-probe", "--img-size", "32",
            "--epochs", "2", "--out", str(out), "--quiet", "--json", "--no-hflip"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["best_checkpoint"] == str(out / "best.pt") and len(doc["history"]) == 2
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["strategy"] == "linear-probe" and config["img_size"] == 32 and config["hflip"] is False
    rerun = runner.invoke(cli, ["train", "classify", "--config", str(out / "config.yaml"), "--out",
                                str(tmp_path / "again"), "--quiet", "--json"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["history"] == doc["history"]
    evaluated = runner.invoke(cli, ["evaluate", str(out / "best.pt"), "--data", str(tiny_digits), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["top1"] == pytest.approx(doc["best_top1"], abs=100 / 20 + 1e-6)
    human = runner.invoke(cli, ["evaluate", str(out / "best.pt"), "--data", str(tiny_digits)])
    assert human.exit_code == 0 and "top-1" in human.output and "seven" in human.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "classify", "--data", "{missing}"], 2, "dataset not found"),
        (["train", "classify", "--data", "{junk}"], 2, "is not a dataset (a file, but not a .csv)"),
        (["train", "classify", "--data", "{digits}", "--model", "efficientnet_litez"], 2, "unknown model"),
        (["train", "classify", "--data", "{digits}", "--strategy", "partial", "--unfreeze", "9"], 2, "has 7 stages"),
        (["train", "classify", "--data", "{digits}", "--strategy", "warp"], 2, "Invalid value"),
        (["train", "classify", "--data", "{digits}", "--weights", "none"], 2, "--strategy scratch"),
        (["evaluate", "{junk}", "--data", "{digits}"], 2, "not an edgetl checkpoint"),
        (["data", "sample", "digits", "{digits}"], 2, "--overwrite"),
    ],
    ids=["missing-data", "file-not-dataset", "unknown-model", "unfreeze-range", "bad-strategy", "weights-none",
         "bad-ckpt", "exists"],
)
def test_cli_exit_codes(args: list[str], code: int, message: str, tiny_digits: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    values = {"missing": str(tmp_path / "nope"), "digits": str(tiny_digits), "junk": str(junk)}
    argv = [a.format(**values) for a in args] + (["--out", str(tmp_path / "r"), "--quiet"] if args[0] == "train"
                                                 else [])
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, result.output
    assert message in result.output


def test_cli_device_cuda_without_gpu_exits_3(tiny_digits: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = CliRunner().invoke(cli, ["train", "classify", "--data", str(tiny_digits), "--device", "cuda",
                                      "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 3 and "no CUDA GPU" in result.output


def test_evaluate_refuses_classes_the_model_does_not_know(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from edgetl.data.samples import write_digits

    data = tmp_path / "renamed"
    write_digits(data, train_per_class=2, val_per_class=2, size=32)
    (data / "train" / "zero").rename(data / "train" / "nil")
    (data / "val" / "zero").rename(data / "val" / "nil")
    result = CliRunner().invoke(cli, ["evaluate", str(tiny_checkpoint), "--data", str(data)])
    assert result.exit_code == 2 and "['nil'] are not labels" in result.output


def test_data_sample_digits_cli(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    result = CliRunner().invoke(cli, ["data", "sample", "digits", str(out), "--per-class", "3",
                                      "--val-per-class", "2", "--size", "40", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train_images"] == 30
    from PIL import Image

    first = sorted((out / "val" / "seven").iterdir())[0]
    assert Image.open(first).size == (40, 40) and Image.open(first).mode == "RGB"
