"""`MaskedLinearClient`: the one door through which the model reaches a weight.

mask in the CVM -> send to the cloud -> (the CVM's share of a projected answer, while the cloud
computes) -> receive -> finish in the CVM, with counters that the benchmark and the batching test
read (calls, rows, bytes, and time split into CVM masking work vs. time spent on the cloud call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from talaria_proxy.linear_backend import LinearBackend
from talaria_proxy.masking import MaskScheme


@dataclass
class LinearStats:
    calls: int = 0
    rows: int = 0
    bytes_sent: int = 0  # tensor payload only (x~), excluding headers
    bytes_received: int = 0  # y~ payload
    mask_seconds: float = 0.0  # CVM time in mask, share and finish (the share overlaps the cloud)
    cloud_seconds: float = 0.0  # CVM time sending and waiting for answers (serialisation, transport, GEMM)
    overlap_seconds: float = 0.0  # the part of mask_seconds spent while a call was in flight

    def reset(self) -> None:
        self.__init__()


class MaskedLinearClient:
    def __init__(self, backend: LinearBackend, scheme: MaskScheme, ops: list[str]):
        self.backend = backend
        self.scheme = scheme
        for op in ops:
            scheme.prepare(op, backend)
        self._next_op = {op: ops[(i + 1) % len(ops)] for i, op in enumerate(ops)}  # execution order
        self.stats = LinearStats()

    def __call__(self, op: str, x: torch.Tensor) -> torch.Tensor:
        """y = x W (+ b) for op; x: [N, d_in] float32 -> [N, d_out] float32."""
        scheme = self.scheme
        t0 = time.perf_counter()
        x_masked, secret = scheme.mask(op, x)
        t1 = time.perf_counter()
        pending = self.backend.begin(op, x_masked)
        t2 = time.perf_counter()
        try:  # while the cloud computes: the CVM's share of the answer, the next call's mask
            share = scheme.completion(op, x)
            if (following := self._next_op.get(op)) is not None:
                scheme.prefetch(following, x.shape[0])
        except BaseException:
            pending.abandon()
            raise
        t3 = time.perf_counter()
        answer = pending.result()
        t4 = time.perf_counter()
        y = scheme.finish(op, answer, secret, share)
        t5 = time.perf_counter()
        s = self.stats
        s.calls += 1
        s.rows += x.shape[0]
        s.bytes_sent += x_masked.numel() * x_masked.element_size()
        s.bytes_received += answer.numel() * answer.element_size()
        s.mask_seconds += (t1 - t0) + (t3 - t2) + (t5 - t4)
        s.overlap_seconds += t3 - t2
        s.cloud_seconds += (t2 - t1) + (t4 - t3)
        return y
