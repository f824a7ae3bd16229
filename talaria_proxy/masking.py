"""Masking schemes: what the CVM does to x before the cloud sees it, and how it undoes it on y.

A scheme turns x [N, d_in] (float32 plaintext) into x~ in the wire dtype plus a secret it keeps,
and turns the cloud's y~ = x~ W + b back into y = x W + b. The decode loop only ever calls
`mask` and `unmask`, so a new scheme (LWE-style, two-cloud shares) plugs in via `SCHEMES`.

Shape legend: N rows in the call, d = d_in, m = ReMO rank, o = d_out.
"""

from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
from typing import Any

import torch

from talaria_wire import Manifest
from talaria_wire.tensors import WIRE_DTYPES


class MaskScheme(ABC):
    name: str = ""

    def __init__(self, manifest: Manifest):
        self.wire_dtype = WIRE_DTYPES[manifest.wire_dtype]

    def prepare(self, op: str, backend) -> None:
        """Fetch whatever public per-op state the scheme needs (called once per op at start)."""

    @abstractmethod
    def mask(self, op: str, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """x: [N, d] -> (x~ [N, d] in the wire dtype, secret kept by the CVM)."""

    @abstractmethod
    def unmask(self, op: str, y_masked: torch.Tensor, secret: Any) -> torch.Tensor:
        """y~: [N, o] -> y: [N, o] float32."""


class NoMask(MaskScheme):
    """The unprotected split: the cloud sees x itself. Only for measuring what masking buys."""

    name = "none"

    def mask(self, op, x):
        return x.to(self.wire_dtype), None

    def unmask(self, op, y_masked, secret):
        return y_masked.float()


class RemoMask(MaskScheme):
    """ReMO (arXiv 2603.00196): x~ = x + M_pvt M_pub, recovered as y = y~ - M_pvt R_pub.

    M_pub [m, d] is public (seeded, orthonormal rows) and R_pub = M_pub W [m, o] comes from the
    cloud; M_pvt [N, m] is fresh for every call and never leaves the CVM. Each row's mask is
    scaled to `mask_scale` times that row's norm. Cost per row: m*d + m*o multiply-adds
    instead of d*o. The arithmetic runs in the wire dtype (float64): the mask cancels exactly
    only when the rounding error of (x + mask) W stays far below the signal x W.
    """

    name = "remo"

    def __init__(self, manifest: Manifest, mask_scale: float = 10.0, seed: int | None = None):
        super().__init__(manifest)
        if mask_scale <= 0:
            raise ValueError("mask_scale must be > 0")
        self.mask_scale = mask_scale
        self.basis: dict[str, torch.Tensor] = {}  # M_pub: [m, d]
        self.recovery: dict[str, torch.Tensor] = {}  # R_pub: [m, o]
        # M_pvt must be unpredictable to the cloud: seed from the OS entropy pool unless a test pins it.
        self._gen = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)

    def prepare(self, op, backend):
        basis, recovery = backend.public_tensors(op)
        self.basis[op] = basis.to(self.wire_dtype)
        self.recovery[op] = recovery.to(self.wire_dtype)

    def mask(self, op, x):
        basis = self.basis[op]  # [m, d]
        x = x.to(self.wire_dtype)
        m = basis.shape[0]
        row_scale = x.norm(dim=1, keepdim=True).clamp_min(1e-6) * (self.mask_scale / math.sqrt(m))  # [N, 1]
        coeff = torch.randn(x.shape[0], m, generator=self._gen, dtype=self.wire_dtype) * row_scale  # M_pvt: [N, m]
        return torch.addmm(x, coeff, basis), coeff  # x~ = x + M_pvt M_pub

    def unmask(self, op, y_masked, coeff):
        # (x + M_pvt M_pub) W + b - M_pvt (M_pub W) = x W + b
        return torch.addmm(y_masked, coeff, self.recovery[op], alpha=-1).float()


SCHEMES: dict[str, type[MaskScheme]] = {NoMask.name: NoMask, RemoMask.name: RemoMask}


def build_scheme(name: str, manifest: Manifest, **options) -> MaskScheme:
    try:
        cls = SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown masking scheme {name!r}; available: {', '.join(SCHEMES)}") from None
    return cls(manifest, **options) if cls is not NoMask else cls(manifest)
