"""The training core's small pieces: device names, per-epoch seeds, shards, the CPU allocator setting."""

from __future__ import annotations

import resource
import sys

import pytest

torch = pytest.importorskip("torch")

from edgetl.errors import BadInputError  # noqa: E402
from edgetl.train import distributed  # noqa: E402
from edgetl.train.engine import check_device_name, seed_epoch  # noqa: E402


def test_device_names_accepted() -> None:
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        check_device_name(name)


def test_device_names_refused_with_the_choices() -> None:
    for name in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(BadInputError, match="is not a device") as info:
            check_device_name(name)
        assert "auto, cpu, cuda or cuda:N" in str(info.value)


def test_epoch_seeds_replay_and_ranks_differ() -> None:
    a = torch.randint(0, 1000, (4,), generator=seed_epoch(3, 2))
    b = torch.randint(0, 1000, (4,), generator=seed_epoch(3, 2))
    c = torch.randint(0, 1000, (4,), generator=seed_epoch(3, 2, rank=1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_shards_are_disjoint_equal_and_cover_everything() -> None:
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [distributed.shard(distributed.Dist(rank=r, world=3, backend="gloo"), 11, order) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded by wrapping, like DistributedSampler
    assert set(torch.cat(parts).tolist()) == set(range(11))
    assert torch.equal(distributed.shard(distributed.Dist(), 11, order), order)


def test_single_process_collectives_are_identities() -> None:
    d = distributed.Dist()
    assert not d.enabled and d.is_main
    assert distributed.gather_objects(d, 5) == [5] and distributed.broadcast_object(d, "x") == "x"
    assert distributed.all_reduce_sum(d, [1.0, 2.0]) == [1.0, 2.0]
    distributed.check_same(d, "digest", "dataset")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_training_memory_is_reused_without_page_faults() -> None:
    from edgetl.train.cpu_memory import keep_freed_memory

    assert keep_freed_memory() is True
    size = 64 * 1024 * 1024 // 4  # 64 MiB: above glibc's largest mmap threshold
    for _ in range(10):
        torch.ones(size)  # the heap settles (without the setting, every one of these maps fresh pages)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(size)  # freed and allocated again: the same pages, already mapped
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 5 * (64 * 1024 * 1024 // 4096) // 10  # < 10 % of what re-mapping would cost
