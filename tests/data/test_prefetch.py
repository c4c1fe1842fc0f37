"""The background producer calibration decodes with: order, errors where they happened, early stops."""

from __future__ import annotations

import threading
import time

import pytest

from edgetl.data.prefetch import prefetched


def test_items_come_in_order_produced_ahead() -> None:
    produced: list[int] = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    stream = prefetched(items(), depth=1)
    assert next(stream) == 0
    time.sleep(0.1)
    assert produced[:2] == [0, 1]  # the next item was made while the caller held the first
    assert list(stream) == [1, 2, 3, 4]


def test_a_producer_error_is_raised_after_the_items_before_it() -> None:
    def items():
        yield 1
        yield 2
        raise OSError("image 3 is unreadable")

    stream = prefetched(items())
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(OSError, match="image 3"):
        next(stream)


def test_stopping_early_ends_the_producer() -> None:
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
