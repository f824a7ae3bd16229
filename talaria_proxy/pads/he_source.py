"""Pad source `he`: the compute cloud itself makes the pad products, on RLWE ciphertexts of the pads.

One batch per op (on the pool's refill thread): draw N rows r in Z_t^d from the OS CSPRNG, encrypt
them coefficient-packed under this proxy start's secret key (he_keys.py: d ciphertexts, one per input
coordinate), POST the b halves, the a seed and the public key to /v1/he/{op} (in output-column
ranges of at most he_params.max_answer_cols() for wide ops), decrypt the answers to r W_bar mod t
exactly, and hand `rows` of the N slots to the pool. Nothing of a batch is used before all of it is
decrypted and checked; a failed request (cloud restart, timeout, 4xx) drops the whole batch, and the
next one draws fresh rows: a pad is never reused.

Integrity (a cloud that answers garbage or with another W_bar). The cloud cannot tell slots apart
(the ciphertexts are IND-CPA under RLWE), so every batch carries `check_rows` slots at secret random
positions whose products the CVM already knows, and the batch is dropped on any mismatch:
- bootstrap: the first two batches of an op share `check_rows` probe rows at independent secret
  positions; if both decrypt to the same products the probes become the op's reference bank
  (trust on first use: a cloud that uses one wrong W_bar consistently from the start is not caught,
  nor can any check the CVM runs without knowing W_bar catch it);
- later batches: the bank rows, freshly encrypted, at fresh positions.
What passes: garbage, a changed W_bar, or a wrong column fail every check slot (caught with
probability 1 - 2^-61 per slot). A cloud that shifts s chosen slots of a batch (adding Delta delta
to B) is caught with probability 1 - C(N - s, c) / C(N, c) ~ 1 - (1 - s/N)^c: certain for s = N,
81% for s = N/10 and c = 16, only c/N = 0.2% for a single slot. Answers whose decryption noise
exceeds the honest bound (2^-5 of Delta) are dropped too (catches random tampering of any slot).
The online call itself (v = u W_bar) cannot be checked this way; a cloud corrupting it changes the
output but learns nothing more about the conversation.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from talaria_proxy.errors import CloudRejected
from talaria_proxy.pads import he_keys
from talaria_proxy.pads.source import PadBlock, PadShape, PadSource
from talaria_wire.he_params import N, max_answer_cols
from talaria_wire.ring import PRIMES, SEED_BYTES, T, uniform_mod

log = logging.getLogger(__name__)

HONEST_SHARE = 2.0**-5  # |noise| / Delta of an honest answer stays below 2^-5.9 (he_kernel.noise_budget)
_P = torch.tensor(PRIMES, dtype=torch.int64)[:, None]


class PadIntegrityError(CloudRejected):
    """A batch whose check rows or decryption noise do not match: the cloud answered wrongly."""


def _csprng_rows(count: int, d: int) -> torch.Tensor:
    return uniform_mod(os.urandom(SEED_BYTES), "he-pad", count * d, T, 62).view(count, d)


def _secret_permutation(n: int) -> torch.Tensor:
    keys = uniform_mod(os.urandom(SEED_BYTES), "he-slots", n, 1 << 62, 62)
    return torch.argsort(keys)


class HeSource(PadSource):
    name = "he"
    ops_per_produce = 1  # a batch takes seconds per op: hand each op's pads over as soon as they are made

    def __init__(self, shapes: dict[str, PadShape], cloud, rows: int | None = None, check_rows: int = 16,
                 timeout: float = 600.0, keys: he_keys.HeKeys | None = None):
        """cloud: a CloudSession (post_tensors, fingerprint). rows: pad rows kept per batch (at most
        N - check_rows; fewer saves pool memory on wide ops, not cloud work)."""
        super().__init__(shapes)
        if not 1 <= check_rows < N:
            raise ValueError(f"check_rows must be in [1, {N}), got {check_rows}")
        self.rows = min(rows or N, N - check_rows)
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.check_rows = check_rows
        self.cloud = cloud
        self.timeout = timeout
        self.keys = keys or he_keys.HeKeys.fresh()  # fresh secret per proxy start; never leaves this object
        self._bank: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # op -> (rows [c, d], products [c, o])
        self._bank_fingerprint: str | None = None
        self._ready: dict[str, list[PadBlock]] = {}  # verified blocks of a bootstrap, not yet handed out
        self.stats = {"batches": 0, "discarded": 0, "encrypt_s": 0.0, "decrypt_s": 0.0, "bytes_up": 0, "bytes_down": 0}

    def block_rows(self, op):
        return self.rows

    @property
    def max_rows(self) -> int:
        """Pad rows a batch can carry: its N slots less the check rows."""
        return N - self.check_rows

    # -- one batch ---------------------------------------------------------------------------
    def _request(self, op: str, m: torch.Tensor) -> torch.Tensor:
        """Encrypt m [d, N], ask the cloud, decrypt: M [o, N] = (sum_j W_bar[j, k] m_j) mod t."""
        shape = self.shapes[op]
        t0 = time.process_time()
        enc = he_keys.encrypt(self.keys, m)
        body = {"b": enc.b.to(torch.int32), "seed": torch.frombuffer(bytearray(enc.seed), dtype=torch.uint8),
                "pk_seed": torch.frombuffer(bytearray(self.keys.pk_seed), dtype=torch.uint8),
                "pk_b": self.keys.pk_b.to(torch.int32)}
        self.stats["encrypt_s"] += time.process_time() - t0
        out = torch.empty((shape.o, N), dtype=torch.int64)
        step = max_answer_cols()
        batch = os.urandom(16).hex() if shape.o > step else ""  # wide op: upload once, then ask by batch
        for k0 in range(0, shape.o, step):
            k1 = min(shape.o, k0 + step)
            answer = self._post(op, body if k0 == 0 else {}, body, {"cols": f"{k0}:{k1}", "batch": batch})
            a, b = self._answer(op, answer, k1 - k0)
            self.stats["bytes_down"] += 2 * a.numel() * 4
            t0 = time.process_time()
            m_out, share = he_keys.decrypt(self.keys, a, b)
            self.stats["decrypt_s"] += time.process_time() - t0
            if float(share.abs().max()) > HONEST_SHARE:
                raise PadIntegrityError(f"he answer for op {op} decrypts with noise beyond the honest bound")
            out[k0:k1] = m_out
        return out

    def _post(self, op: str, payload: dict, body: dict, meta: dict) -> dict:
        """POST one column range; a cloud that no longer keeps the batch (409) gets the upload again."""
        meta = {k: v for k, v in meta.items() if v}
        try:
            answer = self.cloud.post_tensors(f"/v1/he/{op}", payload, meta, timeout=self.timeout)
        except CloudRejected as exc:
            if payload or "(409)" not in str(exc):
                raise
            payload = body
            answer = self.cloud.post_tensors(f"/v1/he/{op}", payload, meta, timeout=self.timeout)
        self.stats["bytes_up"] += sum(v.numel() * v.element_size() for v in payload.values())
        return answer

    @staticmethod
    def _answer(op: str, answer: dict, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        want = (cols, len(PRIMES), N)
        halves = []
        for name in ("a", "b"):
            x = answer.get(name)
            if x is None or x.dtype != torch.int32 or tuple(x.shape) != want:
                raise CloudRejected(f"he answer for op {op}: expected '{name}' int32 {list(want)}")
            x = x.to(torch.int64)
            if bool((x < 0).any()) or bool((x >= _P).any()):
                raise CloudRejected(f"he answer for op {op}: '{name}' residues out of range")
            halves.append(x)
        return halves[0], halves[1]

    def _batch(self, op: str, check: torch.Tensor) -> tuple[PadBlock, torch.Tensor]:
        """One batch with the rows `check` [c, d] at secret slots -> (block, their products [c, o])."""
        d = self.shapes[op].d
        c = check.shape[0]
        rows = _csprng_rows(N, d)  # [N, d]: pads, check slots overwritten, the rest discarded
        perm = _secret_permutation(N)
        check_slots, pad_slots = perm[:c], perm[c : c + self.rows]
        rows[check_slots] = check
        try:
            products = self._request(op, rows.t().contiguous())  # [o, N]
        except BaseException:
            self.stats["discarded"] += 1
            rows.zero_()
            raise
        self.stats["batches"] += 1
        block = PadBlock(op, rows[pad_slots].contiguous(), products[:, pad_slots].t().contiguous())
        got = products[:, check_slots].t().contiguous()
        rows.zero_()
        products.zero_()
        return block, got

    def _discard(self, *blocks: PadBlock) -> None:
        self.stats["discarded"] += len(blocks)
        for blk in blocks:
            blk.r.zero_()
            blk.rw.zero_()

    def _bootstrap(self, op: str) -> None:
        probes = _csprng_rows(self.check_rows, self.shapes[op].d)
        first, got1 = self._batch(op, probes)
        try:
            second, got2 = self._batch(op, probes)
        except BaseException:
            self._discard(first)
            raise
        if not torch.equal(got1, got2):
            self._discard(first, second)
            raise PadIntegrityError(f"he pads for op {op}: two batches disagree on the same rows; both dropped")
        self._bank[op] = (probes, got1)
        self._ready.setdefault(op, []).append(second)
        self._ready[op].append(first)

    def _verified(self, op: str) -> PadBlock:
        ready = self._ready.get(op)
        if ready:
            return ready.pop()
        if op not in self._bank:
            self._bootstrap(op)
            return self._ready[op].pop()
        rows, want = self._bank[op]
        order = _secret_permutation(rows.shape[0])
        block, got = self._batch(op, rows[order])
        if not torch.equal(got, want[order]):
            self._discard(block)
            raise PadIntegrityError(f"he pads for op {op}: check rows do not match their known products; batch dropped")
        return block

    def produce(self, ops):
        fingerprint = getattr(self.cloud, "fingerprint", None)
        if fingerprint != self._bank_fingerprint:  # other weights: the references mean nothing now
            self._bank.clear()
            for blocks in self._ready.values():
                self._discard(*blocks)
            self._ready.clear()
            self._bank_fingerprint = fingerprint
        blocks: list[PadBlock] = []
        try:
            for op in ops:
                blocks.append(self._verified(op))
        except BaseException:
            self._discard(*blocks)  # all or nothing: the pool retries the whole call
            raise
        return blocks

    def close(self):
        for blocks in self._ready.values():
            self._discard(*blocks)
        self._ready.clear()
        close = getattr(self.cloud, "close", None)
        if close is not None:
            close()
