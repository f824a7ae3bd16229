"""Where pad products come from: the `PadSource` seam of the `pad` scheme.

A pad pair for op y = x W (+ b) is (r, r W_bar mod t): r [n, d] uniform in Z_t (d = d_in, plus
one coordinate when the op's bias is folded in), r W_bar [n, o]. r W_bar does not depend on the
data, so sources make it ahead of need and the pool (pool.py) keeps it until one online call
consumes it. A source never sees data:
  dealer  a second cloud with the same W_bar expands seeds into r and returns r W_bar (dealer.py);
          private as long as the two clouds do not collude.
  he      the compute cloud itself computes r W_bar on RLWE ciphertexts of r (he_source.py).

`produce` runs on the pool's refill thread, never on the decode path. It raises
`talaria_proxy.errors.CloudError` (CloudUnavailable / CloudRejected) when its party fails; the
pool turns a source that stays down into a clear error for the calls waiting on pads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PadShape:
    """What a source needs to know of an op: r is [n, d], r W_bar is [n, o]."""

    op: str
    d: int  # d_in, plus 1 when the bias is folded in as a constant coordinate
    o: int  # d_out


@dataclass
class PadBlock:
    """n pad pairs of one op; int64 residues in [0, t). Used once: the pool hands rows out and drops them."""

    op: str
    r: torch.Tensor  # [n, d]
    rw: torch.Tensor  # [n, o] = r W_bar mod t

    @property
    def rows(self) -> int:
        return self.r.shape[0]

    @property
    def nbytes(self) -> int:
        return self.r.numel() * 8 + self.rw.numel() * 8


class PadSource(ABC):
    name: str = ""
    ops_per_produce: int = 8  # ops the pool asks for per `produce` call (a slow source: 1, so ops fill one by one)

    def __init__(self, shapes: dict[str, PadShape]):
        self.shapes = shapes

    @abstractmethod
    def block_rows(self, op: str) -> int:
        """Rows of one `produce` block for op (dealer: a setting; he: the ring degree N)."""

    @abstractmethod
    def produce(self, ops: list[str]) -> list[PadBlock]:
        """One fresh block per op in `ops` (blocking; called from the refill thread only)."""

    def close(self) -> None:
        pass
