"""One rank of a data-parallel test run, started by torchrun from `test_distributed.py` (not a test module).

    torchrun --nproc-per-node 2 ddp_worker.py train DATA OUT   # trains, writes OUT/rank<R>.json and .pt
    torchrun --nproc-per-node 2 ddp_worker.py cli DATA0 DATA1 OUT  # `edgetl train classify`, data per rank
    torchrun --nproc-per-node 2 ddp_worker.py resume DATA OUT RUN  # 3 epochs, resuming RUN; OUT/rank<R>.json, .pt
    torchrun --nproc-per-node 2 ddp_worker.py interrupt DATA RUN   # Ctrl-C on both ranks inside epoch 2
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def train(data: str, out: str) -> None:
    import torch

    import edgetl.data.torch_datasets as datasets
    from edgetl.train.classify import TrainConfig, _Run
    from edgetl.train.engine import cpu_state_dict

    rank = int(os.environ["RANK"])
    seen: list[str] = []
    original = datasets.ImageDataset.__getitem__

    def recording(self, index):  # type: ignore[no-untyped-def]
        if self.transform.__class__.__name__ != "SpecTransform":  # training images, not validation
            seen.append(Path(self.samples[index].path).name)
        return original(self, index)

    datasets.ImageDataset.__getitem__ = recording
    cfg = TrainConfig(data=data, out=str(Path(out) / "run"), img_size=32, epochs=2, batch_size=5, hflip=False,
                      device="cpu", unfreeze=1, strategy="partial", lr=5e-4, seed=0)
    run = _Run(cfg, False, None)
    run.fit()
    torch.save(cpu_state_dict(run.model), Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(
        {"seen": seen, "best_top1": run.best_score, "history": run.history, "lr": run.lr}))


def _config(data: str, run: str, **extra: object):
    from edgetl.train.classify import TrainConfig

    return TrainConfig(data=data, out=run, img_size=32, batch_size=5, hflip=False, device="cpu", unfreeze=1,
                       strategy="partial", lr=5e-4, seed=0, **extra)


def resume(data: str, out: str, run: str) -> None:
    """Continue a run (written by one process) in two: its epochs 1-2 come from the checkpoint."""
    import torch

    from edgetl.train.classify import _Run
    from edgetl.train.engine import cpu_state_dict

    rank = int(os.environ["RANK"])
    job = _Run(_config(data, run, epochs=3, resume=run), False, None)
    job.fit()
    torch.save(cpu_state_dict(job.model), Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"history": job.history}))


def interrupt(data: str, run: str) -> None:
    """Ctrl-C reaches both ranks (a terminal signals the whole process group) in the middle of epoch 2."""
    from edgetl.train.classify import _Run

    def stop(step: int) -> None:
        if step == 7:  # 5 steps of 2 x 5 images per epoch (50 images): inside the second epoch
            raise KeyboardInterrupt

    try:
        _Run(_config(data, run, epochs=3), False, stop).fit()
    except KeyboardInterrupt:
        sys.exit(130)


def cli(data0: str, data1: str, out: str) -> None:
    from edgetl.cli.main import main

    data = data0 if os.environ["RANK"] == "0" else data1
    sys.argv = ["edgetl", "train", "classify", "--data", data, "--img-size", "32", "--epochs", "1",
                "--strategy", "linear-probe", "--device", "cpu", "--out", out, "--quiet"]
    main()


if __name__ == "__main__":
    {"train": train, "cli": cli, "resume": resume, "interrupt": interrupt}[sys.argv[1]](*sys.argv[2:])
