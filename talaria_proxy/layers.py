"""Weight-free model math run in the CVM: RMSNorm without gain, RoPE, grouped-query attention.

The cloud folded every norm gain into the next weight, so `rms_normalize` has no parameters.
Numerics follow transformers' Llama/Qwen code (float32 norms and rotary tables).

Shape legend: N rows (tokens of all sequences in a step), T tokens of one sequence in this step,
S cached positions, H query heads, Hkv kv heads, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dim, in float32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class Rotary:
    """cos/sin tables from inv_freq [D/2] (computed by the cloud with transformers, incl. scaling)."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0):
        self.inv_freq = inv_freq.float()
        self.scaling = attention_scaling

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [N] -> cos, sin: [N, D]."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [N, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [N, D]
        return emb.cos() * self.scaling, emb.sin() * self.scaling

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [N, heads, D]; rotate-half convention of the HF Llama family."""
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos[:, None, :] + rotated * sin[:, None, :]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, sliding_window: int | None) -> torch.Tensor:
    """Causal GQA attention of one sequence's new tokens over its cache.

    q: [T, H, D] at positions [start, start+T); k, v: [S, Hkv, D] with S = start + T.
    Returns [T, H*D].
    """
    T, H, D = q.shape
    S, Hkv, _ = k.shape
    groups = H // Hkv
    qh = q.transpose(0, 1)  # [H, T, D]
    kh = k.transpose(0, 1).repeat_interleave(groups, dim=0)  # [H, S, D]
    vh = v.transpose(0, 1).repeat_interleave(groups, dim=0)  # [H, S, D]
    mask = None
    if T > 1 or (sliding_window is not None and S > sliding_window):
        q_pos = torch.arange(start, start + T)[:, None]  # [T, 1]
        k_pos = torch.arange(S)[None, :]  # [1, S]
        mask = k_pos <= q_pos  # [T, S]
        if sliding_window is not None:
            mask &= k_pos > q_pos - sliding_window
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=D**-0.5)  # [H, T, D]
    return out.transpose(0, 1).reshape(T, H * D)


def decode_attention(q: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor], positions: list[int],
                     sliding_window: int | None) -> torch.Tensor:
    """Attention of B sequences' single new tokens over their caches, as one padded batch.

    q: [B, H, D], the token of sequence b at positions[b]; ks[b], vs[b]: [S_b, Hkv, D] with
    S_b = positions[b] + 1. Returns [B, H*D], equal to `attention` per sequence. One SDPA call
    instead of B: a decode step of 8 sequences runs a few ops per layer instead of ~10 per sequence.
    """
    B, H, D = q.shape
    Hkv = ks[0].shape[1]
    k = pad_sequence(ks, batch_first=True).transpose(1, 2)  # [B, Hkv, S, D], zero-padded
    v = pad_sequence(vs, batch_first=True).transpose(1, 2)
    S = k.shape[2]
    k_pos = torch.arange(S)[None, :]  # [1, S]
    q_pos = torch.tensor(positions)[:, None]  # [B, 1]
    mask = k_pos <= q_pos  # [B, S]: each sequence's own positions, not the padding
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask[:, None, None, :], scale=D**-0.5,
                                         enable_gqa=H != Hkv)  # [B, H, 1, D]
    return out.reshape(B, H * D)
