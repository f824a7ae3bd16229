"""Pad source `dealer`: a second cloud with the same checkpoint makes the pad products from seeds.

Per block the CVM draws a 32-byte seed from the OS CSPRNG (`secrets`), sends (op, rows, seed) to
the dealer, and both sides expand the seed into the same r (talaria_wire.ring.pad_rows,
SHAKE-256); the dealer answers r W_bar mod t. The seed is sent once and then forgotten by the CVM.

Trust (README "Trust model"): the dealer sees seeds, hence r, and nothing derived from data; the
compute cloud sees only u = x_bar - r. Each alone learns nothing about the conversation beyond
sizes and timing; the two together learn everything (u + r = x_bar), so they must not collude.
Both must hold the same W_bar and exponents: the proxy checks that their fingerprints agree at
start, and every answer's fingerprint against the one it started with.
"""

from __future__ import annotations

import secrets


from talaria_proxy.errors import CloudRejected
from talaria_proxy.pads.source import PadBlock, PadShape, PadSource
from talaria_wire.ring import SEED_BYTES, in_ring, pad_rows


class DealerSource(PadSource):
    name = "dealer"

    def __init__(self, shapes: dict[str, PadShape], dealer, rows_per_block: int = 32):
        """dealer: a CloudSession (or the in-process fake) with `pads(requests, seeds)`."""
        super().__init__(shapes)
        if rows_per_block < 1:
            raise ValueError("rows_per_block must be >= 1")
        self.dealer = dealer
        self.rows_per_block = rows_per_block

    def block_rows(self, op):
        return self.rows_per_block

    def produce(self, ops):
        requests = [(op, self.rows_per_block) for op in ops]
        seeds = [secrets.token_bytes(SEED_BYTES) for _ in ops]
        answers = self.dealer.pads(requests, seeds)
        blocks = []
        for (op, rows), seed, rw in zip(requests, seeds, answers):
            shape = self.shapes[op]
            if rw.shape != (rows, shape.o) or not in_ring(rw):
                raise CloudRejected(f"pad dealer answered op {op} with {rw.dtype} {list(rw.shape)}, "
                                    f"expected int64 residues [{rows}, {shape.o}]")
            blocks.append(PadBlock(op, pad_rows(seed, op, rows, shape.d), rw))
        return blocks

    def close(self):
        close = getattr(self.dealer, "close", None)
        if close is not None:
            close()
