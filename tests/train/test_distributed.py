"""Data-parallel training on CPUs: two Gloo processes started by torchrun, against one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from edgetl.cli.main import cli  # noqa: E402
from edgetl.train.classify import TrainConfig, train_classifier  # noqa: E402

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _torchrun(*args: str, timeout: float = 120, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "EDGETL_DIST_TIMEOUT": "60", **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_processes_train_disjoint_shards_to_identical_weights(tiny_digits: Path, tmp_path: Path) -> None:
    done = _torchrun("train", str(tiny_digits), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # every epoch, the two ranks train on disjoint halves of the 50 training images
    for epoch in range(2):
        shards = [set(r["seen"][epoch * 25 : (epoch + 1) * 25]) for r in ranks]
        assert len(shards[0]) == len(shards[1]) == 25 and not shards[0] & shards[1]
    assert ranks[0]["seen"][:25] != ranks[0]["seen"][25:]  # reshuffled per epoch
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert ranks[0]["history"] == ranks[1]["history"]  # metrics reduced over the ranks, the same everywhere
    assert ranks[0]["lr"] == pytest.approx(1e-3)  # 5e-4 per process of 5 images, x2 for the global batch of 10
    run_dir = tmp_path / "run"
    assert {"best.pt", "last.pt", "metrics.json"} <= {p.name for p in run_dir.iterdir()}  # rank 0 wrote them
    # one process with the same global batch (10) and learning rate: the same accuracy within noise
    single = train_classifier(TrainConfig(data=tiny_digits, out=tmp_path / "single", img_size=32, epochs=2,
                                          batch_size=10, hflip=False, device="cpu", unfreeze=1,
                                          strategy="partial", lr=1e-3, seed=0), progress=False)
    assert abs(single.best_top1 - ranks[0]["best_top1"]) <= 15.0  # 3 of the 20 validation images
    two = ranks[0]["history"][-1]
    one = single.history[-1]
    assert two["step"] == one["step"] == 10  # 5 steps per epoch either way
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.1)
    # a checkpoint written by two ranks resumes in one process
    resumed = train_classifier(TrainConfig(data=tiny_digits, out=run_dir, img_size=32, epochs=3, batch_size=10,
                                           hflip=False, device="cpu", unfreeze=1, strategy="partial", lr=1e-3,
                                           resume=run_dir), progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_one_process_checkpoint_resumes_in_two_and_ctrl_c_keeps_a_resumable_run(tiny_digits: Path,
                                                                                 tmp_path: Path) -> None:
    base = dict(data=tiny_digits, img_size=32, batch_size=5, hflip=False, device="cpu", unfreeze=1,
                strategy="partial", lr=5e-4, seed=0)
    one = tmp_path / "one"
    train_classifier(TrainConfig(out=one, epochs=2, **base), progress=False)
    done = _torchrun("resume", str(tiny_digits), str(tmp_path), str(one))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [h["epoch"] for h in ranks[0]["history"]] == [1, 2, 3] and ranks[0]["history"] == ranks[1]["history"]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[key], b[key]) for key in a)  # rank 1 started from rank 0's resumed weights

    # Ctrl-C on both ranks inside epoch 2: rank 0 leaves last.pt at the end of epoch 1 and says "interrupted"
    cut = tmp_path / "cut"
    stopped = _torchrun("interrupt", str(tiny_digits), str(cut))
    assert stopped.returncode != 0
    assert json.loads((cut / "metrics.json").read_text())["status"] == "interrupted"
    again = train_classifier(TrainConfig(out=cut, epochs=2, resume=cut, **base), progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2] and again.stopped == "completed"


def test_ranks_that_disagree_on_the_dataset_fail_on_rank_0(tiny_digits: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_digits, other)
    next((other / "train" / "one").iterdir()).unlink()
    done = _torchrun("cli", str(tiny_digits), str(other), str(tmp_path / "run"))
    assert done.returncode != 0
    assert "the ranks disagree on the dataset" in done.stderr and "rank 0:" in done.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_launches_say_what_to_do(tiny_digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["train", "classify", "--data", str(tiny_digits), "--img-size", "32", "--device", "cpu",
            "--out", str(tmp_path / "x"), "--quiet"]
    too_many = CliRunner().invoke(cli, [*base, "--nproc", "999"])
    assert too_many.exit_code == 2 and "--nproc 999: this machine has" in too_many.output
    no_rendezvous = CliRunner().invoke(cli, base, env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert no_rendezvous.exit_code == 2 and "no rendezvous: MASTER_ADDR, MASTER_PORT not set" in no_rendezvous.output
    # rank 1 never starts: rank 0 gives up after the timeout instead of hanging
    alone = CliRunner().invoke(cli, base, env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                                               "EDGETL_DIST_TIMEOUT": "2"})
    assert alone.exit_code == 3 and "could not join the 2-process group" in alone.output, alone.output


def test_torchrun_command_drops_nproc() -> None:
    from edgetl.train.launch import torchrun_command

    cmd = torchrun_command(2, ["train", "detect", "--nproc", "2", "--data", "d.yaml", "--nproc=3"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "edgetl",
                       "train", "detect", "--data", "d.yaml"]
