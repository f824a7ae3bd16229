"""How the attacker splits a transcript into sequences from call sizes alone."""

from __future__ import annotations

import torch

from evaluation.transcript import Transcript
from talaria_wire import ArchSpec, Manifest, MaskingSpec, OpSpec


def _manifest() -> Manifest:
    arch = ArchSpec(family="qwen2", hidden_size=4, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=4,
                    intermediate_size=8, vocab_size=16, rms_norm_eps=1e-6, max_position_embeddings=64)
    ops = [OpSpec(name=n, d_in=4, d_out=4, bias=False, rank=2) for n in ("0.qkv", "0.o", "0.gate_up", "lm_head")]
    return Manifest(protocol="talaria/1", model_name="m", fingerprint="f", wire_dtype="float64", arch=arch,
                    ops=ops, masking=MaskingSpec(basis_seed=0))


def test_segments_follow_prefill_then_decode_calls():
    calls = [torch.zeros(n, 4) for n in (5, 1, 1, 3, 1, 2)]
    tr = Transcript(_manifest(), {}, {"0.qkv": calls, "0.o": calls, "0.gate_up": calls})
    assert tr.block_ops == ["0.qkv", "0.o", "0.gate_up"]
    segs = tr.segments()
    assert [s.rows for s in segs] == [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10], [11, 12]]
    assert [s.positions for s in segs] == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3], [0, 1]]
    assert tr.observations("0.o").shape == (13, 4)
