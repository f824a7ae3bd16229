"""The negacyclic NTT against a slow Python-integer schoolbook product and known answers."""

import random

import pytest
import torch

from talaria_wire import ntt
from talaria_wire.ring import PRIMES


def schoolbook(a: list[int], b: list[int], p: int) -> list[int]:
    """a b mod (X^n + 1, p) by definition: X^n = -1."""
    n = len(a)
    c = [0] * n
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            if i + j < n:
                c[i + j] += ai * bj
            else:
                c[i + j - n] -= ai * bj
    return [x % p for x in c]


def random_poly(n: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    return torch.stack([torch.randint(0, p, (*batch, n)) for p in PRIMES], dim=-2)  # [..., P, n]


@pytest.mark.parametrize("n", [2, 16, 64])
def test_product_matches_schoolbook(n):
    torch.manual_seed(n)
    tab = ntt.tables(n)
    a, b = random_poly(n, (3,)), random_poly(n, (3,))
    c = ntt.poly_mul(a, b, tab)
    for k in range(3):
        for i, p in enumerate(PRIMES):
            assert c[k, i].tolist() == schoolbook(a[k, i].tolist(), b[k, i].tolist(), p)


def test_extreme_residues_do_not_overflow():
    n = 32
    tab = ntt.tables(n)
    a = torch.tensor([[p - 1] * n for p in PRIMES])  # every coefficient -1
    c = ntt.poly_mul(a, a, tab)
    for i, p in enumerate(PRIMES):
        assert c[i].tolist() == schoolbook([p - 1] * n, [p - 1] * n, p)


def test_known_answers_at_full_degree():
    n = 8192
    tab = ntt.tables(n)
    one = torch.zeros(len(PRIMES), n, dtype=torch.int64)
    one[:, 0] = 1
    assert torch.equal(ntt.ntt(one, tab), torch.ones_like(one))  # a constant evaluates to itself
    x, x_last = torch.zeros_like(one), torch.zeros_like(one)
    x[:, 1], x_last[:, n - 1] = 1, 1
    minus_one = torch.tensor([[p - 1] + [0] * (n - 1) for p in PRIMES])
    assert torch.equal(ntt.poly_mul(x, x_last, tab), minus_one)  # X * X^(N-1) = X^N = -1
    a = random_poly(n, (2,))
    assert torch.equal(ntt.intt(ntt.ntt(a, tab), tab), a)


def test_slots_are_evaluations_at_odd_powers_of_psi():
    """Slot i of the forward transform holds a(psi^(2 brv(i) + 1)) (Horner in Python integers)."""
    n = 8192
    tab = ntt.tables(n)
    a = random_poly(n)
    a_hat = ntt.ntt(a, tab)
    rng = random.Random(1)
    for pi in (0, 6):
        p = PRIMES[pi]
        psi = ntt.primitive_root_2n(p, n)
        assert pow(psi, n, p) == p - 1
        coeffs = a[pi].tolist()
        for i in rng.sample(range(n), 3):
            point = pow(psi, 2 * ntt._bit_reverse(i, 13) + 1, p)
            value = 0
            for c in reversed(coeffs):
                value = (value * point + c) % p
            assert int(a_hat[pi, i]) == value


def test_wrong_shapes_are_refused():
    tab = ntt.tables(16)
    with pytest.raises(ValueError):
        ntt.ntt(torch.zeros(len(PRIMES), 8, dtype=torch.int64), tab)
    with pytest.raises(ValueError):
        ntt.ntt(torch.zeros(len(PRIMES), 16, dtype=torch.int32), tab)
    with pytest.raises(ValueError):
        ntt.tables(12)
    with pytest.raises(ValueError):
        ntt.primitive_root_2n(97, 64)  # 97 - 1 is not a multiple of 128
