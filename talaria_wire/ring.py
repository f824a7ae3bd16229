"""The exact integer ring of the `pad` scheme, Z_t, and the pad rows a seed stands for.

Why t = p0 * p1 with p0, p1 < 2^31 primes, both = 1 mod 2^14 (see shared/design/pads.md):
- online, every value on the wire is a residue mod t (int64, in [0, t)); t ~ 2^62 leaves room for
  fixed-point products |x_bar . w_bar| < t/2 with ~33 bits for x and 23 bits per weight;
- the `he` pad source encrypts pad rows under RLWE with modulus q = t * Delta, Delta a product of
  more primes of the same kind: t | q makes Delta * (m mod t) wrap exactly, and every prime splits
  X^N + 1 for N <= 8192 (p = 1 mod 2N), so the CVM's polynomial products run as NTTs;
- every prime is < 2^31, so a product of two residues fits an int64 (< 2^62): all modular
  arithmetic is plain vectorised int64 torch, on CPU and GPU alike.
The primes are the seven largest p < 2^31 with p = 1 mod 2^14; q = all seven: log2 q = 216.997,
inside the HomomorphicEncryption.org 128-bit bound for N = 8192 (218, ternary secret).

Shape legend: N rows, d = d_in (plus one bias coordinate where the op has a bias), o = d_out.
"""

from __future__ import annotations

import hashlib

import torch

PRIMES: tuple[int, ...] = (2147352577, 2147205121, 2147074049, 2146959361, 2146713601, 2146418689, 2146336769)
RING_PRIMES = PRIMES[:2]  # t = p0 * p1
DELTA_PRIMES = PRIMES[2:]  # the `he` source's Delta = q / t
T = RING_PRIMES[0] * RING_PRIMES[1]  # ~2^62
HALF_T = T // 2
W_BITS = 23  # |w_bar| <= 2^W_BITS for every fused weight (and folded bias) entry
FLOAT64_EXACT_BITS = 53  # integers below 2^53 are exact in float64, sums included


def limb_bits(d_in: int, value_bits: int = W_BITS) -> int:
    """Widest limb L such that a float64 dot product of d_in limbs (< 2^L) with integers of
    |.| <= 2^value_bits is exact: d_in * (2^L - 1) * 2^value_bits < 2^53."""
    bits = 0
    while d_in * ((1 << (bits + 1)) - 1) * (1 << value_bits) < (1 << FLOAT64_EXACT_BITS):
        bits += 1
    if bits == 0:
        raise ValueError(f"d_in={d_in} is too large for exact float64 limbs with {value_bits}-bit values")
    return bits


def mulmod(a: torch.Tensor, b: torch.Tensor | int, p: int) -> torch.Tensor:
    """a * b mod p for int64 residues in [0, p), p < 2^31 (the product stays below 2^62)."""
    return torch.remainder(a * b, p)


def crt_to_t(v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """(v mod p0, v mod p1) -> v mod t in [0, t), int64 (Garner: v = v0 + p0 * ((v1 - v0) / p0 mod p1))."""
    p0, p1 = RING_PRIMES
    k = mulmod(torch.remainder(v1 - v0, p1), pow(p0, -1, p1), p1)  # [0, p1)
    return v0 + p0 * k  # < p0 + p0 (p1 - 1) = t


def lift(v: torch.Tensor) -> torch.Tensor:
    """Residues in [0, t) -> the signed integers in (-t/2, t/2] they stand for."""
    return torch.where(v > HALF_T, v - T, v)


def lift_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """lift((a + b) mod t) for residues a, b in [0, t), without a division: s = a + b - t lies in
    [-t, t - 1); add t below -t/2, subtract t above t/2 (a + b < 2^63: no int64 overflow)."""
    s = a + b
    s -= T
    return torch.where(s <= HALF_T - T, s + T, torch.where(s > HALF_T, s - T, s))


def in_ring(v: torch.Tensor) -> bool:
    return v.dtype == torch.int64 and bool(((v >= 0) & (v < T)).all())


# -- pad rows from a seed ----------------------------------------------------------------------

SEED_BYTES = 32


def _xof(seed: bytes, label: str, nbytes: int) -> bytes:
    return hashlib.shake_256(b"talaria-pad-v1:" + label.encode() + b":" + seed).digest(nbytes)


def uniform_mod(seed: bytes, label: str, count: int, modulus: int, bits: int) -> torch.Tensor:
    """`count` int64 values uniform in [0, modulus), expanded deterministically from `seed` with
    SHAKE-256 (rejection sampling of `bits`-bit words, 2^bits >= modulus): both parties that
    hold the seed get the same values, anyone without it sees uniform ones."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a pad seed has {SEED_BYTES} bytes, got {len(seed)}")
    mask = (1 << bits) - 1
    width, dtype = (4, torch.int32) if bits <= 32 else (8, torch.int64)  # 31-bit words: half the XOF output
    want = count + 64 + count // 256  # the rejection rate is < 0.4% for every modulus used here
    while True:
        words = torch.frombuffer(bytearray(_xof(seed, label, width * want)), dtype=dtype).to(torch.int64) & mask
        kept = words[words < modulus]
        if kept.numel() >= count:
            return kept[:count].clone()
        want *= 2  # a longer digest extends the same stream: the prefix is unchanged


def pad_rows(seed: bytes, op: str, rows: int, cols: int) -> torch.Tensor:
    """The pad r [rows, cols] in Z_t that `seed` stands for (the `dealer` source's pad rows)."""
    return uniform_mod(seed, f"pad:{op}:{rows}x{cols}", rows * cols, T, 62).view(rows, cols)
