"""The `pad` scheme: one-time pads in the exact ring Z_t (talaria_wire/ring.py), on a `pad` cloud.

Per linear call y = x W + b, x [N, d_in] (shared/design/pads.md):

    CVM:    x_bar_i = round(x_i 2^f_i), plus the constant coordinate 2^(f_i + k) when b is folded in
    CVM:    u = x_bar - r  (mod t)            r: a fresh uniform pad row from the pool, used once
    cloud:  v = u W_bar    (mod t)            W_bar = round([W; b / 2^k] 2^g_j), g_j and k public
    CVM:    x_bar W_bar = lift(v + r W_bar mod t),   y_ij = x_bar_i W_bar_j 2^(-f_i - g_j)

Exactness: f_i is the largest exponent with ||x_bar_i|| <= 2^(60 - w_norm_bits), where the
manifest's w_norm_bits bounds every column norm ||W_bar_j||, so |x_bar_i . W_bar_j| <= 2^60 < t/2
(Cauchy-Schwarz) and the lift recovers the integer product exactly; the only errors are the two
roundings, x_bar to ~2^-33 of the row norm and W_bar to 2^-23 of each column's largest entry
(measured against float32 GEMM error on real activations: results/precision).

What the compute cloud sees: u, uniform in Z_t and independent of x, because r is uniform and
used once (perfect hiding, like a one-time pad); f_i stays in the CVM. What still leaks: sizes
(rows per call, hence sequence lengths and batch sizes), timing, which ops are called, how many
tokens are generated. The pad products r W_bar come from a pad source (pads/): a `dealer` cloud
that must not collude with the compute cloud, or `he`, the compute cloud itself under RLWE.
A missing pad is an error (pads/pool.py), never a fallback to a weaker scheme.

Shape legend: N rows in the call, d = d_in (+1 with a folded bias), o = d_out.
"""

from __future__ import annotations

import math

import torch

from talaria_proxy.pads.pool import PadPool
from talaria_proxy.schemes.base import COMPUTE, MaskScheme
from talaria_wire import Manifest
from talaria_wire.ring import HALF_T, T, lift_sum

PRODUCT_BITS = math.floor(math.log2(HALF_T))  # 60: every |x_bar . w_bar| stays <= 2^60 < t/2


def encode_rows(x: torch.Tensor, w_norm_bits: int, bias: bool, bias_bits: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d_in] float -> (x_bar [N, d] int64 signed, f [N] int64) with ||x_bar_i|| <= 2^(60 - w_norm_bits);
    with a folded bias the last coordinate is 2^bias_bits (the cloud's bias row holds b / 2^bias_bits)."""
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("the pad scheme cannot encode NaN or Inf activations")
    if bias:
        x = torch.cat([x, torch.full((x.shape[0], 1), 2.0**bias_bits, dtype=torch.float64)], dim=1)  # the bias coordinate
    budget = PRODUCT_BITS - w_norm_bits  # log2 of the largest allowed ||x_bar_i||
    # ||round(x 2^f)|| <= 2^f ||x|| + sqrt(d)/2: keep 2^f ||x|| <= 2^(budget-1) and the rounding below 2^(budget-1)
    if math.sqrt(x.shape[1]) / 2 > 2.0 ** (budget - 1):
        raise ValueError(f"op too wide for the ring: d={x.shape[1]}, w_norm_bits={w_norm_bits}")
    norm = x.norm(dim=1)  # [N]
    f = torch.where(norm > 0, torch.floor((budget - 1) - torch.log2(norm.clamp_min(1e-300))), torch.zeros_like(norm))
    f = f.clamp(-1000, 1000)
    x_bar = torch.round(torch.ldexp(x, f[:, None])).to(torch.int64)  # exact: |.| <= 2^(budget-1) < 2^53
    return x_bar, f.to(torch.int64)


def decode_rows(prod: torch.Tensor, f: torch.Tensor, g: torch.Tensor, g_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Exact integer products x_bar W_bar [N, o] -> y [N, o] float32 = prod 2^(-f_i - g_j).
    g_scale: 2^(-g) [o] float64 when the caller keeps it (two exact power-of-two scalings instead of
    a power per entry; the same values as long as nothing leaves float64's normal range)."""
    if g_scale is None:
        return torch.ldexp(prod.to(torch.float64), -(f[:, None] + g[None, :]).to(torch.float64)).float()
    f_scale = torch.ldexp(torch.ones(f.shape, dtype=torch.float64), -f.to(torch.float64))
    return (prod.to(torch.float64) * g_scale).mul_(f_scale[:, None]).float()


class PadScheme(MaskScheme):
    name = "pad"
    cloud_scheme = "pad"

    def __init__(self, manifest: Manifest, pool: PadPool):
        super().__init__(manifest)
        if manifest.ring is None or manifest.ring.modulus != T:
            raise ValueError(f"the cloud's ring {manifest.ring} is not this proxy's Z_t (t = {T})")
        self.pool = pool
        self._ops = {op.name: op for op in manifest.ops}
        self._col_exp: dict[str, torch.Tensor] = {}  # g [o] int64
        self._col_scale: dict[str, torch.Tensor] = {}  # 2^(-g) [o] float64

    def prepare(self, op, public):
        g = public["col_exp"]
        if g.dtype != torch.int64 or g.shape != (self._ops[op].d_out,):
            raise ValueError(f"op {op}: the cloud's col_exp is {g.dtype} {list(g.shape)}, expected int64 [{self._ops[op].d_out}]")
        self._col_exp[op] = g
        self._col_scale[op] = torch.ldexp(torch.ones(g.shape, dtype=torch.float64), -g.to(torch.float64))

    def mask(self, op, x):
        spec = self._ops[op]
        x_bar, f = encode_rows(x, spec.w_norm_bits, spec.bias, spec.bias_bits)  # [N, d]
        r, rw = self.pool.take(op, x.shape[0])  # [N, d], [N, o]: handed out once, then dropped by the pool
        u = torch.remainder(x_bar - r, T)  # |x_bar| < 2^33, r < t: no int64 overflow
        del r, x_bar
        return {COMPUTE: u}, (f, rw)

    def finish(self, op, answers, secret, share):
        f, rw = secret
        v = answers[COMPUTE]
        if v.dtype != torch.int64 or v.shape != rw.shape:
            raise ValueError(f"op {op}: the cloud answered {v.dtype} {list(v.shape)}, expected int64 {list(rw.shape)}")
        prod = lift_sum(v, rw)  # (x_bar - r) W_bar + r W_bar = x_bar W_bar, exactly
        return decode_rows(prod, f, self._col_exp[op], self._col_scale[op])

    def close(self):
        self.pool.close()
