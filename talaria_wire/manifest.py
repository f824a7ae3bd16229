"""The manifest: everything public the CVM needs to build the weight-free model and talk to the cloud."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ArchSpec(BaseModel):
    """Architecture of a Llama/Mistral/Qwen2/Qwen3-family decoder, as the CVM needs it."""

    family: str  # HF model_type: llama, mistral, qwen2, qwen3
    hidden_size: int  # d
    num_layers: int  # L
    num_heads: int  # H (query heads)
    num_kv_heads: int  # Hkv (GQA: H % Hkv == 0)
    head_dim: int  # D
    intermediate_size: int  # I (MLP width)
    vocab_size: int  # V (rows of the embedding table and columns of the LM head)
    rms_norm_eps: float
    qk_norm: bool = False  # Qwen3: RMSNorm over each q/k head before RoPE (gains held by the CVM)
    attention_bias: bool = False  # Qwen2: bias on q,k,v
    tie_word_embeddings: bool = False
    max_position_embeddings: int
    sliding_window: int | None = None  # attend to the last `sliding_window` positions only
    rope_type: str = "default"  # informational; inv_freq itself ships in the CVM parameters
    bos_token_id: int | None = None
    eos_token_ids: list[int] = Field(default_factory=list)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


class OpSpec(BaseModel):
    """One outsourced linear op y = x W (+ b): W is [d_in, d_out]."""

    name: str  # OpKey.name: '3.qkv' or 'lm_head'
    d_in: int
    d_out: int
    bias: bool
    rank: int | None = None  # remo: rank m of this op's public basis (0 < m < d_in)
    w_norm_bits: int | None = None  # pad: ceil(log2 max_j ||W_bar_j||), the bound x_bar is scaled against
    pad_dim: int | None = None  # pad: columns of x_bar and of the pads (d_in, plus 1 for a folded bias)
    bias_bits: int = 0  # pad: the CVM's constant bias coordinate is 2^bias_bits (the bias row holds b / 2^k)


class MaskingSpec(BaseModel):
    """Public masking parameters: anyone (the cloud included) can rebuild M_pub from these."""

    basis_seed: int
    basis: str = "orthonormal-gaussian-v1"  # see talaria_wire.basis


class RingSpec(BaseModel):
    """Public parameters of the `pad` scheme (see talaria_wire/ring.py): residues mod t on the wire."""

    modulus: int  # t
    primes: list[int]  # t = primes[0] * primes[1]
    w_bits: int  # |W_bar| <= 2^w_bits
    fixed_point: str = "col-exp-v1"  # W_bar = round([W; b] 2^g_j), g_j from GET /v1/public/{op}


class Manifest(BaseModel):
    protocol: str
    model_name: str
    scheme: Literal["remo", "pad"] = "remo"  # the cloud's kernel: ReMO float GEMMs or the exact ring
    fingerprint: str  # changes whenever weights, basis or ranks change; sent on every response
    wire_dtype: str  # dtype of x~ on the wire (float64 keeps the mask's rounding off the signal)
    # 'full': the cloud answers y~ = x~ W + b; 'projected': z = (x~ - (x~ B^T) B) W + b with B = M_pub,
    # and the CVM adds (x B^T) R_pub (see cloud_backend/service.py)
    reply: Literal["full", "projected"] = "full"
    reply_dtype: str | None = None  # dtype of the answer (None: wire_dtype)
    max_rows: int | None = None  # rows the cloud accepts per call (413 beyond); the proxy's step must fit
    arch: ArchSpec
    ops: list[OpSpec]
    masking: MaskingSpec | None = None  # remo
    ring: RingSpec | None = None  # pad

    @property
    def answer_dtype(self) -> str:
        return self.reply_dtype or self.wire_dtype

    def op(self, name: str) -> OpSpec:
        for spec in self.ops:
            if spec.name == name:
                return spec
        raise KeyError(name)
