"""Weight-free model math run in the CVM: RMSNorm without gain, RoPE, grouped-query attention.

The cloud folded every norm gain into the next weight, so `rms_normalize` has no parameters.
Numerics follow transformers' Llama/Qwen code (float32 norms and rotary tables).

Shape legend: N rows (tokens of all sequences in a step), T tokens of one sequence in this step,
S cached positions, H query heads, Hkv kv heads, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
