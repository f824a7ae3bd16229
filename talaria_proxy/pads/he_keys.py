"""The CVM's half of the `he` pad source: RLWE keys, encryption of pad rows, exact decryption.

Ring R_q = Z_q[X]/(X^N + 1), N = 8192, q = t Delta (talaria_wire/he_params.py), every polynomial in
RNS form [P, N] (one residue row per prime). Secret s: ternary, drawn from the OS CSPRNG at every
proxy start, kept only as its transform s_hat in this process: never sent, never stored.

Coefficient packing: the pad values of N rows for one input coordinate j form the plaintext
m_j = sum_i r[i, j] X^i in R_t, and
    ct_j = (a_j, b_j),  a_j uniform from a seed (NTT domain),  b_j = -a_j s + e_j + Delta m_j  mod q
with e_j discrete Gaussian (sigma 3.2, |e| <= 19). Only the seed and the b_j travel.
Public key (for the cloud's re-randomisation only): a_pk from a seed, b_pk = -a_pk s + e_pk.

Decryption of an answer (A, B) with B + A s = Delta M + e (mod q), |e| < Delta / 2, without big
integers: v = B + A s in RNS; the Delta primes' residues give e = v mod Delta, centred, by CRT
    e = sum_i y_i (Delta / p_i) - k Delta,  y_i = v_i (Delta / p_i)^-1 mod p_i,  k = round(sum_i y_i / p_i)
(k from float64: the sum lies within |e| / Delta <= 2^-5 of an integer, float error ~2^-48), and
then for the two primes of t:  M mod p = (v_p - e mod p) Delta^-1 mod p;  M mod t by CRT.
Shape legend: d ciphertexts in a request (one per input coordinate), o answers (one per output
column), P primes, N coefficients (= pad rows of a batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from talaria_wire import ntt
from talaria_wire.he_params import DELTA, N, expand_uniform, gaussian, ternary
from talaria_wire.ring import DELTA_PRIMES, PRIMES, RING_PRIMES, SEED_BYTES, crt_to_t, lift

_P = torch.tensor(PRIMES, dtype=torch.int64)[:, None]  # [P, 1]
_DELTA_MOD = torch.tensor([DELTA % p for p in PRIMES], dtype=torch.int64)[:, None]  # 0 on the Delta primes
_N_RING = len(RING_PRIMES)
CHUNK = 4  # polynomials per vectorised step: temporaries of ~2 MB stay in cache (measured: 4.1 ms per
# answer against 5.7 ms at 16 and 22 ms with all 1024 answers of an op at once)


def _rns(values: torch.Tensor) -> torch.Tensor:
    """Integers [..., N] (signed, |.| < 2^62) -> residues [..., P, N]."""
    return torch.remainder(values[..., None, :], _P)


@dataclass
class HeKeys:
    """One proxy start's key pair. `s_hat` never leaves this object; `pk_seed` / `pk_b` are public."""

    n: int
    s_hat: torch.Tensor  # [P, N] NTT(s)
    pk_seed: bytes
    pk_b: torch.Tensor  # [P, N] NTT domain: -a_pk s + e_pk

    @classmethod
    def fresh(cls, n: int = N) -> "HeKeys":
        tab = ntt.tables(n)
        s = ternary(n)  # [N] in {-1, 0, 1}, OS CSPRNG
        s_hat = ntt.ntt(_rns(s), tab)
        pk_seed = os.urandom(SEED_BYTES)
        a_pk = expand_uniform(pk_seed, "pk", 1, n)[0]  # [P, N], NTT domain
        e_pk = ntt.ntt(_rns(gaussian(n)), tab)
        pk_b = torch.remainder(e_pk - ntt.pointwise(a_pk, s_hat, tab), _P)
        return cls(n, s_hat, pk_seed, pk_b)

    @property
    def tab(self) -> ntt.NttTables:
        return ntt.tables(self.n)


@dataclass
class Encrypted:
    """What goes to the cloud for one batch: the a_j seed and the b_j halves."""

    seed: bytes
    b: torch.Tensor  # [d, P, N] int64 residues (coefficient domain)


def encrypt(keys: HeKeys, m: torch.Tensor, noise: torch.Tensor | None = None) -> Encrypted:
    """m [d, N] int64 in [0, t), m[j, i] = r[i, j] (pad row i, input coordinate j) -> d ciphertexts.
    `noise` [d, N] (|.| <= 19) replaces the Gaussian draw in tests of the worst case."""
    d, n = m.shape
    tab = keys.tab
    seed = os.urandom(SEED_BYTES)
    a_hat = expand_uniform(seed, "a", d, n)  # [d, P, N]
    e = gaussian(d * n).view(d, n) if noise is None else noise.to(torch.int64)
    b = torch.empty_like(a_hat)
    for i in range(0, d, CHUNK):
        sl = slice(i, i + CHUNK)
        a_s = ntt.intt(ntt.pointwise(a_hat[sl], keys.s_hat, tab), tab)  # coefficients of a_j s
        delta_m = torch.remainder(m[sl, None, :], _P) * _DELTA_MOD  # [c, P, N]; < 2^62
        b[sl] = torch.remainder(delta_m + _rns(e[sl]) - a_s, _P)
    return Encrypted(seed, b)


# -- exact RNS decoding ---------------------------------------------------------------------------
_DP = DELTA_PRIMES
_DIV = [DELTA // p for p in _DP]
_Y_INV = torch.tensor([pow(div % p, -1, p) for div, p in zip(_DIV, _DP)], dtype=torch.int64)[:, None]  # [5, 1]
_DP_T = torch.tensor(_DP, dtype=torch.int64)[:, None]
_DP_F = torch.tensor(_DP, dtype=torch.float64)[:, None]
# for each prime p of t: (Delta / p_i) mod p [5], Delta mod p, Delta^-1 mod p
_DIV_MOD_T = [torch.tensor([div % p for div in _DIV], dtype=torch.int64)[:, None] for p in RING_PRIMES]
_DELTA_INV_T = [pow(DELTA % p, -1, p) for p in RING_PRIMES]


def _decode(v: torch.Tensor):
    y = torch.remainder(v[..., _N_RING:, :] * _Y_INV, _DP_T)  # [..., 5, N]
    frac = (y.to(torch.float64) / _DP_F).sum(dim=-2)  # = e / Delta + k  (k integer in [0, 5])
    k = torch.round(frac)
    noise_share = frac - k
    k = k.to(torch.int64)
    m_res, e_res = [], []
    for i, p in enumerate(RING_PRIMES):
        e_mod = torch.remainder((torch.remainder(y * _DIV_MOD_T[i], p)).sum(dim=-2) - k * (DELTA % p), p)
        m_res.append(torch.remainder((v[..., i, :] - e_mod) * _DELTA_INV_T[i], p))  # (v - e) Delta^-1 mod p
        e_res.append(e_mod)
    return crt_to_t(*m_res), noise_share, e_res


def decode(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v [..., P, N] residues of Delta M + e (|e| < Delta/2) -> (M mod t [..., N] int64,
    e / Delta [..., N] float64: the noise's share of Delta, |.| < 1/2 when decoding is right;
    resolution ~2^-50)."""
    m, share, _ = _decode(v)
    return m, share


def small_noise(v: torch.Tensor) -> torch.Tensor:
    """The decryption noise e itself [..., N] int64, exact whenever |e| < t/2 ~ 2^61 (tests and
    audits: it shows what a CVM would read off unflooded answers)."""
    return lift(crt_to_t(*_decode(v)[2]))


def noise_of(keys: "HeKeys", a_hat: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return small_noise(_phase(keys, a_hat, b))


def _phase(keys: "HeKeys", a_hat: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    tab = keys.tab
    return torch.remainder(b + ntt.intt(ntt.pointwise(a_hat, keys.s_hat, tab), tab), _P)  # B + A s


def decrypt(keys: HeKeys, a_hat: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers a_hat [o, P, N] (NTT domain), b [o, P, N] -> (M [o, N] mod t, noise share [o, N])."""
    parts = [decode(_phase(keys, a_hat[i : i + CHUNK], b[i : i + CHUNK])) for i in range(0, a_hat.shape[0], CHUNK)]
    return torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])
