"""The cloud's native he kernels give exactly the torch references' residues: the NTT of
ntt_native.c (both directions, edge values, N from 8 to 8192) and the fused ciphertext GEMM of
ring_native.c (limbs, products and reduction mod each prime) at the weight bounds."""

from __future__ import annotations

import shutil

import pytest
import torch

from cloud_backend import he_kernel, ntt_native
from cloud_backend.ring_kernel import NativeWeights, column_range, prepare_weights
from talaria_wire import ntt
from talaria_wire.ring import PRIMES, W_BITS

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
                                reason="no C compiler: the cloud runs the torch references")


def residues(shape_lead, n, generator):
    return torch.stack([torch.randint(0, p, (*shape_lead, n), generator=generator) for p in PRIMES], dim=-2)


@pytest.mark.parametrize("n", [8, 64, 8192])
def test_native_ntt_equals_the_torch_transform(n):
    g = torch.Generator().manual_seed(n)
    tab = ntt.tables(n)
    a = residues((2, 3), n, g)  # [2, 3, P, n]
    a[0, 0] = tab.p - 1  # the largest residues
    a[0, 1] = 0
    fwd = ntt_native.forward(a, tab)
    assert torch.equal(fwd, ntt.ntt(a, tab))
    assert torch.equal(ntt_native.inverse(a, tab), ntt.intt(a, tab))
    assert torch.equal(ntt_native.inverse(fwd, tab), a)
    assert torch.equal(a, a.clone())  # inputs untouched (the transforms return new tensors)


@pytest.mark.parametrize("d,o", [(1, 3), (65, 70), (160, 64), (897, 5)])
def test_native_ciphertext_gemm_equals_the_blas_reference(d, o):
    g = torch.Generator().manual_seed(d)
    w = torch.randint(-(2**W_BITS), 2**W_BITS + 1, (d, o), generator=g).double()
    w[:, 0] = 2.0**W_BITS  # weights at both bounds
    if o > 1:
        w[::2, 1] = -(2.0**W_BITS)
    nw = prepare_weights(w)
    assert isinstance(nw, NativeWeights)
    block = torch.stack([residues((d,), 37, g)] * 2, dim=1)  # [d, H=2, P, 37]
    block[:, 0, :, 0] = torch.tensor(PRIMES) - 1
    assert torch.equal(he_kernel.matmul_block(nw, block), he_kernel.matmul_block(w, block))
    if o > 2:  # a column range, as the he endpoint serves wide ops
        assert torch.equal(he_kernel.matmul_block(column_range(nw, 1, o), block),
                           he_kernel.matmul_block(w[:, 1:], block))
