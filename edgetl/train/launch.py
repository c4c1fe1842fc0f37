"""``edgetl train ... --nproc N``: start the same command under ``torchrun`` with N processes.

A convenience for one machine: it checks N against the devices there, then replaces this process
with ``python -m torch.distributed.run --standalone --nproc-per-node N -m edgetl <the same arguments>``.
Several machines use torchrun directly, with its rendezvous flags (see the README).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

torch = lazy_import("torch", "train", purpose="training")

TORCHRUN = ("-m", "torch.distributed.run")


def without_nproc(argv: Sequence[str]) -> list[str]:
    """The arguments minus ``--nproc N`` / ``--nproc=N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def available_devices(device: str) -> tuple[int, str]:
    """How many processes this machine can give one device each: GPUs for CUDA, CPU cores otherwise."""

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "CUDA GPU(s)"
    return os.cpu_count() or 1, "CPU core(s)"


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` (edgetl's arguments) in ``nproc`` processes."""
    return [sys.executable, *TORCHRUN, "--standalone", "--nproc-per-node", str(nproc), "-m", "edgetl",
            *without_nproc(argv)]


def relaunch(nproc: int, device: str, argv: Sequence[str]) -> None:
    """Replace this process with torchrun running ``argv`` in ``nproc`` processes (never returns).

    Raises:
        BadInputError: ``nproc`` < 1, this process already runs under torchrun, or more processes than
            devices (GPUs, or CPU cores for ``--device cpu``).
    """
    if nproc < 1:
        raise BadInputError(f"--nproc {nproc}: needs at least 1 process")
    if "WORLD_SIZE" in os.environ:
        raise BadInputError("--nproc under torchrun: this process is already one of torchrun's",
                            hint="drop --nproc, or run without torchrun")
    count, kind = available_devices(device)
    if nproc > count:
        raise BadInputError(f"--nproc {nproc}: this machine has {count} {kind}",
                            hint=f"use --nproc {count} or fewer (one process per device)")
    command = torchrun_command(nproc, argv)
    print("starting: " + " ".join(command[1:]), file=sys.stderr, flush=True)
    os.execv(command[0], command)
