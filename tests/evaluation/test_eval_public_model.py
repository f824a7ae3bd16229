"""The attacker's model against HF transformers, and the token-by-token matcher on a tiny model."""

from __future__ import annotations

import pytest
import torch

from evaluation import attacks as A
from evaluation.public_model import PublicModel, rms_nogain
from evaluation.transcript import Segment
from talaria_wire import OpKey


@pytest.fixture(scope="module")
def qwen2(tiny_model):
    return PublicModel(tiny_model("qwen2"))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_op_inputs_match_hf_transformers(tiny_model, arch):
    from transformers import AutoModelForCausalLM

    path = tiny_model(arch)
    model = PublicModel(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states  # [L+1] x [B, T, d]
    inputs = model.sequence_inputs(ids)
    for layer in range(model.arch.num_layers):
        ref = rms_nogain(hidden[layer].reshape(-1, model.arch.hidden_size), model.eps)  # gain-free qkv input
        assert torch.allclose(inputs[f"{layer}.qkv"], ref, atol=1e-4)
    # the candidate path (prefix cache + one new token) reproduces the teacher-forced inputs of every op
    cache = model.new_prefix(16)
    for t in range(ids.shape[1]):
        captured = {}
        _, kv = model.candidate_inputs(cache, torch.tensor([0]), ids[0, t : t + 1], OpKey(1, "down"), captured)
        for name, x in captured.items():
            assert torch.allclose(x[0, 0], inputs[name][t], atol=1e-4), (name, t)
        model.write_kv(cache, kv, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
        cache.length += 1


def _observations(model, ids):
    """Unmasked op inputs of sequences ids [B, T], as the cloud would record them, plus segments."""
    inputs = model.sequence_inputs(ids)
    B, T = ids.shape
    segments = [Segment(list(range(b * T, (b + 1) * T)), list(range(T))) for b in range(B)]
    return inputs, segments


def test_matcher_recovers_every_token_of_unmasked_deeper_inputs(qwen2):
    ids = torch.randint(0, 1024, (3, 10), generator=torch.Generator().manual_seed(1))
    inputs, segments = _observations(qwen2, ids)
    ops = ["0.o", "0.down", "1.qkv", "1.gate_up", "1.down"]
    variants = [A.MatchVariant(op, inputs[op]) for op in ops]
    preds = A.match_tokens(qwen2, variants, segments, torch.arange(1024))
    for op, pred in zip(ops, preds):
        assert torch.equal(pred, ids.reshape(-1)), op


def test_matcher_sees_through_a_remo_mask_after_projection_only(qwen2):
    ids = torch.randint(0, 1024, (2, 8), generator=torch.Generator().manual_seed(2))
    inputs, segments = _observations(qwen2, ids)
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(64, 32, generator=gen, dtype=torch.float64))
    basis = q.T.contiguous()  # m = d/2
    from evaluation.inverter import simulate_remo

    obs = simulate_remo(inputs["1.qkv"], basis, 10.0, gen)
    with_proj, without = A.match_tokens(
        qwen2, [A.MatchVariant("1.qkv", obs, basis), A.MatchVariant("1.qkv", obs, None)], segments, torch.arange(1024))
    assert torch.equal(with_proj, ids.reshape(-1))
    assert (without == ids.reshape(-1)).float().mean() < 0.3


def test_matcher_fails_with_the_wrong_weights(qwen2, tiny_model, tmp_path):
    """The matcher's success depends on knowing the weights: another seed's model recovers little."""
    from talaria_cli.tiny_model import ensure_tiny_model

    other = PublicModel(ensure_tiny_model(tmp_path / "other", "qwen2", seed=1))
    ids = torch.randint(0, 1024, (2, 8), generator=torch.Generator().manual_seed(4))
    inputs, segments = _observations(qwen2, ids)
    (pred,) = A.match_tokens(other, [A.MatchVariant("1.qkv", inputs["1.qkv"])], segments, torch.arange(1024))
    assert (pred == ids.reshape(-1)).float().mean() < 0.3
