"""ReMO and the unmasked split, on a `remo` cloud (cloud_backend/remo_kernel.py).

Two kinds of answer (the manifest's `reply`):
  full       y~ = x~ W + b; `unmask` removes the mask.
  projected  z = x_perp W + b with x_perp = x~ - (x~ B^T) B, B = M_pub. A mask inside span(B) is
             gone from z; the CVM adds its own share (x B^T) R_pub = x B^T B W, which depends on x
             alone and so is computed while the cloud computes z. Float32 is enough for it: it has
             the size of the signal, not of the mask.
What the cloud learns (measured, README "Privacy audit"): the mask lies in span(M_pub), which the
cloud knows, so a cloud that knows its model recovers the text. ReMO is the paper's fast scheme,
not confidentiality; `pad` (pad.py) is.

Shape legend: N rows in the call, d = d_in, m = ReMO rank, o = d_out.
"""

from __future__ import annotations

import math
import secrets

import torch

from talaria_proxy.schemes.base import COMPUTE, MaskScheme
from talaria_wire import Manifest
from talaria_wire.tensors import WIRE_DTYPES


class _RemoCloudScheme(MaskScheme):
    """Shared by none and remo: the wire dtype, and the CVM's share of a projected answer."""

    def __init__(self, manifest: Manifest):
        super().__init__(manifest)
        self.wire_dtype = WIRE_DTYPES[manifest.wire_dtype]
        self.projected = manifest.reply == "projected"
        self._share: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # op -> (B^T [d, m], R_pub [m, o]) float32

    def prepare(self, op, public):
        if self.projected:
            self._share[op] = (public["basis"].float().T.contiguous(), public["recovery"].float())

    def completion(self, op, x, secret):
        """The CVM's share of a projected answer, (x B^T) R_pub [N, o] float32 (None for full answers)."""
        if not self.projected:
            return None
        basis_t, recovery = self._share[op]
        return (x.float() @ basis_t) @ recovery

    def finish(self, op, answers, secret, share):
        answer = answers[COMPUTE]
        if self.projected:
            return share.add_(answer) if answer.dtype == torch.float32 else answer.float().add_(share)
        return self.unmask(op, answer, secret)

    def unmask(self, op: str, y_masked: torch.Tensor, secret) -> torch.Tensor:
        return y_masked.float()


class NoMask(_RemoCloudScheme):
    """The unprotected split: the cloud sees x itself. Only for measuring what masking buys."""

    name = "none"

    def mask(self, op, x):
        return {COMPUTE: x.to(self.wire_dtype)}, None


class RemoMask(_RemoCloudScheme):
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

    def prepare(self, op, public):
        super().prepare(op, public)  # the float32 share, for projected answers
        self.basis[op] = public["basis"].to(self.wire_dtype)
        if not self.projected:
            self.recovery[op] = public["recovery"].to(self.wire_dtype)

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
        return {COMPUTE: x_masked}, g * row_scale  # M_pvt [N, m]: the secret that full answers are unmasked with

    def unmask(self, op, y_masked, coeff):
        # (x + M_pvt M_pub) W + b - M_pvt (M_pub W) = x W + b
        return torch.addmm(y_masked, coeff, self.recovery[op], alpha=-1).float()
