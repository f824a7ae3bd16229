"""Tests for `talaria tiny-model`: the generated checkpoints load with the Auto* classes,
are deterministic, exercise the architecture features the engine tests rely on, and the
directory handling never clobbers foreign data or leaves half checkpoints behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from talaria_cli import tiny_model
from talaria_cli.main import main
from talaria_cli.tiny_model import ARCHS, ensure_tiny_model, write_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny_model(root / arch, arch=arch) for arch in ARCHS}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_and_generates(models, arch):
    model = AutoModelForCausalLM.from_pretrained(models[arch])
    tok = AutoTokenizer.from_pretrained(models[arch])
    assert model.dtype == torch.float32
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert model.generation_config.eos_token_id == model.config.eos_token_id
    assert tok.pad_token == "<|endoftext|>"
    assert model.config.vocab_size >= len(tok)

    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "hello there"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert int(out.max()) < len(tok)


@pytest.mark.parametrize("arch", ARCHS)
def test_gqa_and_perturbed_norms(models, arch):
    model = AutoModelForCausalLM.from_pretrained(models[arch])
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.max_position_embeddings) == (64, 2, 2048)
    norms = {name: p for name, p in model.named_parameters() if name.endswith("norm.weight")}
    assert norms and all(not torch.allclose(p, torch.ones_like(p)) for p in norms.values())


def test_llama_features(models):
    cfg = AutoModelForCausalLM.from_pretrained(models["llama"]).config
    assert cfg.rope_parameters["rope_type"] == "llama3"
    assert cfg.rope_parameters["factor"] == 8.0
    assert cfg.rope_parameters["original_max_position_embeddings"] == 64
    assert cfg.tie_word_embeddings is False


def test_qwen2_features(models):
    model = AutoModelForCausalLM.from_pretrained(models["qwen2"])
    assert model.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # Like real tied checkpoints, lm_head is not stored.
    assert "lm_head.weight" not in load_file(models["qwen2"] / "model.safetensors")
    attn = model.model.layers[0].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert proj.bias is not None and proj.bias.abs().max() > 0.01


def test_qwen3_features(models):
    model = AutoModelForCausalLM.from_pretrained(models["qwen3"])
    cfg = model.config
    assert cfg.head_dim == 32 != cfg.hidden_size // cfg.num_attention_heads
    assert cfg.tie_word_embeddings is False
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (32,)
    assert not torch.allclose(attn.q_norm.weight, torch.ones(32))
    assert not torch.allclose(attn.k_norm.weight, torch.ones(32))


def test_mistral_features(models):
    cfg = AutoModelForCausalLM.from_pretrained(models["mistral"]).config
    assert cfg.sliding_window is None
    assert cfg.tie_word_embeddings is False


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_are_not_near_ties(models, arch):
    # Greedy comparisons against a reference need a clear top-1; random models with the
    # usual 0.02 init are nearly flat.
    model = AutoModelForCausalLM.from_pretrained(models[arch])
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, model.config.vocab_size, (8, 16), generator=g)
    with torch.no_grad():
        top2 = model(x).logits.topk(2, dim=-1).values
    gaps = (top2[..., 0] - top2[..., 1]).flatten()
    assert gaps.median() > 0.05
    assert (gaps < 1e-3).float().mean() < 0.02


def test_deterministic_per_seed(tmp_path):
    a = write_tiny_model(tmp_path / "a", arch="qwen2", seed=3)
    b = write_tiny_model(tmp_path / "b", arch="qwen2", seed=3)
    c = write_tiny_model(tmp_path / "c", arch="qwen2", seed=4)
    assert _sha256(a / "model.safetensors") == _sha256(b / "model.safetensors")
    assert _sha256(a / "tokenizer.json") == _sha256(b / "tokenizer.json")
    ta, tc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert ta.keys() == tc.keys()
    assert all(not torch.equal(ta[k], tc[k]) for k in ta)


def test_chat_template(models):
    tok = AutoTokenizer.from_pretrained(models["qwen2"])
    assert (
        tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n"
    )
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "  leading spaces, trailing spaces  ",
        "Grüße aus Zürich, naïve café, crème brûlée",
        "東京と北京 — 日本語のテキスト",
        "emoji 🚀🎉 and combining e\u0301 and \u200b zero width",
        "tabs\tand\nnewlines\r\nand a NUL \x00 byte",
        "hello .  world ,",  # spaces before punctuation must survive decoding
    ],
)
def test_tokenizer_round_trip(models, text):
    tok = AutoTokenizer.from_pretrained(models["llama"])
    ids = tok.encode(text, add_special_tokens=False)
    assert all(i < len(tok) for i in ids)
    assert tok.decode(ids) == text


def test_tokenizer_special_tokens(models):
    tok = AutoTokenizer.from_pretrained(models["mistral"])
    assert 1000 <= len(tok) <= 2000
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tok.encode(t, add_special_tokens=False) == [tok.convert_tokens_to_ids(t)]


def test_cli_writes_loadable_model(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["tiny-model", str(out), "--arch", "qwen3"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen3"
    AutoTokenizer.from_pretrained(out)
    # Rewriting our own model needs no --force.
    assert main(["tiny-model", str(out), "--arch", "llama", "--seed", "1"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"


def test_cli_refuses_foreign_directory(tmp_path, capsys):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["tiny-model", str(out), "--arch", "qwen2"]) == 2
    assert "not a Talaria tiny model" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    assert main(["tiny-model", str(out), "--arch", "qwen2", "--force"]) == 0
    assert not (out / "notes.txt").exists()
    assert (out / "config.json").exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_model, "_write_weights", boom)
    with pytest.raises(KeyboardInterrupt):
        write_tiny_model(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_ensure_tiny_model(tmp_path):
    out = tmp_path / "m"
    assert ensure_tiny_model(out, arch="qwen2") == out
    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    ensure_tiny_model(out, arch="qwen2")
    assert weights.stat().st_mtime_ns == mtime  # finished checkpoint: reused as is
    ensure_tiny_model(out, arch="mistral")  # ours, but from other parameters: regenerated
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "mistral"


def test_unknown_arch_or_size(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        write_tiny_model(tmp_path / "x", arch="gpt2")
    with pytest.raises(ValueError, match="unknown size"):
        write_tiny_model(tmp_path / "x", size="7b")
    assert not (tmp_path / "x").exists()
