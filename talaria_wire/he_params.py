"""RLWE parameters of the `he` pad source, checked against the HomomorphicEncryption.org standard.

Source of the table: M. Albrecht, M. Chase, H. Chen, J. Ding, S. Goldwasser, S. Gorbunov, S. Halevi,
J. Hoffstein, K. Laine, K. Lauter, S. Lokam, D. Micciancio, D. Moody, T. Morrison, A. Sahai,
V. Vaikuntanathan, "Homomorphic Encryption Security Standard", HomomorphicEncryption.org,
Toronto, November 2018, Table 1 (error standard deviation sigma ~ 3.2): the largest log2 q per
ring degree N for 128-bit classical security, one column per secret distribution.

Chosen: N = 8192, q = product of ring.PRIMES (seven primes < 2^31, = 1 mod 2^14), log2 q = 216.997,
with a ternary secret: inside the 128-bit bound 218 for that N. t = p0 p1 divides q, so the plaintext
ring of the ciphertexts is the online ring Z_t of the `pad` scheme, and Delta = q / t.
"""

from __future__ import annotations

import math
import os

import torch

from talaria_wire.ring import DELTA_PRIMES, PRIMES, RING_PRIMES, SEED_BYTES, uniform_mod

# Table 1, 128-bit classical security: N -> max log2 q, per secret distribution (sigma ~ 3.2)
HE_STANDARD_128 = {
    "uniform": {1024: 29, 2048: 56, 4096: 111, 8192: 220, 16384: 440, 32768: 880},
    "error": {1024: 29, 2048: 56, 4096: 111, 8192: 220, 16384: 440, 32768: 883},
    "ternary": {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
}
SIGMA = 3.2  # the table's error standard deviation, and ours
TAIL = 19  # discrete Gaussian samples are cut at |e| <= 19 (6 sigma = 19.2): the noise analysis's bound

N = 8192  # ring degree: R_q = Z_q[X] / (X^N + 1); every prime is 1 mod 2N
SECRET = "ternary"
Q = math.prod(PRIMES)
T = math.prod(RING_PRIMES)
DELTA = math.prod(DELTA_PRIMES)
assert Q == T * DELTA


def log2_q(primes=PRIMES) -> float:
    return sum(math.log2(p) for p in primes)


def check_security(n: int, log_q: float, secret: str = SECRET) -> None:
    """Raise ValueError unless (n, log2 q) lies within the standard's 128-bit bound for `secret`."""
    table = HE_STANDARD_128.get(secret)
    if table is None:
        raise ValueError(f"unknown secret distribution {secret!r}; expected one of {sorted(HE_STANDARD_128)}")
    if n not in table:
        raise ValueError(f"N = {n} is not in the HE standard's table (N in {sorted(table)})")
    if log_q > table[n]:
        raise ValueError(f"log2 q = {log_q:.3f} exceeds the 128-bit bound {table[n]} for N = {n} ({secret} secret)")


check_security(N, log2_q())  # the module refuses to load with parameters outside the standard


# -- distributions both parties draw from ---------------------------------------------------------
# Randomness that protects data or weights comes from the OS CSPRNG (os.urandom) only; the uniform
# halves a_j come from a SHAKE-256 seed (ring.uniform_mod) so only the seed travels.


def _urandom_int64(count: int) -> torch.Tensor:
    return torch.frombuffer(bytearray(os.urandom(8 * count)), dtype=torch.int64) if count else torch.zeros(0, dtype=torch.int64)


def ternary(count: int) -> torch.Tensor:
    """`count` values uniform in {-1, 0, 1} (int64) from the OS CSPRNG (rejection of 255 from bytes)."""
    out = torch.empty(0, dtype=torch.int64)
    while out.numel() < count:
        raw = torch.frombuffer(bytearray(os.urandom(count + count // 64 + 16)), dtype=torch.uint8).to(torch.int64)
        out = torch.cat([out, raw[raw < 255] % 3 - 1])
    return out[:count].clone()


def _gaussian_cdt() -> torch.Tensor:
    """Thresholds of the cumulative distribution of the discrete Gaussian on [-TAIL, TAIL], scaled to 2^63."""
    weights = [math.exp(-(k * k) / (2 * SIGMA * SIGMA)) for k in range(-TAIL, TAIL + 1)]
    total, acc, cdt = sum(weights), 0.0, []
    for w in weights[:-1]:
        acc += w
        cdt.append(min(int(acc / total * 2.0**63), 2**63 - 1))
    return torch.tensor(cdt, dtype=torch.int64)


_CDT = _gaussian_cdt()


def gaussian(count: int) -> torch.Tensor:
    """`count` discrete Gaussian samples (sigma = SIGMA), |e| <= TAIL by construction (inversion of
    the cut distribution's CDT with 63-bit uniform words from the OS CSPRNG; resolution 2^-63)."""
    words = _urandom_int64(count) & ((1 << 63) - 1)
    return torch.searchsorted(_CDT, words, right=True) - TAIL


def expand_uniform(seed: bytes, label: str, count: int, n: int = N, primes: tuple[int, ...] = PRIMES) -> torch.Tensor:
    """`count` uniform polynomials [count, P, N] of R_q in RNS form, expanded from `seed`. The `he`
    source reads them as NTT-domain values (a uniform polynomial's transform is uniform too), which
    saves each party one forward transform per ciphertext."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a seed has {SEED_BYTES} bytes, got {len(seed)}")
    per_prime = [uniform_mod(seed, f"he:{label}:{i}:{count}x{n}", count * n, p, 31).view(count, n) for i, p in enumerate(primes)]
    return torch.stack(per_prime, dim=1)


# -- the wire layout of POST /v1/he/{op} ------------------------------------------------------------
# request  safetensors  b [d, P, N] int32 (coefficient domain), seed uint8 [32] (the a_j, NTT domain,
#                       label "a"), pk_seed uint8 [32] (a_pk, label "pk"), pk_b [P, N] int32 (NTT domain);
#          metadata     cols "k0:k1" (optional: answer output columns k0 <= k < k1 only), batch (optional,
#                       32 hex digits: the cloud keeps the ciphertexts; a body with this batch and no
#                       tensors asks for more columns of them; 409 once they are no longer kept)
# response safetensors  a [o, P, N] int32 (NTT domain), b [o, P, N] int32 (coefficient domain)
# Residues are < 2^31 and travel as int32 (half the bytes of int64).
REQUEST_FIELDS = ("b", "seed", "pk_seed", "pk_b")
CT_BYTES = len(PRIMES) * N * 4  # one half of one ciphertext on the wire
MAX_ANSWER_BYTES = 256 << 20  # one response at most: wider ops are asked for in column ranges


def max_answer_cols(n: int = N) -> int:
    """Output columns one request may ask for (each answer is two halves of P residue rows)."""
    return MAX_ANSWER_BYTES // (2 * len(PRIMES) * n * 4)


def request_cap(d: int, n: int = N) -> int:
    """Largest body accepted for an op with d inputs: its d b-halves, the public key, header slack."""
    return d * len(PRIMES) * n * 4 + len(PRIMES) * n * 4 + 2 * SEED_BYTES + 4096
