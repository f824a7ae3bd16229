"""RLWE encryption of pad rows, the cloud's ciphertext GEMM and re-randomisation, exact decryption:
r W_bar mod t comes out exactly on random and worst-case inputs (checked against Python integers)."""

import math

import pytest
import torch

from cloud_backend import he_kernel
from cloud_backend.ring_kernel import ring_matmul
from talaria_proxy.pads import he_keys
from talaria_wire import ntt
from talaria_wire.he_params import DELTA, Q, TAIL, expand_uniform
from talaria_wire.ring import PRIMES, T, W_BITS, limb_bits

LIMIT = 1 << W_BITS


def secret_coeffs(keys) -> list[int]:
    s = ntt.intt(keys.s_hat, keys.tab)[0]
    return [c if c < PRIMES[0] // 2 else c - PRIMES[0] for c in s.tolist()]


def crt_q(residues: list[int]) -> int:
    return sum(r * (Q // p) * pow(Q // p, -1, p) for r, p in zip(residues, PRIMES)) % Q


def reference_decrypt(keys, a_hat: torch.Tensor, b: torch.Tensor, coeffs: list[int]) -> list[int]:
    """Slow Python-integer decryption of the listed coefficients: round(t (b + a s mod q) / q) mod t."""
    n = keys.n
    a = ntt.intt(a_hat.to(torch.int64), keys.tab)  # [P, N] coefficients
    s = secret_coeffs(keys)
    a_int = [crt_q(a[:, i].tolist()) for i in range(n)]
    out = []
    for c in coeffs:
        # coefficient c of a s in Z_q[X]/(X^N + 1): sum over i + j = c (+), i + j = c + N (-)
        acc = sum(a_int[i] * s[(c - i) % n] * (1 if i <= c else -1) for i in range(n) if s[(c - i) % n])
        v = (crt_q(b[:, c].tolist()) + acc) % Q
        out.append(((v * T + Q // 2) // Q) % T)
    return out


def products(keys, r, w_bar, noise=None, flood=True):
    """The whole path: encrypt r [n, d], cloud GEMM + re-randomisation, decrypt -> ([n, o], share)."""
    enc = he_keys.encrypt(keys, r.t().contiguous(), noise=noise)
    d, n = w_bar.shape[0], r.shape[0]
    halves = torch.stack([expand_uniform(enc.seed, "a", d, n), enc.b], dim=1)
    answers = he_kernel.ciphertext_matmul(w_bar, halves)
    he_kernel.rerandomise(answers, keys.pk_seed, keys.pk_b, flood=flood)
    m, share = he_keys.decrypt(keys, answers[:, 0], answers[:, 1])
    return m.t(), share, answers


def unflooded_noise(keys, r, w_bar, noise):
    _, _, answers = products(keys, r, w_bar, noise=noise, flood=False)
    return he_keys.noise_of(keys, answers[:, 0], answers[:, 1])  # [o, n]


@pytest.fixture(scope="module")
def keys():
    return he_keys.HeKeys.fresh()


def test_fresh_ciphertexts_decrypt_to_their_plaintext(keys):
    m = torch.randint(0, T, (3, keys.n))
    enc = he_keys.encrypt(keys, m)
    a_hat = expand_uniform(enc.seed, "a", 3, keys.n)
    got, share = he_keys.decrypt(keys, a_hat, enc.b)
    assert torch.equal(got, m)
    assert float(share.abs().max()) < 1e-14  # |e| <= 19: far below the float64 resolution of the share
    assert int(he_keys.noise_of(keys, a_hat, enc.b).abs().max()) <= TAIL
    assert reference_decrypt(keys, a_hat[0], enc.b[0], [0, 5, keys.n - 1]) == [int(m[0, c]) for c in (0, 5, keys.n - 1)]
    again = he_keys.encrypt(keys, m)  # a fresh seed and noise: unrelated upload for the same rows
    assert again.seed != enc.seed and not torch.equal(again.b, enc.b)


def test_random_products_are_exact(keys):
    torch.manual_seed(0)
    n, d, o = keys.n, 65, 6
    r = torch.randint(0, T, (n, d))
    w_bar = torch.randint(-LIMIT, LIMIT + 1, (d, o)).to(torch.float64)
    got, share, answers = products(keys, r, w_bar)
    assert torch.equal(got, ring_matmul(r, w_bar, limb_bits(d)))
    for i in (0, 1234, n - 1):  # and against Python integers
        assert got[i].tolist() == [sum(int(r[i, j]) * int(w_bar[j, k]) for j in range(d)) % T for k in range(o)]
    assert reference_decrypt(keys, answers[2, 0], answers[2, 1], [7]) == [int(got[7, 2])]
    assert float(share.abs().max()) < 2.0**-5  # flooding 2^149 against Delta ~ 2^155


def test_worst_case_weights_noise_and_width():
    """|W_bar| = 2^23 everywhere, every e at the tail bound with the sign that adds up, at the
    0.5B model's largest d (4864 + bias). A small ring degree keeps the upload small; the noise of
    the GEMM does not depend on N, and the re-randomisation's 2 N 19 is checked at N = 8192 below."""
    keys = he_keys.HeKeys.fresh(64)
    n, d, o = 64, 4865, 3
    r = torch.randint(0, T, (n, d))
    w_bar = torch.full((d, o), float(LIMIT), dtype=torch.float64)
    w_bar[:, 1] = -LIMIT  # column 1: E = -d 2^23 19 (the most negative)
    noise = torch.full((d, n), TAIL)
    got, share, _ = products(keys, r, w_bar, noise=noise)
    assert torch.equal(got, ring_matmul(r, w_bar, limb_bits(d)))
    budget = he_kernel.noise_budget(d)
    assert float(share.abs().max()) <= 2.0 ** (budget["log2_total_noise"] - math.log2(DELTA))
    # without flooding the decryption noise is E itself (the CVM would read sum_j W_bar e_j off it)
    e = unflooded_noise(keys, r, w_bar, noise)
    e_gemm = d * LIMIT * TAIL
    rerand = 2 * n * TAIL
    assert int((e[0] - e_gemm).abs().max()) <= rerand and int((e[1] + e_gemm).abs().max()) <= rerand


def test_worst_case_at_full_degree(keys):
    n, d, o = keys.n, 65, 2
    r = torch.full((n, d), T - 1)  # every pad value -1 mod t
    w_bar = torch.full((d, o), float(-LIMIT), dtype=torch.float64)
    got, share, _ = products(keys, r, w_bar, noise=torch.full((d, n), -TAIL))
    assert torch.equal(got, torch.full((n, o), (d * LIMIT) % T))  # (-1)(-2^23) d
    assert float(share.abs().max()) < 2.0**-5


def test_noise_budget_of_the_largest_op():
    b = he_kernel.noise_budget(4865)
    assert b["log2_gemm_noise"] < 40 and b["log2_rerand_noise"] < 19
    assert b["margin_bits"] >= 4.5  # total noise at most 1/32 of Delta/2
    assert b["log2_stat_distance_per_ciphertext"] <= -97


def test_decode_is_exact_up_to_the_margin():
    """v = Delta M + e in RNS for e near +-Delta/2 (minus the float64 slack) decodes to M."""
    m_vals = [0, 1, T - 1, T // 2, 123456789]
    errors = [0, 1, -1, DELTA // 2 - DELTA // 1024, -(DELTA // 2 - DELTA // 1024), 2**149, -(2**149)]
    cases = [(m, e) for m in m_vals for e in errors]
    v = torch.tensor([[(DELTA * m + e) % Q % p for (m, e) in cases] for p in PRIMES])  # [P, cases]
    got, share = he_keys.decode(v)
    assert got.tolist() == [m for m, _ in cases]
    assert share.tolist() == pytest.approx([e / DELTA for _, e in cases], abs=1e-12)


def test_answers_are_rerandomised(keys):
    """A' is not sum_j W_bar a_j (which the CVM could solve for W_bar), nor that plus small noise."""
    n, d = keys.n, 8
    r = torch.randint(0, T, (n, d))
    w_bar = torch.randint(-LIMIT, LIMIT + 1, (d, 2)).to(torch.float64)
    enc = he_keys.encrypt(keys, r.t().contiguous())
    halves = torch.stack([expand_uniform(enc.seed, "a", d, n), enc.b], dim=1)
    plain = he_kernel.ciphertext_matmul(w_bar, halves)
    answers = he_kernel.rerandomise(plain.clone(), keys.pk_seed, keys.pk_b)
    diff = ntt.intt(torch.remainder(answers[:, 0] - plain[:, 0], torch.tensor(PRIMES)[:, None]), keys.tab)
    p0 = PRIMES[0]
    centred = torch.where(diff[:, 0] > p0 // 2, diff[:, 0] - p0, diff[:, 0]).abs()
    assert float((centred > 2**20).double().mean()) > 0.99  # u a_pk: uniform-looking, not small
    m, _ = he_keys.decrypt(keys, answers[:, 0], answers[:, 1])
    assert torch.equal(m.t(), ring_matmul(r, w_bar, limb_bits(d)))
    again = he_kernel.rerandomise(plain.clone(), keys.pk_seed, keys.pk_b)
    assert not torch.equal(again, answers)  # fresh u, e1 and F per answer
