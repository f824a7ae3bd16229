"""The uniformity tests on data whose answer is known: uniform residues pass, structured ones fail."""

from __future__ import annotations

import math

import torch

from evaluation import uniformity as U
from talaria_wire.ring import PRIMES, T


def _uniform(n: int, k: int, modulus: int, seed: int) -> torch.Tensor:
    return torch.randint(0, modulus, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)


def test_bin_edges_are_exact_for_moduli_near_2_62():
    for modulus in (T, PRIMES[3], 17):
        edges, probs = U.bin_edges(modulus, 16)
        assert edges.shape == (15,) and bool((edges[1:] > edges[:-1]).all())
        assert abs(float(probs.sum()) - 1.0) < 1e-12
    # 17 values in 16 bins: one bin holds two values
    _, probs = U.bin_edges(17, 16)
    assert sorted((probs * 17).round().tolist()) == [1.0] * 15 + [2.0]


def test_uniform_residues_pass_and_their_p_values_are_uniform():
    _, p = U.chi_square(_uniform(4000, 400, T, seed=0), T)
    s = U.p_summary(p)
    assert s["frac_p_below_0.01"] < 0.04 and s["ks_p"] > 1e-3
    _, p = U.chi_square(_uniform(3000, 50, PRIMES[0], seed=1), PRIMES[0], bins=8)
    assert U.p_summary(p)["ks_p"] > 1e-3


def test_structured_residues_are_rejected():
    gen = torch.Generator().manual_seed(2)
    small = torch.randint(-(1 << 33), 1 << 33, (2000, 20), generator=gen)  # fixed-point rows, unpadded
    _, p = U.chi_square(torch.remainder(small, T), T)
    assert float(p.max()) < 1e-10
    skewed = _uniform(2000, 20, T // 2, seed=3) + T // 4  # only the middle half of Z_t
    assert float(U.chi_square(skewed, T)[1].max()) < 1e-10
    # a slight bias (5% of the rows stuck in one bin) is already seen in most coordinates
    biased = _uniform(4000, 100, T, seed=4)
    biased[:200] = 7
    assert U.p_summary(U.chi_square(biased, T)[1])["frac_p_below_0.01"] > 0.9


def test_ks_and_correlation():
    gen = torch.Generator().manual_seed(5)
    assert U.ks_uniform(torch.rand(5000, generator=gen, dtype=torch.float64))[1] > 1e-3
    assert U.ks_uniform(torch.rand(5000, generator=gen, dtype=torch.float64) ** 2)[1] < 1e-6
    a = torch.randn(3000, 30, generator=gen, dtype=torch.float64)
    b = torch.randn(3000, 30, generator=gen, dtype=torch.float64)
    r = U.correlation(a, b).abs()
    assert abs(float(r.mean()) - math.sqrt(2 / (math.pi * 3000))) < 0.005
    assert torch.allclose(U.correlation(a, 3 * a + 1), torch.ones(30, dtype=torch.float64))


def test_residue_tests_of_a_padded_and_an_unpadded_record():
    gen = torch.Generator().manual_seed(6)
    x_bar = torch.randint(-(1 << 30), 1 << 30, (3000, 24), generator=gen)
    r = _uniform(3000, 24, T, seed=7)
    padded = U.residue_tests(torch.remainder(x_bar - r, T), x_bar)
    assert padded["chi2"]["ks_p"] > 1e-3 and padded["control_chi2"]["frac_p_below_0.01"] == 1.0
    assert padded["corr_lifted"]["max_abs"] < 0.1
    leaky = U.residue_tests(torch.remainder(x_bar - r // (1 << 40), T), x_bar)  # a pad of 22 bits only
    assert leaky["chi2"]["frac_p_below_0.01"] == 1.0 and leaky["corr_lifted"]["max_abs"] > 0.9
    summary = U.summarize({"a": padded, "b": leaky})
    assert summary["corr_lifted_max_abs"] > 0.9 and summary["chi2"]["coords"] == 48
