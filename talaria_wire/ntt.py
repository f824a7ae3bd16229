"""Negacyclic number-theoretic transform over Z_p[X] / (X^N + 1), vectorised in torch int64.

Both parties of the `he` pad source multiply polynomials in R_q = Z_q[X]/(X^N + 1), q = the product
of ring.PRIMES, in RNS form (one residue polynomial per prime): the CVM for encryption, decryption and
its public key, the cloud for re-randomising answers. Every prime is 1 mod 2N, so Z_p holds a
primitive 2N-th root of unity psi (psi^N = -1), and
    a(X) -> (a(psi^(2i+1)))_i           (evaluation at the N roots of X^N + 1)
turns the negacyclic product into a pointwise one. The transform is the iterative Cooley-Tukey
butterfly with the powers of psi in bit-reversed order (forward, output in bit-reversed order) and
the Gentleman-Sande butterfly for the inverse (input in bit-reversed order), so neither direction
needs a permutation; slot i holds a(psi^(2 brv(i) + 1)) (brv: bit reversal on log2 N bits).

Tensors: [..., P, N] int64 residues in [0, p), P = len(primes) on the second-to-last axis, any
leading batch axes. Every product of two residues is < 2^62: plain int64 arithmetic, CPU or GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from talaria_wire.ring import PRIMES


def _bit_reverse(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


def primitive_root_2n(p: int, n: int) -> int:
    """The smallest-generator primitive 2n-th root of unity mod p (needs p = 1 mod 2n)."""
    if (p - 1) % (2 * n):
        raise ValueError(f"{p} is not 1 mod 2N = {2 * n}: X^N + 1 does not split")
    for g in range(2, p):
        psi = pow(g, (p - 1) // (2 * n), p)
        if pow(psi, n, p) == p - 1:  # order exactly 2n (n is a power of two)
            return psi
    raise ValueError(f"no primitive {2 * n}-th root mod {p}")


@dataclass(frozen=True)
class NttTables:
    n: int
    primes: tuple[int, ...]
    p: torch.Tensor  # [P, 1] int64
    psi_rev: torch.Tensor  # [P, N]: psi^brv(i)
    psi_inv_rev: torch.Tensor  # [P, N]: psi^-brv(i)
    n_inv: torch.Tensor  # [P, 1]: N^-1 mod p

    def to(self, device) -> "NttTables":
        return NttTables(self.n, self.primes, *(x.to(device) for x in (self.p, self.psi_rev, self.psi_inv_rev, self.n_inv)))


@functools.lru_cache(maxsize=16)
def _tables_cpu(n: int, primes: tuple[int, ...]) -> NttTables:
    if n < 2 or n & (n - 1):
        raise ValueError(f"N must be a power of two >= 2, got {n}")
    bits = n.bit_length() - 1
    rev = [_bit_reverse(i, bits) for i in range(n)]
    fwd, inv = [], []
    for p in primes:
        psi = primitive_root_2n(p, n)
        powers = [1] * n
        for i in range(1, n):
            powers[i] = powers[i - 1] * psi % p
        psi_inv = pow(psi, -1, p)
        inv_powers = [1] * n
        for i in range(1, n):
            inv_powers[i] = inv_powers[i - 1] * psi_inv % p
        fwd.append([powers[r] for r in rev])
        inv.append([inv_powers[r] for r in rev])
    as_t = functools.partial(torch.tensor, dtype=torch.int64)
    return NttTables(n, primes, as_t(primes)[:, None], as_t(fwd), as_t(inv), as_t([pow(n, -1, p) for p in primes])[:, None])


_device_cache: dict[tuple, NttTables] = {}


def tables(n: int, primes: tuple[int, ...] = PRIMES, device: str | torch.device = "cpu") -> NttTables:
    key = (n, primes, str(device))
    if key not in _device_cache:
        _device_cache[key] = _tables_cpu(n, primes).to(device)
    return _device_cache[key]


def _check(a: torch.Tensor, tab: NttTables) -> None:
    if a.dtype != torch.int64 or a.dim() < 2 or a.shape[-2:] != (len(tab.primes), tab.n):
        raise ValueError(f"expected int64 [..., {len(tab.primes)}, {tab.n}], got {a.dtype} {list(a.shape)}")


def ntt(a: torch.Tensor, tab: NttTables) -> torch.Tensor:
    """Coefficients [..., P, N] -> evaluations (bit-reversed order), a new tensor."""
    _check(a, tab)
    lead, n = a.shape[:-1], tab.n
    p = tab.p[:, :, None]  # [P, 1, 1]
    x = a
    m, t = 1, n
    while m < n:
        t //= 2
        x = x.reshape(*lead, m, 2, t)
        s = tab.psi_rev[:, m : 2 * m, None]  # [P, m, 1]
        u, v = x[..., 0, :], torch.fmod(x[..., 1, :] * s, p)
        # butterfly: (u, v) -> (u + psi v, u - psi v); fmod of non-negative values (faster than remainder)
        x = torch.stack((torch.fmod(u + v, p), torch.fmod(u - v + p, p)), dim=-2)
        m *= 2
    return x.reshape(a.shape)


def intt(a: torch.Tensor, tab: NttTables) -> torch.Tensor:
    """Evaluations (bit-reversed order) [..., P, N] -> coefficients, a new tensor."""
    _check(a, tab)
    lead, n = a.shape[:-1], tab.n
    p = tab.p[:, :, None]
    x = a
    m, t = n, 1
    while m > 1:
        h = m // 2
        x = x.reshape(*lead, h, 2, t)
        s = tab.psi_inv_rev[:, h : 2 * h, None]  # [P, h, 1]
        u, v = x[..., 0, :], x[..., 1, :]
        # butterfly: (u, v) -> (u + v, (u - v) psi^-1)
        x = torch.stack((torch.fmod(u + v, p), torch.fmod((u - v + p) * s, p)), dim=-2)
        t *= 2
        m = h
    return torch.fmod(x.reshape(a.shape) * tab.n_inv, tab.p)


def pointwise(a_hat: torch.Tensor, b_hat: torch.Tensor, tab: NttTables) -> torch.Tensor:
    return torch.fmod(a_hat * b_hat, tab.p)


def poly_mul(a: torch.Tensor, b: torch.Tensor, tab: NttTables) -> torch.Tensor:
    """Negacyclic product a b mod (X^N + 1, p) of coefficient tensors [..., P, N] (broadcasting)."""
    return intt(pointwise(ntt(a, tab), ntt(b, tab), tab), tab)


def reduce_signed(values: torch.Tensor, tab: NttTables) -> torch.Tensor:
    """Small signed integers [..., N] (noise, ternary secrets) -> residues [..., P, N] per prime."""
    return torch.remainder(values.to(torch.int64)[..., None, :], tab.p)
