"""The attacker's own copy of the model: public architecture + the weights the cloud already owns.

In Talaria (arXiv 2603.00196) the cloud owns the weights and is the attacker, so it may run the
model on any text it likes. What it needs is the exact input of every outsourced op, as the CVM
computes it (see `talaria_proxy.model`):

    qkv:     rmsnorm(h)            (gain-free: the cloud folded g into W_qkv)
    o:       attention output a    [H*D]
    gate_up: rmsnorm(h + a W_o)    (gain-free)
    down:    silu(g) * u           [I]

This is an independent re-implementation from the checkpoint (weights fused and gain-folded by
`cloud_backend.checkpoint`, i.e. as the cloud holds them); tests check it against HF transformers.
Two entry points:
  * `sequence_inputs(ids)`: teacher-forced inputs of every op for whole sequences (inverter
    training data, tests);
  * `candidate_inputs(cache, hyps, candidates, stop)`: the op input at the next position for every
    candidate token at once, over the cached prefixes of G hypotheses: the inner loop of the
    token-by-token matcher of "Hidden No More" (arXiv 2505.18332).

Shape legend: B sequences (or prefix hypotheses), T tokens per sequence, G hypotheses in one pass,
C candidates, S cached prefix positions, L layers, d hidden, H/Hkv heads, D head dim, I MLP width,
V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from talaria_wire import OpKey


def rms_nogain(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dim (float32, the CVM's convention)."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@dataclass
class PrefixCache:
    """K/V of B prefix hypotheses of one sequence, all of the same length: [B, L, S_max, Hkv, D]."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0


class PublicModel:
    def __init__(self, model_dir: str | Path, dtype: torch.dtype = torch.float32):
        from cloud_backend.checkpoint import load_prepared_model

        prepared = load_prepared_model(str(model_dir), dtype=dtype)
        self.arch = a = prepared.arch
        self.dtype = dtype
        self.weights = {name: (lw.weight, lw.bias) for name, lw in prepared.ops.items()}  # W: [d_in, d_out]
        self.embed = prepared.cvm_params["embed_tokens"].float()  # [V, d]
        self.inv_freq = prepared.cvm_params["rope_inv_freq"].float()  # [D/2]
        self.rope_scale = float(prepared.attention_scaling)
        self.q_norm = [prepared.cvm_params.get(f"{i}.q_norm") for i in range(a.num_layers)]
        self.k_norm = [prepared.cvm_params.get(f"{i}.k_norm") for i in range(a.num_layers)]
        self.eps = a.rms_norm_eps

    # -- building blocks -----------------------------------------------------------------------
    def normalized_embeddings(self) -> torch.Tensor:
        """rmsnorm(E) [V, d]: exactly what layer-0 qkv receives for each token id (unmasked)."""
        return rms_nogain(self.embed, self.eps)

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weights[name]
        y = x.to(w.dtype) @ w
        return (y if b is None else y + b).float()

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [R, heads, D]; rotate-half RoPE at `positions` [R]."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [R, D/2]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale  # [R, D]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos[:, None, :] + rotated * sin[:, None, :]

    def _blocks(self, h, positions, attend, stop: OpKey | None, capture: dict | None):
        """Run layers on rows h [R, d]; attend(i, q, k, v) -> [R, H*D]. Returns the input of `stop`."""
        a = self.arch
        last = a.num_layers - 1 if stop is None else stop.layer
        for i in range(last + 1):
            x = rms_nogain(h, self.eps)  # qkv input
            if capture is not None:
                capture[f"{i}.qkv"] = x
            if stop == OpKey(i, "qkv"):
                return x
            q, k, v = self._linear(f"{i}.qkv", x).split([a.q_size, a.kv_size, a.kv_size], -1)
            q = q.reshape(-1, a.num_heads, a.head_dim)  # [R, H, D]
            k = k.reshape(-1, a.num_kv_heads, a.head_dim)  # [R, Hkv, D]
            v = v.reshape(-1, a.num_kv_heads, a.head_dim)
            if a.qk_norm:
                q = rms_nogain(q, self.eps) * self.q_norm[i]
                k = rms_nogain(k, self.eps) * self.k_norm[i]
            att = attend(i, self._rope(q, positions), self._rope(k, positions), v)  # [R, H*D]
            if capture is not None:
                capture[f"{i}.o"] = att
            if stop == OpKey(i, "o"):
                return att
            h = h + self._linear(f"{i}.o", att)
            x = rms_nogain(h, self.eps)  # gate_up input
            if capture is not None:
                capture[f"{i}.gate_up"] = x
            if stop == OpKey(i, "gate_up"):
                return x
            gate, up = self._linear(f"{i}.gate_up", x).chunk(2, -1)  # [R, I] each
            act = F.silu(gate) * up  # down input
            if capture is not None:
                capture[f"{i}.down"] = act
            if stop == OpKey(i, "down"):
                return act
            h = h + self._linear(f"{i}.down", act)
        return rms_nogain(h, self.eps)  # lm_head input

    # -- whole sequences (teacher forcing) -----------------------------------------------------
    @torch.no_grad()
    def sequence_inputs(self, ids: torch.Tensor, stop: OpKey | None = None) -> dict[str, torch.Tensor]:
        """ids [B, T] -> {op name: [B*T, d_in]} for every block op up to `stop` (None: all), rows in
        (sequence, position) order."""
        a = self.arch
        B, T = ids.shape
        groups = a.num_heads // a.num_kv_heads
        positions = torch.arange(T).repeat(B)  # [B*T]
        mask = None
        if a.sliding_window is not None and T > a.sliding_window:
            pos = torch.arange(T)
            mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - a.sliding_window)  # [T, T]

        def attend(i, q, k, v):
            qh = q.view(B, T, a.num_heads, a.head_dim).transpose(1, 2)  # [B, H, T, D]
            kh = k.view(B, T, a.num_kv_heads, a.head_dim).transpose(1, 2).repeat_interleave(groups, 1)
            vh = v.view(B, T, a.num_kv_heads, a.head_dim).transpose(1, 2).repeat_interleave(groups, 1)
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=mask is None,
                                                 scale=a.head_dim**-0.5)  # [B, H, T, D]
            return out.transpose(1, 2).reshape(B * T, a.q_size)

        capture: dict[str, torch.Tensor] = {}
        self._blocks(self.embed[ids.reshape(-1)], positions, attend, stop, capture)
        return capture

    # -- candidates over a cached prefix -------------------------------------------------------
    def new_prefix(self, max_len: int, hypotheses: int = 1) -> PrefixCache:
        a = self.arch
        shape = (hypotheses, a.num_layers, max_len, a.num_kv_heads, a.head_dim)
        return PrefixCache(torch.zeros(shape), torch.zeros(shape))

    @torch.no_grad()
    def candidate_inputs(self, cache: PrefixCache, hyps: torch.Tensor, candidates: torch.Tensor, stop: OpKey,
                         capture: dict | None = None):
        """Input of op `stop` at position S = cache.length, for every candidate token [C] appended to
        each of the prefix hypotheses `hyps` [G] (indices into the cache).

        Returns (x [G, C, d_in], kv) with kv[i] = (k, v) [G, C, Hkv, D] of the candidates at every
        layer passed; `write_kv` stores the chosen ones. `capture`, if given, also receives the
        inputs of every op passed on the way ({op name: [G, C, d_in]}).
        """
        a = self.arch
        S = cache.length
        G, C = hyps.shape[0], candidates.shape[0]
        groups = a.num_heads // a.num_kv_heads
        scale = a.head_dim**-0.5
        lo = 0 if a.sliding_window is None else max(0, S + 1 - a.sliding_window)  # window includes the candidate
        kc, vc = cache.k[hyps, :, lo:S], cache.v[hyps, :, lo:S]  # [G, L, S', Hkv, D]
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def attend(i, q, k, v):
            k, v = k.view(G, C, a.num_kv_heads, a.head_dim), v.view(G, C, a.num_kv_heads, a.head_dim)
            kv[i] = (k, v)
            qg = q.view(G, C, a.num_kv_heads, groups, a.head_dim)  # query head n*groups+j reads kv head n
            s_pre = torch.einsum("acngd,asnd->acngs", qg, kc[:, i]) * scale  # [G, C, Hkv, g, S']
            s_self = torch.einsum("acngd,acnd->acng", qg, k)[..., None] * scale  # [G, C, Hkv, g, 1]
            w = torch.softmax(torch.cat([s_pre, s_self], -1), -1)
            out = torch.einsum("acngs,asnd->acngd", w[..., :-1], vc[:, i]) + w[..., -1:] * v[:, :, :, None, :]
            return out.reshape(G * C, a.q_size)

        positions = torch.tensor([S])  # one position for all rows: RoPE tables broadcast
        h = self.embed[candidates].repeat(G, 1)  # [G*C, d]
        sub: dict[str, torch.Tensor] = {}
        x = self._blocks(h, positions, attend, stop, sub)
        if capture is not None:
            capture.update({name: t.view(G, C, -1) for name, t in sub.items()})
        return x.view(G, C, -1), kv

    @staticmethod
    def write_kv(cache: PrefixCache, kv: dict, hyps: torch.Tensor, rows: torch.Tensor, picks: torch.Tensor) -> None:
        """cache[hyps[j]] at position cache.length <- K/V of candidate picks[j] in pass row rows[j],
        for every layer the pass reached. The caller advances cache.length once per position."""
        for i, (k, v) in kv.items():
            cache.k[hyps, i, cache.length] = k[rows, picks]
            cache.v[hyps, i, cache.length] = v[rows, picks]
