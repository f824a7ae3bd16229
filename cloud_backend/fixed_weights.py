"""Fixed-point weights of the `pad` scheme: W_bar = round(W' * 2^g_j) per output column j.

W' = [W; b / 2^k] [d, o]: an op's bias is folded in as a last input row, so the CVM sends a
constant coordinate 2^k (scaled like the rest of its row) and the cloud's exact product includes
the bias. k (public, `bias_bits`) brings the bias row to the size of the weights: a bias larger
than its column's weights (Qwen2's q/k biases) would otherwise set that column's exponent and
cost the weights their bits. It is capped at ceil(log2 sqrt(d_in)), where the bias row's rounding
(2^(k - g_j - 1) in y) reaches the size of the weights' own (~||x|| 2^(-g_j) / sqrt(12)). Folding, rather than letting the CVM add b itself, keeps the bias on the weight side: the
CVM never learns any weight, and y = x W + b comes out of one ring product.

Exponents: g_j = floor(W_BITS - log2 max_i |W'_ij|), so |W_bar| <= 2^W_BITS (the ring kernel's
exact-limb bound), which keeps ~23 significant bits of every column's largest entry. g_j is public
(the CVM needs it to scale y back), and so is w_norm_bits = ceil(log2 max_j ||W_bar_j||), the
bound the CVM's exponents f_i are chosen against: ||x_bar_i|| <= 2^(60 - w_norm_bits) makes
|x_bar_i . W_bar_j| <= ||x_bar_i|| ||W_bar_j|| <= 2^60 < t/2 (Cauchy-Schwarz): the product never
wraps the ring, so lifting the residue gives the exact integer.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from talaria_wire.ring import W_BITS, limb_bits


@dataclass
class FixedPointOp:
    w_bar: torch.Tensor  # [d, o] float64 holding exact integers, |.| <= 2^W_BITS (bias = last row)
    col_exp: torch.Tensor  # [o] int64: g_j
    w_norm_bits: int  # ceil(log2 max_j ||W_bar_j||)
    bias: bool
    limb: int  # bits per limb of the exact float64 GEMMs for this d
    bias_bits: int = 0  # k: the CVM's constant coordinate is 2^k, the bias row holds b / 2^k

    @property
    def d(self) -> int:
        return self.w_bar.shape[0]


def fixed_point_op(weight: torch.Tensor, bias: torch.Tensor | None, device: str | torch.device = "cpu") -> FixedPointOp:
    """weight [d_in, o], bias [o] or None (any float dtype) -> the op's fixed-point form."""
    w = weight.detach().to("cpu", torch.float64)
    k = 0
    if bias is not None:
        b = bias.detach().to("cpu", torch.float64)
        ratio = (b.abs() / w.abs().amax(dim=0).clamp_min(1e-300)).max().item()  # largest |b_j| / max_i |W_ij|
        cap = math.ceil(0.5 * math.log2(w.shape[0]))
        k = min(cap, max(0, math.ceil(math.log2(ratio)))) if ratio > 0 else 0
        w = torch.cat([w, torch.ldexp(b, torch.tensor(-float(k), dtype=torch.float64))[None, :]])  # [d_in + 1, o]
    if not torch.isfinite(w).all():
        raise ValueError("weights contain NaN or Inf")
    col_max = w.abs().amax(dim=0)  # [o]
    exp = torch.where(col_max > 0, torch.floor(W_BITS - torch.log2(col_max.clamp_min(1e-300))), torch.zeros_like(col_max))
    exp = exp.to(torch.int64)
    w_bar = torch.round(torch.ldexp(w, exp.to(torch.float64)))  # [d, o]
    w_bar = w_bar.clamp(-(2.0**W_BITS), 2.0**W_BITS)  # log2 rounding at a power of two: stay inside
    norm = float(w_bar.norm(dim=0).max())
    norm_bits = max(1, math.ceil(math.log2(norm))) if norm > 0 else 1
    return FixedPointOp(w_bar.to(device).contiguous(), exp, norm_bits, bias is not None, limb_bits(w_bar.shape[0]), k)


def digest_update(h: "hashlib._Hash", name: str, op: FixedPointOp) -> None:
    """Add op to a fingerprint: compute cloud and dealer must hold the same W_bar and exponents."""
    h.update(name.encode())
    h.update(op.col_exp.numpy().tobytes())
    h.update(op.w_bar.cpu().flatten()[:: max(1, op.w_bar.numel() // 65536)].numpy().tobytes())
    h.update(f"{op.w_norm_bits}:{op.bias}:{op.bias_bits}".encode())
