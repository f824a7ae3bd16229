"""The weight-free decoder skeleton in the CVM (Llama / Mistral / Qwen2 / Qwen3 family).

One `forward` processes a step of several sequences at once. Every linear op is one call through
`MaskedLinearClient` carrying the rows of *all* sequences, so a step costs 4*L (+1 when some
sequence needs logits) cloud calls whatever the batch. Per layer:

    x = rmsnorm(h);  q,k,v = linear(qkv, x);  [q/k norm];  RoPE;  cache;  a = attention
    h = h + linear(o, a)
    x = rmsnorm(h);  g,u = linear(gate_up, x);  h = h + linear(down, silu(g) * u)
    logits = linear(lm_head, rmsnorm(h_last))

Shape legend: N rows in the step, T rows of one sequence, d hidden, H/Hkv heads, D head dim,
I MLP width, V vocab, B sequences that need logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from talaria_proxy.kv_cache import KVCache
from talaria_proxy.layers import Rotary, attention, decode_attention, rms_normalize
from talaria_proxy.masked_linear import MaskedLinearClient
from talaria_wire import ArchSpec, OpKey


@dataclass
class SeqChunk:
    """The part of one sequence processed in a step."""

    cache: KVCache
    token_ids: list[int]  # T tokens at positions [start, start+T)
    start: int
    need_logits: bool  # True when the chunk ends at the sequence's last known token
    all_logits: bool = False  # logits of every row, not just the last (prompt logprobs of echo requests)


class SplitModel:
    def __init__(self, arch: ArchSpec, cvm_params: dict[str, torch.Tensor], attention_scaling: float,
                 linear: MaskedLinearClient):
        self.arch = arch
        self.linear = linear
        self.embed = cvm_params["embed_tokens"].float()  # [V, d]: provisioned to the attested CVM
        self.rotary = Rotary(cvm_params["rope_inv_freq"], attention_scaling)
        self.q_norm = [cvm_params.get(f"{i}.q_norm") for i in range(arch.num_layers)]  # [D] gains (Qwen3)
        self.k_norm = [cvm_params.get(f"{i}.k_norm") for i in range(arch.num_layers)]
        self.op_names = {(i, op): OpKey(i, op).name for i in range(arch.num_layers) for op in ("qkv", "o", "gate_up", "down")}

    def new_cache(self, max_len: int | None = None) -> KVCache:
        a = self.arch
        return KVCache(a.num_layers, a.num_kv_heads, a.head_dim, max_len or a.max_position_embeddings)

    def forward(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """Run one step; returns logits [R, V] float32, in chunk order: every row of a chunk with
        all_logits, the last row of one with need_logits, nothing of the others."""
        a = self.arch
        eps = a.rms_norm_eps
        lens = [len(c.token_ids) for c in chunks]
        ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long)  # [N]
        positions = torch.cat([torch.arange(c.start, c.start + n) for c, n in zip(chunks, lens)])  # [N]
        cos, sin = self.rotary.cos_sin(positions)  # [N, D]
        h = self.embed[ids]  # [N, d]
        for i in range(a.num_layers):
            qkv = self.linear(self.op_names[i, "qkv"], rms_normalize(h, eps))  # [N, (H + 2 Hkv) D]
            q, k, v = qkv.split([a.q_size, a.kv_size, a.kv_size], dim=-1)
            q = q.view(-1, a.num_heads, a.head_dim)  # [N, H, D]
            k = k.view(-1, a.num_kv_heads, a.head_dim)  # [N, Hkv, D]
            v = v.view(-1, a.num_kv_heads, a.head_dim)
            if a.qk_norm:
                q = rms_normalize(q, eps) * self.q_norm[i]
                k = rms_normalize(k, eps) * self.k_norm[i]
            q = Rotary.apply(q, cos, sin)
            k = Rotary.apply(k, cos, sin)
            h = h + self.linear(self.op_names[i, "o"], self._attend(i, chunks, lens, q, k, v))  # [N, d]
            gate, up = self.linear(self.op_names[i, "gate_up"], rms_normalize(h, eps)).chunk(2, dim=-1)  # [N, I] each
            h = h + self.linear(self.op_names[i, "down"], F.silu(gate) * up)
        for c, n in zip(chunks, lens):
            c.cache.length = c.start + n
        rows, end = [], 0
        for c, n in zip(chunks, lens):
            end += n
            if c.all_logits:  # only echo requests pay the LM head on every prompt row
                rows.extend(range(end - n, end))
            elif c.need_logits:
                rows.append(end - 1)
        if not rows:
            return torch.empty(0, a.vocab_size)
        return self.linear("lm_head", rms_normalize(h[torch.tensor(rows, dtype=torch.long)], eps))  # [R, V]

    def _attend(self, layer: int, chunks: list[SeqChunk], lens: list[int], q, k, v) -> torch.Tensor:
        """Write the step's k, v into each sequence's cache and attend: [N, H*D]. Sequences that
        add one token (decoding) attend as one batch; longer chunks (prefill) one by one."""
        window = self.arch.sliding_window
        outs: list[torch.Tensor | None] = []
        singles: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (chunk, row, k_all, v_all)
        row = 0
        for j, (c, n) in enumerate(zip(chunks, lens)):
            k_all, v_all = c.cache.write(layer, c.start, k[row : row + n], v[row : row + n])  # [S, Hkv, D]
            if n == 1 and len(chunks) > 1:
                singles.append((j, row, k_all, v_all))
                outs.append(None)
            else:
                outs.append(attention(q[row : row + n], k_all, v_all, c.start, window))  # [T, H*D]
            row += n
        if singles:
            js, rows, ks, vs = zip(*singles)
            batched = decode_attention(q[list(rows)], list(ks), list(vs), [chunks[j].start for j in js], window)
            for b, j in enumerate(js):
                outs[j] = batched[b : b + 1]
        return torch.cat(outs)
