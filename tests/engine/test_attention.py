"""Batched decode attention equals per-sequence attention (different cache lengths, GQA, windows)."""

from __future__ import annotations

import pytest
import torch

from talaria_proxy.layers import attention, decode_attention


@pytest.mark.parametrize("heads,kv_heads,window", [(4, 2, None), (4, 4, None), (6, 2, 8), (4, 1, 1)])
def test_decode_attention_matches_one_sequence_at_a_time(heads, kv_heads, window):
    g = torch.Generator().manual_seed(0)
    D = 16
    lengths = [1, 5, 17, 64, 9]  # the new token sits at position length - 1
    q = torch.randn(len(lengths), heads, D, generator=g)
    ks = [torch.randn(n, kv_heads, D, generator=g) * 3 for n in lengths]
    vs = [torch.randn(n, kv_heads, D, generator=g) for n in lengths]
    got = decode_attention(q, ks, vs, [n - 1 for n in lengths], window)
    assert got.shape == (len(lengths), heads * D)
    for b, n in enumerate(lengths):
        want = attention(q[b : b + 1], ks[b], vs[b], n - 1, window)  # [1, H*D]
        torch.testing.assert_close(got[b : b + 1], want, rtol=1e-5, atol=1e-6)


def test_padding_never_reaches_a_short_sequence():
    """A 1-position cache next to a long one: its output is exactly its single value vector."""
    q = torch.randn(2, 2, 8)
    ks = [torch.randn(1, 2, 8), torch.randn(40, 2, 8)]
    vs = [torch.full((1, 2, 8), 7.0), torch.randn(40, 2, 8) * 100]
    out = decode_attention(q, ks, vs, [0, 39], None)
    assert torch.allclose(out[0], torch.full((16,), 7.0))
