"""Masking schemes: what the CVM does to x before the cloud sees it, and how it undoes it on y.

A scheme turns x [N, d_in] (float32 plaintext) into x~ in the wire dtype plus a secret it keeps,
and turns the cloud's answer back into y = x W + b. The decode loop only calls `mask`,
`completion` and `finish`, so a new scheme (LWE-style, two-cloud shares) plugs in via `SCHEMES`.

Two kinds of answer (the manifest's `reply`):
  full       y~ = x~ W + b; `unmask` removes the mask.
  projected  z = x_perp W + b with x_perp = x~ - (x~ B^T) B, B = M_pub. A mask inside span(B) is
             gone from z; the CVM adds its own share (x B^T) R_pub = x B^T B W, which depends on x
             alone and so is computed while the cloud computes z. Float32 is enough for it: it has
             the size of the signal, not of the mask. Only schemes whose masks lie in span(B)
             (`mask_in_basis_span`) can take projected answers.

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
    mask_in_basis_span = False  # True: every mask lies in span(M_pub), so projected answers drop it

    def __init__(self, manifest: Manifest):
        self.wire_dtype = WIRE_DTYPES[manifest.wire_dtype]
        self.projected = manifest.reply == "projected"
        if self.projected and not self.mask_in_basis_span:
            raise ValueError(f"masking scheme {self.name!r} cannot take the cloud's projected answers; "
                             "start the cloud with reply: full")
        self._share: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # op -> (B^T [d, m], R_pub [m, o]) float32

    def prepare(self, op: str, backend) -> None:
        """Fetch whatever public per-op state the scheme needs (called once per op at start)."""
        if self.projected:
            self._keep_share(op, *backend.public_tensors(op))

    def _keep_share(self, op: str, basis: torch.Tensor, recovery: torch.Tensor) -> None:
        self._share[op] = (basis.float().T.contiguous(), recovery.float())

    def prefetch(self, op: str, rows: int) -> None:
        """Prepare the random part of the next call's mask (called while the cloud computes)."""

    def completion(self, op: str, x: torch.Tensor) -> torch.Tensor | None:
        """The CVM's share of a projected answer, (x B^T) R_pub [N, o] float32 (None for full answers).
        Needs only x: the caller computes it while the cloud works."""
        if not self.projected:
            return None
        basis_t, recovery = self._share[op]
        return (x.float() @ basis_t) @ recovery

    def finish(self, op: str, answer: torch.Tensor, secret: Any, share: torch.Tensor | None) -> torch.Tensor:
        """The cloud's answer -> y = x W + b, float32 [N, o]."""
        if self.projected:
            return share.add_(answer) if answer.dtype == torch.float32 else answer.float().add_(share)
        return self.unmask(op, answer, secret)

    @abstractmethod
    def mask(self, op: str, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """x: [N, d] -> (x~ [N, d] in the wire dtype, secret kept by the CVM)."""

    @abstractmethod
    def unmask(self, op: str, y_masked: torch.Tensor, secret: Any) -> torch.Tensor:
        """y~: [N, o] -> y: [N, o] float32."""


class NoMask(MaskScheme):
    """The unprotected split: the cloud sees x itself. Only for measuring what masking buys."""

    name = "none"
    mask_in_basis_span = True  # the zero mask

    def mask(self, op, x):
        return x.to(self.wire_dtype), None

    def unmask(self, op, y_masked, secret):
        return y_masked.float()


class RemoMask(MaskScheme):
    """ReMO (arXiv 2603.00196): x~ = x + M_pvt M_pub, recovered as y = y~ - M_pvt R_pub.

    M_pub [m, d] is public (seeded, orthonormal rows) and R_pub = M_pub W [m, o] comes from the
    cloud; M_pvt [N, m] is fresh for every call and never leaves the CVM. Each row's mask is
    scaled to `mask_scale` times that row's norm: M_pvt = s * G with G ~ N(0, 1), so the
    direction G M_pub can be drawn ahead (`prefetch`, while the cloud computes the previous call)
    and only the scaling x + s * (G M_pub) stays on the critical path; each draw is used once.
    Cost per row: m*d + m*o multiply-adds instead of d*o. The arithmetic runs in the wire dtype
    (float64): the mask cancels exactly only when the rounding error of (x + mask) W stays far
    below the signal x W.
    """

    name = "remo"
    mask_in_basis_span = True

    def __init__(self, manifest: Manifest, mask_scale: float = 10.0, seed: int | None = None):
        super().__init__(manifest)
        if mask_scale <= 0:
            raise ValueError("mask_scale must be > 0")
        self.mask_scale = mask_scale
        self.basis: dict[str, torch.Tensor] = {}  # M_pub: [m, d]
        self.recovery: dict[str, torch.Tensor] = {}  # R_pub: [m, o]
        # M_pvt must be unpredictable to the cloud: seed from the OS entropy pool unless a test pins it.
        self._gen = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        self._ahead: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # op -> (G [N, m], G M_pub [N, d])

    def prepare(self, op, backend):
        basis, recovery = backend.public_tensors(op)
        self.basis[op] = basis.to(self.wire_dtype)
        if self.projected:  # the mask never reaches the answer: only the float32 share is needed
            self._keep_share(op, basis, recovery)
        else:
            self.recovery[op] = recovery.to(self.wire_dtype)

    def _draw(self, op: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        basis = self.basis[op]  # [m, d]
        g = torch.randn(rows, basis.shape[0], generator=self._gen, dtype=self.wire_dtype)  # G: [N, m]
        return g, g @ basis

    def prefetch(self, op, rows):
        if op in self.basis and op not in self._ahead:
            self._ahead[op] = self._draw(op, rows)

    def mask(self, op, x):
        x = x.to(self.wire_dtype)
        rows, m = x.shape[0], self.basis[op].shape[0]
        ahead = self._ahead.pop(op, None)  # popped: a draw never masks two calls
        g, direction = ahead if ahead is not None and ahead[0].shape[0] == rows else self._draw(op, rows)
        row_scale = x.norm(dim=1, keepdim=True).clamp_min(1e-6) * (self.mask_scale / math.sqrt(m))  # s: [N, 1]
        x_masked = torch.addcmul(x, row_scale, direction)  # x~ = x + s G M_pub = x + M_pvt M_pub
        return x_masked, g * row_scale  # M_pvt [N, m]: the secret that full answers are unmasked with

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
