"""The cloud's ring kernel: v = u W_bar mod t, exactly, for u [N, d] residues in [0, t).

u has 62 bits, W_bar 23 (+ sign), so a product has 85 and a row of d of them ~98: neither float64
(53 exact bits) nor int64 holds it. Split u into limbs of L bits, u = sum_k u_k 2^(L k), with L
from `ring.limb_bits(d)` so that every limb GEMM P_k = u_k W_bar is exact in float64
(d (2^L - 1) 2^23 < 2^53); stack the limbs as rows so the weights are read once per call. Then
per prime p of t = p0 p1:  v mod p = sum_k (P_k mod p)(2^(L k) mod p) mod p  (int64: both factors
< 2^31), and the Chinese remainder theorem gives v mod t.

Cost against a float32 GEMM of the same shape: ceil(62 / L) limb rows per row (4 for the 0.5B
model's d <= 4865) in float64, i.e. ~8x the multiply-adds in bytes terms at prefill and ~2x the
weight traffic at decode, where a GEMM is memory-bound (measured in the bench's micro section).
On CUDA the same code runs in float64 (an H100/H200 has float64 tensor cores).
"""

from __future__ import annotations

import torch

from talaria_wire.ring import RING_PRIMES, crt_to_t, mulmod

RESIDUE_BITS = 62  # t < 2^62


def ring_matmul(u: torch.Tensor, w_bar: torch.Tensor, limb: int) -> torch.Tensor:
    """u [N, d] int64 in [0, t), w_bar [d, o] float64 exact integers |.| <= 2^23 -> u W_bar mod t [N, o] int64."""
    n = u.shape[0]
    limbs = -(-RESIDUE_BITS // limb)
    mask = (1 << limb) - 1
    u = u.to(w_bar.device)
    stacked = torch.cat([((u >> (limb * k)) & mask).to(torch.float64) for k in range(limbs)])  # [limbs N, d]
    prods = (stacked @ w_bar).to(torch.int64)  # [limbs N, o]; exact: |.| < 2^53
    residues = []
    for p in RING_PRIMES:
        acc = torch.remainder(prods[:n], p)
        for k in range(1, limbs):
            acc = torch.remainder(acc + mulmod(torch.remainder(prods[k * n : (k + 1) * n], p), pow(2, limb * k, p), p), p)
        residues.append(acc)
    return crt_to_t(*residues).cpu()
