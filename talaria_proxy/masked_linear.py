"""`MaskedLinearClient`: the one door through which the model reaches a weight.

mask in the CVM -> linear on the cloud -> unmask in the CVM, with counters that the benchmark and
the batching test read (calls, rows, bytes, and time split into masking vs. cloud round trip).
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
    mask_seconds: float = 0.0  # CVM time in mask + unmask
    cloud_seconds: float = 0.0  # round trip: serialisation, transport, cloud GEMM

    def reset(self) -> None:
        self.__init__()


class MaskedLinearClient:
    def __init__(self, backend: LinearBackend, scheme: MaskScheme, ops: list[str]):
        self.backend = backend
        self.scheme = scheme
        for op in ops:
            scheme.prepare(op, backend)
        self.stats = LinearStats()

    def __call__(self, op: str, x: torch.Tensor) -> torch.Tensor:
        """y = x W (+ b) for op; x: [N, d_in] float32 -> [N, d_out] float32."""
        t0 = time.perf_counter()
        x_masked, secret = self.scheme.mask(op, x)
        t1 = time.perf_counter()
        y_masked = self.backend.linear(op, x_masked)
        t2 = time.perf_counter()
        y = self.scheme.unmask(op, y_masked, secret)
        t3 = time.perf_counter()
        s = self.stats
        s.calls += 1
        s.rows += x.shape[0]
        s.bytes_sent += x_masked.numel() * x_masked.element_size()
        s.bytes_received += y_masked.numel() * y_masked.element_size()
        s.mask_seconds += (t1 - t0) + (t3 - t2)
        s.cloud_seconds += t2 - t1
        return y
