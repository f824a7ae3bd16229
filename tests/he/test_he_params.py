"""The RLWE parameters against the HomomorphicEncryption.org table, and the samplers they assume."""

import math

import pytest
import torch

from talaria_wire import he_params
from talaria_wire.ring import PRIMES


def test_chosen_parameters_lie_in_the_128_bit_table():
    assert he_params.N == 8192 and he_params.SECRET == "ternary"
    log_q = he_params.log2_q()
    assert log_q == pytest.approx(216.997, abs=1e-3)
    assert log_q <= he_params.HE_STANDARD_128["ternary"][8192] == 218
    he_params.check_security(he_params.N, log_q)
    assert he_params.Q == math.prod(PRIMES) and he_params.Q % he_params.T == 0
    for p in PRIMES:  # X^N + 1 splits mod every prime: the NTT exists
        assert (p - 1) % (2 * he_params.N) == 0


def test_too_large_q_or_unknown_degree_fails_the_check():
    with pytest.raises(ValueError, match="exceeds"):
        he_params.check_security(8192, he_params.log2_q() + math.log2(PRIMES[0]))  # one more prime
    with pytest.raises(ValueError, match="exceeds"):
        he_params.check_security(4096, he_params.log2_q())  # the same q at half the degree
    with pytest.raises(ValueError, match="not in"):
        he_params.check_security(3000, 50)
    with pytest.raises(ValueError, match="exceeds"):
        he_params.check_security(8192, 219.5, "ternary")
    he_params.check_security(8192, 219.5, "uniform")  # the uniform-secret column allows 220


def test_table_rows_grow_with_the_degree():
    for row in he_params.HE_STANDARD_128.values():
        values = [row[n] for n in sorted(row)]
        assert values == sorted(values) and 1.9 < values[-1] / values[-2] < 2.1


def test_gaussian_is_cut_at_the_tail_bound_with_sigma_3_2():
    e = he_params.gaussian(400_000)
    assert e.dtype == torch.int64 and int(e.abs().max()) <= he_params.TAIL
    assert float(e.double().std()) == pytest.approx(3.2, rel=0.02)
    assert abs(float(e.double().mean())) < 0.05
    assert not torch.equal(e[:1000], he_params.gaussian(1000))  # fresh draws


def test_ternary_is_balanced():
    s = he_params.ternary(90_000)
    counts = [int((s == v).sum()) for v in (-1, 0, 1)]
    assert sum(counts) == 90_000 and all(abs(c - 30_000) < 1_000 for c in counts)


def test_uniform_expansion_is_deterministic_per_seed_and_label():
    seed = bytes(range(32))
    a = he_params.expand_uniform(seed, "a", 3, 64)
    assert a.shape == (3, len(PRIMES), 64)
    assert torch.equal(a, he_params.expand_uniform(seed, "a", 3, 64))
    assert not torch.equal(a, he_params.expand_uniform(seed, "pk", 3, 64))
    for i, p in enumerate(PRIMES):
        assert int(a[:, i].max()) < p and int(a.min()) >= 0
    with pytest.raises(ValueError):
        he_params.expand_uniform(b"short", "a", 1, 64)
