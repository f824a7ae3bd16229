"""Checkpoint loading: local path and hub id, norm folding, and refusal of unsupported models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from cloud_backend.checkpoint import CheckpointError, arch_from_config, load_prepared_model


def test_folded_ops_reproduce_the_hf_projections(tiny_model):
    """qkv of layer 0 applied to the gain-free norm equals HF's q/k/v projections of the gained norm."""
    path = tiny_model("qwen2")
    prep = load_prepared_model(str(path))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    layer = hf.model.layers[0]
    x = torch.randn(4, prep.arch.hidden_size)
    x_hat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + prep.arch.rms_norm_eps)
    with torch.no_grad():
        normed = layer.input_layernorm(x)
        ref = torch.cat([layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed), layer.self_attn.v_proj(normed)], -1)
    op = prep.ops["0.qkv"]
    ours = x_hat.double() @ op.weight + op.bias
    torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-5)
    assert prep.arch.attention_bias and prep.arch.tie_word_embeddings
    assert "embed_tokens" in prep.cvm_params and "tokenizer.json" in prep.tokenizer_files
    assert not any("layers" in k and "norm" not in k for k in prep.cvm_params)  # no block matrix for the CVM


def test_llama3_rope_scaling_and_qwen3_qk_norm_reach_the_cvm(tiny_model):
    llama = load_prepared_model(str(tiny_model("llama")))
    assert llama.arch.rope_type == "llama3"
    qwen3 = load_prepared_model(str(tiny_model("qwen3")))
    assert qwen3.arch.qk_norm and qwen3.arch.head_dim * qwen3.arch.num_heads != qwen3.arch.hidden_size
    assert qwen3.cvm_params["0.q_norm"].shape == (qwen3.arch.head_dim,)


def test_loads_by_hub_id_from_the_hub_cache(tiny_model, tmp_path):
    """A hub id resolves through huggingface_hub (here: an offline cache laid out as the hub writes it)."""
    snapshot = tmp_path / "hub" / "models--talaria-test--tiny-qwen2" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model("qwen2"), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = ("from cloud_backend.checkpoint import load_prepared_model as l; m = l('talaria-test/tiny-qwen2'); "
            "print(m.arch.family, m.name, 'tokenizer.json' in m.tokenizer_files)")
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["qwen2", "tiny-qwen2", "True"]


def test_unsupported_architecture_is_refused():
    from transformers import GPT2Config

    with pytest.raises(CheckpointError, match="unsupported model_type 'gpt2'"):
        arch_from_config(GPT2Config())


def test_cloud_command_reports_an_unloadable_checkpoint_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "talaria_cli.main", "cloud", "--model", str(tmp_path / "missing")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("talaria cloud: cannot serve") and len(out.stderr.strip().splitlines()) == 1
