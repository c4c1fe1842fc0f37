"""Data-parallel training under ``torchrun``: the process group, the rank's device, and the collectives.

edgetl has no distribution layer of its own: ``torchrun`` starts one process per device and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; `setup` joins the
process group they describe (NCCL on GPUs, Gloo on CPUs) and the training core wraps the model in
``DistributedDataParallel``. Without those variables (or with ``WORLD_SIZE=1``) everything here is a
no-op, so a single process runs exactly as before.

The first collective checks that every rank sees the same dataset (a digest of its file list and
labels); a rank that never arrives is reported after ``EDGETL_DIST_TIMEOUT`` seconds (default 300)
instead of hanging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from edgetl.errors import BadInputError, EnvironmentMissingError
from edgetl.lazy import lazy_import

torch = lazy_import("torch", "train", purpose="training")

DEFAULT_TIMEOUT_S = 300.0
RENDEZVOUS_HINT = ("start with `torchrun --nproc-per-node N -m edgetl train ...` (or `edgetl train ... --nproc N`); "
                   "on several machines add --nnodes, --node-rank and --rdzv-endpoint HOST:PORT")


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 when unset); reads no torch."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as exc:
        raise BadInputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number", hint=RENDEZVOUS_HINT) from exc


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a torchrun job: the one that writes and prints."""
    return os.environ.get("RANK", "0") == "0"


def timeout_seconds() -> float:
    """How long a collective waits for the other ranks (``EDGETL_DIST_TIMEOUT``, seconds)."""
    raw = os.environ.get("EDGETL_DIST_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError as exc:
        raise BadInputError(f"EDGETL_DIST_TIMEOUT={raw!r} is not a number of seconds") from exc


@dataclass
class Dist:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 writes checkpoints, metrics, plots and console output).
        world: number of processes.
        local_rank: rank on this machine (picks the GPU).
        backend: ``nccl``, ``gloo`` or ``""`` when not distributed.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: Any) -> tuple[Dist, Any]:
    """Join torchrun's process group when there is one; returns ``(Dist, this rank's device)``.

    Args:
        device: the resolved ``torch.device`` of the run (``cuda`` becomes ``cuda:LOCAL_RANK``).

    Raises:
        BadInputError: a torchrun variable is missing or malformed (no rendezvous).
        EnvironmentMissingError: more processes on a machine than it has GPUs, or the other ranks
            did not join within the timeout.
    """
    dist = torch.distributed

    world = env_world_size()
    if world == 1:
        return Dist(), device
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise BadInputError(f"WORLD_SIZE={world} but no rendezvous: {', '.join(missing)} not set",
                            hint=RENDEZVOUS_HINT)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise EnvironmentMissingError(
                f"rank {rank} needs GPU {local_rank}, but this machine has {count}",
                hint="run at most one process per GPU (--nproc-per-node <= the GPU count)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=timedelta(seconds=timeout_seconds()))
        except Exception as exc:  # the store raises RuntimeError/DistStoreError subclasses
            raise EnvironmentMissingError(
                f"rank {rank} could not join the {world}-process group at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {exc}", hint=RENDEZVOUS_HINT) from exc
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend), device


def teardown() -> None:
    """Leave the process group (end of a run, or after an error)."""
    dist = torch.distributed

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective(what: str, call: Any) -> Any:
    try:
        return call()
    except Exception as exc:
        raise EnvironmentMissingError(
            f"{what}: another rank did not answer within {timeout_seconds():.0f} s ({type(exc).__name__})",
            hint="check the other ranks' output; raise EDGETL_DIST_TIMEOUT for slow starts") from exc


def gather_objects(d: Dist, value: Any, what: str = "gathering results") -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not d.enabled:
        return [value]
    dist = torch.distributed

    out: list[Any] = [None] * d.world
    _collective(what, lambda: dist.all_gather_object(out, value))
    return out


def broadcast_object(d: Dist, value: Any, what: str = "sharing rank 0's result") -> Any:
    """Rank 0's ``value`` on every rank."""
    if not d.enabled:
        return value
    dist = torch.distributed

    box = [value]
    _collective(what, lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def check_same(d: Dist, value: str, what: str) -> None:
    """Refuse to train when the ranks disagree (e.g. on the dataset); every rank raises, rank 0 reports."""
    values = gather_objects(d, value, f"checking that every rank sees the same {what}")
    if len(set(values)) > 1:
        by_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise BadInputError(f"the ranks disagree on the {what} ({by_rank})",
                            hint="give every rank the same files: a shared filesystem or identical copies")


def all_reduce_sum(d: Dist, values: list[float], device: Any = "cpu") -> list[float]:
    """Element-wise sums over the ranks."""
    if not d.enabled:
        return list(values)
    dist = torch.distributed

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    _collective("summing metrics over the ranks", lambda: dist.all_reduce(tensor))
    return tensor.cpu().tolist()


def broadcast_buffers(d: Dist, module: Any) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, so all hold the same model."""
    if not d.enabled:
        return
    dist = torch.distributed

    for buffer in module.buffers():
        _collective("sharing BatchNorm statistics", lambda b=buffer: dist.broadcast(b, src=0))


def shard(d: Dist, n: int, order: Any) -> Any:
    """This rank's share of ``order`` (a permutation of ``n`` items), padded by wrapping so every rank
    gets ``ceil(n / world)`` items (the same number of steps), as ``DistributedSampler`` does."""
    if not d.enabled:
        return order
    per_rank = -(-n // d.world)
    total = per_rank * d.world
    if total > n:

        order = torch.cat([order, order[: total - n]])
    return order[d.rank : total : d.world]
