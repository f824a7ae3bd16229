"""The faster ring kernel (signed limbs, OpenBLAS for small stacks) is exact: it equals Python-integer
arithmetic on worst cases on both GEMM paths, and the first formulation on random inputs."""

from __future__ import annotations

import pytest
import torch

from cloud_backend import ring_kernel
from cloud_backend.ring_kernel import limb_plan, ring_limbs, ring_matmul, ring_matmul_limbs, signed_limb_bits
from talaria_wire.ring import HALF_T, T, W_BITS, limb_bits

WORST_RESIDUES = [0, 1, HALF_T - 1, HALF_T, HALF_T + 1, T - 2, T - 1]


def python_matmul_mod_t(u, w) -> list[list[int]]:
    ul, cols = u.tolist(), list(zip(*[[int(v) for v in row] for row in w.tolist()]))
    return [[sum(a * b for a, b in zip(row, col)) % T for col in cols] for row in ul]


@pytest.mark.parametrize("d", [1, 64, 896, 897, 1023, 1024, 4865, 14337])
def test_limb_plan_keeps_float64_exact_and_covers_the_ring(d):
    k, bits, signed = limb_plan(d)
    assert 62 <= k * bits <= (63 if signed else 61 + k)  # signed: c + offset stays below 2^63
    largest_digit = (1 << (bits - 1)) if signed else (1 << bits) - 1
    assert d * largest_digit * (1 << W_BITS) < 2**53  # every partial sum of a limb GEMM is an exact integer
    assert k <= -(-62 // limb_bits(d))  # never more limbs than the first formulation
    assert signed == (-(-62 // signed_limb_bits(d)) < -(-62 // limb_bits(d)))  # signed only where it saves a limb
    if d in (896, 897, 1023):  # the 0.5B model's ops but down: 3 limbs instead of 4
        assert (k, signed) == (3, True) and -(-62 // limb_bits(d)) == 4


def test_signed_limb_bits_is_the_widest_exact_width():
    for d in (1, 896, 4865):
        bits = signed_limb_bits(d)
        assert d * (1 << (bits - 1)) * (1 << W_BITS) < 2**53 <= d * (1 << bits) * (1 << W_BITS)


@pytest.mark.parametrize("d", [896, 4865])
def test_digits_reconstruct_every_worst_case_residue(d):
    k, bits, signed = limb_plan(d)
    u = torch.tensor(WORST_RESIDUES, dtype=torch.int64).view(-1, 1).repeat(1, 2)
    digits = ring_limbs(u, k, bits, signed)
    for i, value in enumerate(WORST_RESIDUES):
        assert sum(int(digits[j, i, 0]) << (bits * j) for j in range(k)) % T == value
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    assert int(digits.min()) >= lo and int(digits.max()) <= hi


@pytest.mark.parametrize("blas_rows", [0, 10**6])  # torch's GEMM only / OpenBLAS whenever it loads
@pytest.mark.parametrize("d", [65, 897, 1024, 4865])
def test_worst_case_inputs_are_exact_on_both_gemm_paths(monkeypatch, d, blas_rows):
    monkeypatch.setattr(ring_kernel, "BLAS_MAX_ROWS", blas_rows)
    rows = [[r] * d for r in WORST_RESIDUES]
    rows.append([HALF_T if j % 2 else HALF_T + 1 for j in range(d)])  # digits at both ends of their range
    u = torch.tensor(rows, dtype=torch.int64)
    w = torch.full((d, 4), float(2**W_BITS), dtype=torch.float64)
    w[:, 1] = -(2.0**W_BITS)
    w[::3, 2] = -(2.0**W_BITS)
    w[:, 3] = torch.arange(d, dtype=torch.float64) - d // 2
    assert ring_matmul(u, w).tolist() == python_matmul_mod_t(u, w)


def test_random_inputs_equal_the_first_formulation():
    g = torch.Generator().manual_seed(3)
    for d, o, n in ((897, 40, 1), (896, 30, 40), (4865, 12, 9)):
        u = torch.randint(0, 2**62, (n, d), generator=g) % T
        w = torch.randint(-(2**W_BITS), 2**W_BITS + 1, (d, o), generator=g).double()
        assert torch.equal(ring_matmul(u, w, limb_bits(d)), ring_matmul_limbs(u, w, limb_bits(d)))
