"""Load a Hugging Face causal-LM checkpoint and prepare the fused, norm-folded op weights.

Per decoder layer (W stored as [d_in, d_out], so y = x W + b):
    qkv     = diag(g_in)   @ [Wq; Wk; Wv]^T     (+ [bq; bk; bv] on Qwen2)
    o       = Wo^T
    gate_up = diag(g_post) @ [Wg; Wu]^T
    down    = Wd^T
    lm_head = diag(g_final) @ W_lm^T            (W_lm = E when embeddings are tied)
Folding the RMSNorm gain g into the next weight is exact: (x_hat * g) W = x_hat (diag(g) W), so
the CVM applies a gain-free norm and holds no matrix of the blocks.

Shape legend: d hidden, H query heads, Hkv kv heads, D head dim, I MLP width, V vocab.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import torch

from talaria_wire import ArchSpec, OpKey
from talaria_wire.ops import all_op_keys

log = logging.getLogger(__name__)

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


class CheckpointError(ValueError):
    """The checkpoint cannot be served (unsupported architecture, missing tensors)."""


@dataclass
class LinearWeight:
    weight: torch.Tensor  # [d_in, d_out]
    bias: torch.Tensor | None  # [d_out]


@dataclass
class PreparedModel:
    name: str
    arch: ArchSpec
    ops: dict[str, LinearWeight]  # OpKey.name -> fused weight
    cvm_params: dict[str, torch.Tensor]  # what the attested CVM may hold: embedding, rope, q/k-norm gains
    attention_scaling: float  # RoPE attention factor (1.0 unless a scaling type sets it)
    tokenizer_files: dict[str, str] = field(default_factory=dict)
    weights_digest: str = ""


def arch_from_config(cfg) -> ArchSpec:
    family = getattr(cfg, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise CheckpointError(f"unsupported model_type {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}")
    num_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
    eos = cfg.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    sliding = getattr(cfg, "sliding_window", None)
    if family == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        sliding = None  # Qwen2 only applies its window when use_sliding_window is set
    return ArchSpec(
        family=family,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.rms_norm_eps,
        qk_norm=family == "qwen3",
        attention_bias=bool(getattr(cfg, "attention_bias", family == "qwen2")),
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        max_position_embeddings=cfg.max_position_embeddings,
        sliding_window=sliding,
        rope_type=str(rope.get("rope_type", rope.get("type", "default"))),
        bos_token_id=getattr(cfg, "bos_token_id", None),
        eos_token_ids=eos_ids,
    )


def rope_inv_freq(cfg, head_dim: int) -> tuple[torch.Tensor, float]:
    """inv_freq [D/2] and attention factor exactly as transformers computes them for this config."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv_freq, 1.0
    if rope_type == "dynamic":
        raise CheckpointError("dynamic NTK rope scaling is not supported (inv_freq depends on sequence length)")
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise CheckpointError(f"unsupported rope type {rope_type!r}")
    inv_freq, factor = ROPE_INIT_FUNCTIONS[rope_type](cfg, torch.device("cpu"))
    return inv_freq.float(), float(factor)


def _read_tokenizer_files(path: str) -> dict[str, str]:
    """Tokenizer files of a local checkpoint (the CVM tokenizes; these are public).

    A minimal `config.json` (model_type, tokenizer_class) goes with them: AutoTokenizer picks the
    tokenizer class from the model type when tokenizer_config.json names a generic one
    (transformers 5 builds Qwen2Tokenizer, which splits digits, where the files alone give
    TokenizersBackend), and the proxy must tokenize exactly as AutoTokenizer on the checkpoint.
    """
    import json
    import os

    from transformers import AutoConfig

    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
             "vocab.json", "merges.txt", "generation_config.json")
    out: dict[str, str] = {}
    if os.path.isdir(path):
        for name in names:
            full = os.path.join(path, name)
            if os.path.isfile(full):
                with open(full, encoding="utf-8") as fh:
                    out[name] = fh.read()
    else:  # hub id: let transformers fetch/cache and re-save
        import tempfile

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        with tempfile.TemporaryDirectory() as tmp:
            tok.save_pretrained(tmp)
            for name in os.listdir(tmp):
                with open(os.path.join(tmp, name), encoding="utf-8") as fh:
                    out[name] = fh.read()
    cfg = AutoConfig.from_pretrained(path)
    minimal = {"model_type": cfg.model_type}
    if getattr(cfg, "tokenizer_class", None):
        minimal["tokenizer_class"] = cfg.tokenizer_class
    out["config.json"] = json.dumps(minimal)  # AutoTokenizer reads nothing else of the config
    return out


def load_prepared_model(path: str, dtype: torch.dtype = torch.float64, device: str = "cpu") -> PreparedModel:
    """Load `path` (local dir or hub id) and build the fused ops in `dtype` on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    t0 = time.monotonic()
    cfg = AutoConfig.from_pretrained(path)
    arch = arch_from_config(cfg)
    log.info("loading %s (%s, %d layers, d=%d)", path, arch.family, arch.num_layers, arch.hidden_size)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    state = {k: v.detach() for k, v in hf.state_dict().items()}
    del hf
    log.info("checkpoint read in %.1fs; folding norms and fusing ops", time.monotonic() - t0)

    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"checkpoint has no tensor {name!r}")
        return state[name].to(dtype)

    ops: dict[str, LinearWeight] = {}
    cvm: dict[str, torch.Tensor] = {}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        g_in = get(p + "input_layernorm.weight")  # [d]
        wq, wk, wv = (get(p + f"self_attn.{n}_proj.weight") for n in "qkv")  # [out, d]
        w_qkv = torch.cat([wq, wk, wv], 0).T * g_in[:, None]  # [d, (H+2Hkv)D]
        b_qkv = None
        if p + "self_attn.q_proj.bias" in state:
            b_qkv = torch.cat([get(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        ops[OpKey(i, "qkv").name] = LinearWeight(w_qkv.to(device).contiguous(), _dev(b_qkv, device))
        b_o = get(p + "self_attn.o_proj.bias") if p + "self_attn.o_proj.bias" in state else None
        ops[OpKey(i, "o").name] = LinearWeight(get(p + "self_attn.o_proj.weight").T.to(device).contiguous(), _dev(b_o, device))
        g_post = get(p + "post_attention_layernorm.weight")
        w_gu = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")], 0).T * g_post[:, None]
        ops[OpKey(i, "gate_up").name] = LinearWeight(w_gu.to(device).contiguous(), None)
        ops[OpKey(i, "down").name] = LinearWeight(get(p + "mlp.down_proj.weight").T.to(device).contiguous(), None)
        if arch.qk_norm:
            cvm[f"{i}.q_norm"] = state[p + "self_attn.q_norm.weight"].float().clone()
            cvm[f"{i}.k_norm"] = state[p + "self_attn.k_norm.weight"].float().clone()
    embed = state["model.embed_tokens.weight"]
    lm = state.get("lm_head.weight", embed) if not arch.tie_word_embeddings else embed
    w_lm = lm.to(dtype).T * get("model.norm.weight")[:, None]  # [d, V]
    ops[OpKey(None, "lm_head").name] = LinearWeight(w_lm.to(device).contiguous(), None)
    inv_freq, attn_factor = rope_inv_freq(cfg, arch.head_dim)
    cvm["embed_tokens"] = embed.float().clone()  # [V, d]: provisioned to the attested CVM
    cvm["rope_inv_freq"] = inv_freq  # [D/2]
    digest = hashlib.sha256()
    for key in sorted(ops):
        digest.update(key.encode())
        digest.update(ops[key].weight.flatten()[:4096].cpu().numpy().tobytes())
    name = path.rstrip("/").split("/")[-1]
    model = PreparedModel(name, arch, ops, cvm, attn_factor, _read_tokenizer_files(path), digest.hexdigest()[:16])
    log.info("model ready in %.1fs (%d ops)", time.monotonic() - t0, len(all_op_keys(arch.num_layers)))
    return model


def _dev(t: torch.Tensor | None, device: str) -> torch.Tensor | None:
    return None if t is None else t.to(device).contiguous()
