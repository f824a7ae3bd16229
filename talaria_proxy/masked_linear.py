"""`MaskedLinearClient`: the one door through which the model reaches a weight.

mask in the CVM -> begin the call on every party -> (CVM work that overlaps the clouds: the share
of a projected answer, the next call's mask) -> every party's answer -> finish in the CVM, with
counters that the benchmark and the batching test read (calls, rows, bytes, and time split into
CVM masking work vs. time spent on the cloud calls).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from talaria_proxy.schemes.base import MaskScheme
from talaria_proxy.transports.base import LinearTransport, PendingCall


@dataclass
class LinearStats:
    calls: int = 0
    rows: int = 0
    bytes_sent: int = 0  # tensor payloads only, all parties, excluding headers
    bytes_received: int = 0  # answer payloads
    mask_seconds: float = 0.0  # CVM time in mask, share and finish (the share overlaps the cloud)
    cloud_seconds: float = 0.0  # CVM time sending and waiting for answers (serialisation, transport, GEMM)
    overlap_seconds: float = 0.0  # the part of mask_seconds spent while a call was in flight

    def reset(self) -> None:
        self.__init__()


class MaskedLinearClient:
    def __init__(self, parties: dict[str, LinearTransport], scheme: MaskScheme, ops: list[str], public):
        """parties: one transport per party the scheme names; public(op) -> the op's public tensors."""
        missing = set(scheme.parties) - set(parties)
        if missing:
            raise ValueError(f"scheme {scheme.name!r} needs parties {sorted(missing)}")
        self.parties = parties
        self.scheme = scheme
        for op in ops:
            scheme.prepare(op, public(op))
        self._next_op = {op: ops[(i + 1) % len(ops)] for i, op in enumerate(ops)}  # execution order
        self.stats = LinearStats()

    def __call__(self, op: str, x: torch.Tensor) -> torch.Tensor:
        """y = x W (+ b) for op; x: [N, d_in] float32 -> [N, d_out] float32."""
        scheme = self.scheme
        t0 = time.perf_counter()
        payloads, secret = scheme.mask(op, x)
        t1 = time.perf_counter()
        pending: dict[str, PendingCall] = {}
        try:
            for party, payload in payloads.items():  # every party is under way before any is awaited
                pending[party] = self.parties[party].begin(op, payload)
        except BaseException:
            for call in pending.values():
                call.abandon()
            raise
        t2 = time.perf_counter()
        try:  # while the clouds compute: the CVM's share of the answer, the next call's mask
            share = scheme.completion(op, x, secret)
            if (following := self._next_op.get(op)) is not None:
                scheme.prefetch(following, x.shape[0])
        except BaseException:
            for call in pending.values():
                call.abandon()
            raise
        t3 = time.perf_counter()
        answers: dict[str, torch.Tensor] = {}
        try:
            for party, call in pending.items():
                answers[party] = call.result()
        except BaseException:
            for party, call in pending.items():
                if party not in answers:
                    call.abandon()
            raise
        t4 = time.perf_counter()
        y = scheme.finish(op, answers, secret, share)
        t5 = time.perf_counter()
        s = self.stats
        s.calls += 1
        s.rows += x.shape[0]
        s.bytes_sent += sum(p.numel() * p.element_size() for p in payloads.values())
        s.bytes_received += sum(a.numel() * a.element_size() for a in answers.values())
        s.mask_seconds += (t1 - t0) + (t3 - t2) + (t5 - t4)
        s.overlap_seconds += t3 - t2
        s.cloud_seconds += (t2 - t1) + (t4 - t3)
        return y
