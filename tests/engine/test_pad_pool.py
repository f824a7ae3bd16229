"""The pad pool: bounded, refilled in the background, every row handed out once, and a clear
error (never a fallback) when the source is down or too slow."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from talaria_proxy.errors import CloudUnavailable
from talaria_proxy.pads.pool import PadPool, PadUnavailable
from talaria_proxy.pads.source import PadBlock, PadShape, PadSource

SHAPES = {"0.o": PadShape("0.o", 4, 3), "lm_head": PadShape("lm_head", 4, 10)}


class CountingSource(PadSource):
    """Blocks of consecutive row numbers: row k of op has r = k + 1 everywhere."""

    name = "counting"

    def __init__(self, rows=8, delay=0.0):
        super().__init__(SHAPES)
        self.rows, self.delay = rows, delay
        self.next = {op: 0 for op in SHAPES}
        self.fail: Exception | None = None
        self.calls = 0

    def block_rows(self, op):
        return self.rows

    def produce(self, ops):
        self.calls += 1
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        blocks = []
        for op in ops:
            k = self.next[op]
            ids = torch.arange(k + 1, k + 1 + self.rows, dtype=torch.int64)[:, None]
            self.next[op] += self.rows
            blocks.append(PadBlock(op, ids.expand(-1, SHAPES[op].d).clone(), ids.expand(-1, SHAPES[op].o).clone()))
        return blocks


def pool_for(source, **kw):
    per_row = sum(8 * (s.d + s.o) for s in SHAPES.values())
    return PadPool(source, list(SHAPES), capacity_bytes=kw.pop("rows", 20) * per_row, **kw).start()


def test_rows_are_handed_out_once_in_order_across_blocks_and_zeroed_in_the_pool():
    source = CountingSource(rows=8)
    pool = pool_for(source, rows=20)
    try:
        assert pool.target_rows == 20 and pool.wait_warm(5)
        held = list(pool._pads["0.o"].blocks)
        r, rw = pool.take("0.o", 11)  # spans two blocks
        assert r[:, 0].tolist() == list(range(1, 12)) and rw.shape == (11, 3)
        r2, _ = pool.take("0.o", 3)
        assert r2[:, 0].tolist() == [12, 13, 14]
        assert not held[0].r.any() and not held[1].r[:6].any()  # nothing handed out stays in the pool
        assert pool.stats.consumed_rows["0.o"] == 14
    finally:
        pool.close()


def test_memory_stays_bounded_and_a_burst_larger_than_the_pool_is_served():
    source = CountingSource(rows=8)
    pool = pool_for(source, rows=20)
    try:
        pool.wait_warm(5)
        time.sleep(0.2)
        assert all(pool.available(op) < 20 + 8 for op in SHAPES)  # target plus at most one block
        r, _ = pool.take("lm_head", 100)  # five times the pool: waits for blocks as they come
        assert r[:, 0].tolist() == list(range(1, 101))
        assert pool.stats.waits == 1
    finally:
        pool.close()


def test_a_failing_source_is_a_fast_clear_error_and_the_pool_recovers():
    source = CountingSource(rows=4)
    pool = pool_for(source, rows=4)
    try:
        pool.wait_warm(5)
        source.fail = CloudUnavailable("pad dealer at http://x is unreachable")
        pool.take("0.o", 4)  # the warm pool still serves
        t0 = time.monotonic()
        with pytest.raises(PadUnavailable, match="pad source .counting. is failing.*unreachable"):
            pool.take("0.o", 1)
        assert time.monotonic() - t0 < 3.0
        assert pool.stats.source_errors >= 1 and pool.stats.unavailable == 1
        source.fail = None  # the dealer is back: the next retry (back-off <= 2 s) clears the error
        deadline = time.monotonic() + 5
        while pool.source_error is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        r, _ = pool.take("0.o", 2)
        assert r.shape == (2, 4)
    finally:
        pool.close()


def test_a_slow_source_times_out_with_a_clear_error():
    source = CountingSource(rows=2, delay=0.6)
    pool = PadPool(source, list(SHAPES), capacity_bytes=1, timeout=0.3).start()
    try:
        with pytest.raises(PadUnavailable, match="within 0s|too slow"):
            pool.take("lm_head", 50)
    finally:
        pool.close()


def test_close_wakes_a_waiting_take():
    source = CountingSource(rows=1, delay=5.0)
    pool = PadPool(source, list(SHAPES), capacity_bytes=1, timeout=30).start()
    errors = []

    def wait():
        try:
            pool.take("0.o", 5)
        except PadUnavailable as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    pool._closed = True  # what close() sets before joining the refill thread
    with pool._cond:
        pool._cond.notify_all()
    t.join(3)
    assert not t.is_alive() and errors and "closed" in str(errors[0])
