"""The pad pool: pad pairs (r, r W_bar) per op, made ahead by a pad source, each handed out once.

A background thread keeps every op's pool at `target_rows` rows (one target for all ops, from the
memory budget: every decode step takes the same number of rows from each block op; at least one
source block), asking the
source for one block per needy op at a time, the emptiest first and ops someone waits on before
all others. `take(op, n)` hands out the oldest n rows and destroys them in the pool (zeroed, then
dropped): a pad is never given out twice. With a warm pool an online call never waits on the
source; a burst larger than the pool (a long prefill) waits for the blocks it needs.

Faults: a source error is kept and retried with a back-off; a `take` that finds its op empty
while the source is failing, or that waits past `timeout`, raises `PadUnavailable` (a
CloudUnavailable: 503 through the API). There is no fallback: no pad, no call.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from talaria_proxy.errors import CloudError, CloudUnavailable
from talaria_proxy.pads.source import PadBlock, PadSource

log = logging.getLogger(__name__)

MAX_TARGET_ROWS = 1024


class PadUnavailable(CloudUnavailable):
    """No pad for a call: the source is down or too slow. Never answered by a weaker scheme."""


@dataclass
class PadStats:
    produced_rows: dict[str, int] = field(default_factory=dict)
    consumed_rows: dict[str, int] = field(default_factory=dict)
    blocks: int = 0  # blocks received from the source
    produce_seconds: float = 0.0  # time the refill thread spent in source.produce
    waits: int = 0  # takes that found too few rows and waited
    wait_seconds: float = 0.0
    source_errors: int = 0
    unavailable: int = 0  # takes that failed


class _OpPads:
    def __init__(self):
        self.blocks: collections.deque[PadBlock] = collections.deque()
        self.cursor = 0  # rows of blocks[0] already handed out
        self.rows = 0  # rows available

    def take(self, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        rs, rws = [], []
        while n > 0 and self.blocks:
            blk = self.blocks[0]
            k = min(n, blk.rows - self.cursor)
            sl = slice(self.cursor, self.cursor + k)
            rs.append(blk.r[sl].clone())
            rws.append(blk.rw[sl].clone())
            blk.r[sl].zero_()  # destroyed in the pool: only the caller's copy exists now
            blk.rw[sl].zero_()
            self.cursor += k
            self.rows -= k
            n -= k
            if self.cursor == blk.rows:
                self.blocks.popleft()
                self.cursor = 0
        return rs, rws


class PadPool:
    def __init__(self, source: PadSource, ops: list[str], *, capacity_bytes: int = 256 << 20,
                 timeout: float = 10.0, ops_per_request: int | None = None):
        self.source = source
        self.ops = list(ops)
        self.timeout = timeout
        self.ops_per_request = ops_per_request or source.ops_per_produce
        row_bytes = sum(8 * (source.shapes[op].d + source.shapes[op].o) for op in self.ops)  # one row of every op
        # rows beyond a long prefill are dealer work for nothing: at most MAX_TARGET_ROWS per op
        self.target_rows = max(1, min(MAX_TARGET_ROWS, capacity_bytes // row_bytes))
        # a source whose blocks take long to make (he: N rows a batch) refills while a whole block is
        # still in reserve: the pool then holds up to two blocks, which the caller sizes to the budget
        self.target_rows = max(self.target_rows, max(source.block_rows(op) for op in self.ops))
        self.capacity_bytes = capacity_bytes
        self.stats = PadStats({op: 0 for op in self.ops}, {op: 0 for op in self.ops})
        self._pads = {op: _OpPads() for op in self.ops}
        self._demand: dict[str, int] = {}  # op -> rows a take is waiting for
        self._cond = threading.Condition()
        self._error: Exception | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._refill, name="talaria-pads", daemon=True)

    def start(self) -> "PadPool":
        self._thread.start()
        return self

    def available(self, op: str) -> int:
        with self._cond:
            return self._pads[op].rows

    def warm_ops(self) -> int:
        """Ops holding their target rows."""
        with self._cond:
            return sum(p.rows >= self.target_rows for p in self._pads.values())

    @property
    def source_error(self) -> Exception | None:
        return self._error

    def wait_warm(self, timeout: float) -> bool:
        """Block until every op holds target_rows (or timeout); True when warm."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(p.rows < self.target_rows for p in self._pads.values()):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def take(self, op: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(r [rows, d], r W_bar [rows, o]) for one call; blocks while the source catches up."""
        pads = self._pads[op]
        rs: list[torch.Tensor] = []
        rws: list[torch.Tensor] = []
        need = rows
        deadline = time.monotonic() + self.timeout
        waited = None
        with self._cond:
            while True:
                got_r, got_rw = pads.take(need)
                rs += got_r
                rws += got_rw
                need -= sum(t.shape[0] for t in got_r)
                if need == 0:
                    break
                if self._closed:
                    raise PadUnavailable("the pad pool is closed")
                if self._error is not None:
                    self.stats.unavailable += 1
                    raise PadUnavailable(f"no pads for op {op}: the pad source ({self.source.name}) is failing: {self._error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats.unavailable += 1
                    raise PadUnavailable(f"no pads for op {op} within {self.timeout:.0f}s: the pad source "
                                         f"({self.source.name}) is too slow for this load")
                if waited is None:
                    waited = time.monotonic()
                    self.stats.waits += 1
                self._demand[op] = need
                self._cond.notify_all()
                self._cond.wait(min(left, 0.5))
            self._demand.pop(op, None)
            self.stats.consumed_rows[op] += rows
            if waited is not None:
                self.stats.wait_seconds += time.monotonic() - waited
            self._cond.notify_all()  # the refill thread tops the op up again
        if len(rs) == 1:
            return rs[0], rws[0]
        return torch.cat(rs), torch.cat(rws)

    def _needy(self) -> list[str]:
        waiting = [op for op in self.ops if op in self._demand]
        low = sorted((op for op in self.ops if op not in self._demand and self._pads[op].rows < self.target_rows),
                     key=lambda op: self._pads[op].rows)
        return (waiting + low)[: self.ops_per_request]

    def _refill(self) -> None:
        torch.set_num_threads(1)  # this thread must not start a second OpenMP team (engine.py)
        backoff = 0.2
        while True:
            with self._cond:
                while not self._closed and not (needy := self._needy()):
                    self._cond.wait(0.5)
                if self._closed:
                    return
            t0 = time.monotonic()
            try:
                blocks = self.source.produce(needy)
            except CloudError as exc:
                with self._cond:
                    if self._error is None:
                        log.warning("pad source %s failing: %s", self.source.name, exc)
                    self._error = exc
                    self.stats.source_errors += 1
                    self._cond.notify_all()  # waiting takes fail now instead of at their timeout
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception as exc:  # a bug in a source: keep the pool failing loudly, not dead
                log.exception("pad source %s crashed", self.source.name)
                with self._cond:
                    self._error = exc
                    self.stats.source_errors += 1
                    self._cond.notify_all()
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            with self._cond:
                if self._error is not None:
                    log.info("pad source %s is back", self.source.name)
                self._error = None
                self.stats.produce_seconds += time.monotonic() - t0
                for blk in blocks:
                    self._pads[blk.op].blocks.append(blk)
                    self._pads[blk.op].rows += blk.rows
                    self.stats.produced_rows[blk.op] += blk.rows
                    self.stats.blocks += 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.source.close()
