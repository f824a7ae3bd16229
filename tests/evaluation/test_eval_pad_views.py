"""The pad attackers' views on synthetic records: a dealer record read back, alignment, collusion."""

from __future__ import annotations

import pytest
import torch

from cloud_backend.recorder import CallRecorder
from evaluation import attacks as A
from evaluation import pad_views as V
from evaluation.transcript import Transcript
from talaria_proxy.schemes.pad import encode_rows
from talaria_wire import ArchSpec, Manifest, OpKey, OpSpec, RingSpec
from talaria_wire.ring import RING_PRIMES, T, W_BITS, pad_rows

D = 16


def _manifest() -> Manifest:
    arch = ArchSpec(family="qwen2", hidden_size=D, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=D,
                    intermediate_size=32, vocab_size=64, rms_norm_eps=1e-6, max_position_embeddings=64)
    ops = [OpSpec(name="0.qkv", d_in=D, d_out=3 * D, bias=True, w_norm_bits=26, pad_dim=D + 1),
           OpSpec(name="lm_head", d_in=D, d_out=64, bias=False, w_norm_bits=26, pad_dim=D)]
    return Manifest(protocol="talaria/1", model_name="m", scheme="pad", fingerprint="f", wire_dtype="int64",
                    arch=arch, ops=ops, ring=RingSpec(modulus=T, primes=list(RING_PRIMES), w_bits=W_BITS))


def _records(tmp_path, table: torch.Tensor, ids: torch.Tensor, sizes: list[int], block: int = 8):
    """A compute transcript of rows table[ids] split into calls, and a dealer record of the seeds
    whose pads padded them (in pool order, more rows dealt than used)."""
    manifest = _manifest()
    x_bar, _ = encode_rows(table[ids], 26, bias=True)  # [n, D + 1]
    dealer = CallRecorder(tmp_path / "dealer", manifest, {})
    seeds = [bytes([i]) * 32 for i in range(-(-ids.numel() // block) + 1)]
    for s in seeds:
        dealer.record_seed(OpKey.parse("0.qkv"), s, block)
    r = torch.cat([pad_rows(s, "0.qkv", block, D + 1) for s in seeds])[: ids.numel()]
    u = torch.remainder(x_bar - r, T)
    tr = Transcript(manifest, {}, {"0.qkv": list(u.split(sizes))})
    return tr, x_bar, r


def test_dealer_record_expands_to_the_pads_and_collusion_recovers_x_bar(tmp_path):
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(64, D, generator=gen)
    ids = torch.randint(0, 64, (30,), generator=gen)
    tr, x_bar, r = _records(tmp_path, table, ids, [12, 1, 1, 9, 1, 6])
    pads = V.dealer_pads(tmp_path / "dealer", tr)
    assert pads["0.qkv"].shape == (40, D + 1) and torch.equal(pads["0.qkv"][:30], r)
    assert torch.equal(V.merged_residues(tr, pads)["0.qkv"], x_bar)
    merged = V.merged_view(tr, pads)
    assert merged.scale_free and merged.mask is None and [c.shape[0] for c in merged.calls["0.qkv"]] == [12, 1, 1, 9, 1, 6]
    # by direction, the colluders read every row; the compute cloud's and the dealer's views alone do not
    assert torch.equal(A.nearest(merged.observations("0.qkv"), table.double(), normalize=True), ids)
    for view in (V.compute_view(tr), V.dealer_view(tr, pads)):
        obs = view.observations("0.qkv")
        assert obs.shape == (30, D) and torch.allclose(obs.norm(dim=1), torch.ones(30, dtype=torch.float64))
        assert (A.nearest(obs, table.double(), normalize=True) == ids).float().mean() < 0.3


def test_a_dealer_that_dealt_too_few_rows_is_an_error(tmp_path):
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(64, D, generator=gen)
    tr, _, _ = _records(tmp_path, table, torch.randint(0, 64, (20,), generator=gen), [20])
    pads = V.dealer_pads(tmp_path / "dealer", tr)
    pads["0.qkv"] = pads["0.qkv"][:10]
    with pytest.raises(ValueError, match="dealt 10 pad rows"):
        V.dealer_view(tr, pads)


def test_simulated_pads_read_like_uniform_noise():
    x = torch.randn(2000, D, generator=torch.Generator().manual_seed(2))
    sim = V.simulate_pad(x, 26, True, torch.Generator().manual_seed(3))
    assert sim.shape == (2000, D) and torch.allclose(sim.norm(dim=1), torch.ones(2000, dtype=torch.float64))
    corr = (A.unit_rows(x) * sim).sum(1)  # cosine between each row and its padded reading
    assert corr.abs().mean() < 0.3
