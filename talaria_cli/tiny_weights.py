"""The tiny models' architectures and weights: a transformers config per (arch, size) and
seeded random tensors, drawn so that activations stay O(1) and greedy decoding is not decided
by near-ties (see `init_tensor`). Used by `talaria_cli.tiny_model`, which explains the choices.
"""

from __future__ import annotations

import hashlib

from talaria_cli.tiny_tokenizer import ENDOFTEXT, IM_END

ARCHS = ("llama", "qwen2", "qwen3", "mistral")
SIZES = ("tiny", "0.5b")


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def build_config(arch: str, size: str, tokenizer_vocab: int, special_ids: dict[str, int]):
    """Return the transformers config for (arch, size); `talaria_cli.tiny_model` says why these."""
    import torch
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")

    if size == "tiny":
        dims = dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=160,
            max_position_embeddings=2048,
            vocab_size=_round_up(tokenizer_vocab, 8),
        )
        llama3_original_max = 64  # short enough that all three llama3 frequency bands occur
        qwen3_head_dim = 32  # != 64 / 4
    else:  # Qwen2-0.5B dimensions
        dims = dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            max_position_embeddings=32768,
            vocab_size=151936,  # larger than the tokenizer, as in the real Qwen models
        )
        llama3_original_max = 8192  # as in Llama 3.1
        qwen3_head_dim = 128  # != 896 / 14, as Qwen3 itself decouples head_dim

    common = dict(
        **dims,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        # Documents the scale of the weights (std of the hidden-size projections); the weights
        # themselves are drawn by `init_tensor`, not by transformers.
        initializer_range=round(dims["hidden_size"] ** -0.5, 4),
        bos_token_id=special_ids[ENDOFTEXT],
        eos_token_id=special_ids[IM_END],
        pad_token_id=special_ids[ENDOFTEXT],
        use_cache=True,
    )

    if arch == "llama":
        config = LlamaConfig(
            **common,
            tie_word_embeddings=False,
            attention_bias=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": llama3_original_max,
            },
        )
        config.architectures = ["LlamaForCausalLM"]
    elif arch == "qwen2":
        # Qwen2 always has biases on q/k/v (hard-wired in the modeling code).
        config = Qwen2Config(
            **common,
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        config.architectures = ["Qwen2ForCausalLM"]
    elif arch == "qwen3":
        config = Qwen3Config(
            **common,
            head_dim=qwen3_head_dim,
            tie_word_embeddings=False,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        config.architectures = ["Qwen3ForCausalLM"]
    else:  # mistral
        config = MistralConfig(
            **common,
            tie_word_embeddings=False,
            sliding_window=None,  # full attention: the engine does not model a window
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        config.architectures = ["MistralForCausalLM"]
    config.dtype = torch.float32
    return config


def _generator(seed: int, name: str):
    """A generator seeded from (seed, tensor name): each tensor is independent of the
    order in which tensors are produced, and of every other tensor's shape."""
    import torch

    digest = hashlib.sha256(f"talaria-tiny/{seed}/{name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def init_tensor(name: str, shape, seed: int, hidden_size: int, tied: bool, used_vocab: int):
    """Draw one tensor.

    The scales are chosen so that activations stay O(1) through the layers and the final
    logits have a standard deviation of about 2: with the usual 0.02 init the logits of a
    random model are nearly flat and greedy decoding is decided by near-ties, which makes
    token-for-token comparisons against a reference fragile. Norm gains and biases are
    deliberately not at their trivial values (1 and 0) so that code folding norm gains into
    the next projection, or handling biases, is actually exercised. Vocabulary rows past
    `used_vocab` (the tokenizer's size) are near zero, like untrained rows in real
    checkpoints, so greedy decoding only ever picks tokens the tokenizer can decode.
    """
    import torch

    g = _generator(seed, name)
    randn = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    # lm_head rows of this scale turn a unit-RMS (normalized) hidden state into logits of std ~2.
    head_scale = 2.0 / hidden_size**0.5
    # Scales (per element) of what is added to the residual stream. Untied: all at unit scale.
    # Tied: the embedding is also the lm_head, so it is small (head_scale); were it a large
    # part of the final hidden state, every token would predict itself, and were everything
    # else uniformly large, the current token would be drowned and greedy decoding would fall
    # into a fixed point. Large MLP outputs (a random function of the token, from layer 0 on)
    # with unit-scale attention outputs keep the output varied and context dependent.
    if tied:
        embed_scale, attn_out_scale, mlp_out_scale = head_scale, 1.0, 4.0
    else:
        embed_scale, attn_out_scale, mlp_out_scale = 1.0, 1.0, 1.0
    if name.endswith("norm.weight"):  # input/post-attention/final norms, Qwen3 q_norm/k_norm
        return 1.0 + 0.1 * randn
    if name.endswith(".bias"):
        return 0.2 * randn
    if name.endswith(("lm_head.weight", "embed_tokens.weight")):
        scale = head_scale if name.endswith("lm_head.weight") else embed_scale
        randn[used_vocab:] *= 0.01
        return randn * scale
    if randn.dim() == 2:  # nn.Linear weight [out, in], scaled by 1/sqrt(in) for a given output scale
        if name.endswith("o_proj.weight"):
            out_scale = attn_out_scale
        elif name.endswith("down_proj.weight"):
            out_scale = mlp_out_scale
        else:  # q/k/v/gate/up: read a normalized input, produce unit-scale activations
            out_scale = 1.0
        return randn * (out_scale / shape[1] ** 0.5)
    raise ValueError(f"no init rule for parameter {name} {tuple(shape)}")


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint tensors, taken from the real model class built on
    the meta device (no memory, no time), so they always match what from_pretrained expects."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        # Like the real tied checkpoints: lm_head is not stored, it is tied on load.
        shapes.pop("lm_head.weight", None)
    return shapes


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
