"""The ring kernel is exact: u W_bar mod t equals Python-integer arithmetic, worst cases included;
fixed-point weights keep their bounds and fold the bias in."""

from __future__ import annotations

import math
import random

import pytest
import torch

from cloud_backend.fixed_weights import fixed_point_op
from cloud_backend.ring_kernel import ring_matmul
from talaria_wire.ring import HALF_T, T, W_BITS, crt_to_t, lift, limb_bits, pad_rows, uniform_mod


def python_matmul_mod_t(u: torch.Tensor, w: torch.Tensor) -> list[list[int]]:
    ul, wl = u.tolist(), [[int(v) for v in row] for row in w.tolist()]
    cols = list(zip(*wl))
    return [[sum(a * b for a, b in zip(row, col)) % T for col in cols] for row in ul]


@pytest.mark.parametrize("d", [1, 65, 897, 4865])
def test_worst_case_residues_and_weights_are_exact(d):
    # the largest residue against the largest weights of both signs: every limb GEMM at its bound
    u = torch.full((2, d), T - 1, dtype=torch.int64)
    u[1, ::2] = T - 2
    w = torch.full((d, 3), float(2**W_BITS), dtype=torch.float64)
    w[:, 1] = -(2.0**W_BITS)
    w[::3, 2] = -(2.0**W_BITS)
    got = ring_matmul(u, w, limb_bits(d))
    assert got.tolist() == python_matmul_mod_t(u, w)


def test_random_residues_and_weights_are_exact():
    g = torch.Generator().manual_seed(1)
    d, o = 300, 17
    u = torch.randint(0, T, (5, d), generator=g, dtype=torch.int64)
    w = torch.randint(-(2**W_BITS), 2**W_BITS + 1, (d, o), generator=g).double()
    assert ring_matmul(u, w, limb_bits(d)).tolist() == python_matmul_mod_t(u, w)


def test_limb_width_keeps_float64_exact_and_is_the_widest():
    for d in (1, 64, 896, 4865, 14337):
        bits = limb_bits(d)
        assert d * ((1 << bits) - 1) * (1 << W_BITS) < 2**53
        assert d * ((1 << (bits + 1)) - 1) * (1 << W_BITS) >= 2**53


def test_crt_and_lift():
    values = [0, 1, HALF_T, HALF_T + 1, T - 1, random.Random(0).randrange(T)]
    v = torch.tensor(values, dtype=torch.int64)
    from talaria_wire.ring import RING_PRIMES

    assert crt_to_t(v % RING_PRIMES[0], v % RING_PRIMES[1]).tolist() == values
    assert lift(v).tolist() == [x if x <= HALF_T else x - T for x in values]


def test_fixed_point_weights_keep_their_bounds_and_fold_the_bias():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 6, generator=g, dtype=torch.float64)
    w[:, 3] *= 1e-6  # a column of small weights keeps its precision: it gets its own exponent
    w[:, 4] = 0.0
    b = torch.randn(6, generator=g, dtype=torch.float64)
    b[4] = 0.0  # column 4 is all zero, bias included
    fp = fixed_point_op(w, b)
    assert fp.d == 41 and fp.bias
    assert fp.w_bar.abs().max() <= 2**W_BITS
    assert torch.equal(fp.w_bar, fp.w_bar.round())
    scaled = torch.ldexp(torch.cat([w, torch.ldexp(b, torch.tensor(-float(fp.bias_bits)))[None]]), fp.col_exp.double())
    assert (fp.w_bar - scaled).abs().max() <= 0.5
    for j in (0, 1, 2, 3, 5):  # every nonzero column uses more than W_BITS - 1 bits of its range
        assert fp.w_bar[:, j].abs().max() > 2 ** (W_BITS - 1)
    assert fp.col_exp[4] == 0 and not fp.w_bar[:, 4].any()
    assert 2 ** (fp.w_norm_bits - 1) < fp.w_bar.norm(dim=0).max() <= 2**fp.w_norm_bits


def test_seeded_pad_rows_are_reproducible_uniform_and_distinct():
    seed, other = bytes(range(32)), bytes(range(1, 33))
    a = pad_rows(seed, "0.qkv", 4, 50)
    assert torch.equal(a, pad_rows(seed, "0.qkv", 4, 50))  # both holders of the seed agree
    assert not torch.equal(a, pad_rows(other, "0.qkv", 4, 50))
    assert not torch.equal(a, pad_rows(seed, "0.o", 4, 50))  # the op is part of the stream
    big = uniform_mod(seed, "u", 200_000, T, 62)
    assert int(big.min()) >= 0 and int(big.max()) < T
    top = (big >> 58).bincount(minlength=16).double()  # 16 bins of the top bits (t is just under 2^62)
    chi2 = float(((top - top.mean()) ** 2 / top.mean()).sum())
    assert chi2 < 50, chi2  # 15 degrees of freedom: p < 1e-5 beyond 50
    with pytest.raises(ValueError, match="32 bytes"):
        pad_rows(b"short", "0.qkv", 1, 1)
    assert math.isclose(float(big.double().mean()) / T, 0.5, abs_tol=0.01)


def test_a_bias_larger_than_its_weights_is_scaled_down_not_let_set_the_exponent():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 4, generator=g, dtype=torch.float64) * 0.01
    b = torch.tensor([5.0, -0.001, 0.1, 0.0], dtype=torch.float64)  # 5.0: ~170x its column's largest weight; 0.1: ~4x
    fp = fixed_point_op(w, b)
    assert fp.bias_bits == 3  # capped at ceil(log2 sqrt(64)) = 3: the bias row's rounding stays below the weights'
    weight_max = fp.w_bar[:-1].abs().amax(dim=0)
    assert (weight_max[1:3] > 2 ** (W_BITS - 1)).all()  # their exponents come from the weights, not the bias
    unscaled = w[:, 0].abs().max() * 2.0 ** math.floor(W_BITS - math.log2(5.0))  # column 0 at k = 0
    assert weight_max[0] >= 7.9 * unscaled  # beyond the cap the bias still leads, but 2^k less
    x = torch.randn(3, 64, generator=g, dtype=torch.float64)
    x_aug = torch.cat([x, torch.full((3, 1), 2.0**fp.bias_bits, dtype=torch.float64)], dim=1)
    y = torch.ldexp(x_aug @ fp.w_bar, -fp.col_exp.double())
    torch.testing.assert_close(y, x @ w + b, rtol=0, atol=1e-5)
