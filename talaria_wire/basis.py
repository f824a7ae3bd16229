"""The public ReMO basis M_pub, derived from a seed that both sides know.

M_pub has m orthonormal rows in R^d. Orthonormal rows keep the recovery well conditioned; they
change nothing about what the cloud can learn, since it knows span(M_pub) either way.
"""

from __future__ import annotations

import hashlib

import torch


def _op_seed(seed: int, op_name: str) -> int:
    digest = hashlib.sha256(f"talaria-remo-basis:{seed}:{op_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def public_basis(seed: int, op_name: str, rank: int, dim: int) -> torch.Tensor:
    """M_pub: [rank, dim] float64 with orthonormal rows, identical on every machine for (seed, op)."""
    if not 0 < rank < dim:
        raise ValueError(f"ReMO rank must satisfy 0 < m < d; got m={rank}, d={dim} for {op_name}")
    gen = torch.Generator(device="cpu").manual_seed(_op_seed(seed, op_name))
    gauss = torch.randn(dim, rank, generator=gen, dtype=torch.float64)  # [d, m]
    q, _ = torch.linalg.qr(gauss)  # q: [d, m], orthonormal columns
    return q.T.contiguous()  # [m, d]
