"""Per-sequence KV cache, kept in the CVM.

Shape legend: L layers, S cached positions (capacity C >= S), Hkv kv heads, D head dim.
"""

from __future__ import annotations

import torch


class KVCache:
    """k, v: [L, C, Hkv, D] float32; positions [0, length) are valid. Grows by doubling."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, max_len: int, initial: int = 64):
        self.max_len = max_len
        cap = min(initial, max_len)
        self.k = torch.zeros(num_layers, cap, num_kv_heads, head_dim)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # positions whose k/v are complete in every layer

    def _reserve(self, needed: int) -> None:
        cap = self.k.shape[1]
        if needed <= cap:
            return
        if needed > self.max_len:
            raise ValueError(f"sequence of {needed} positions exceeds the context window ({self.max_len})")
        new_cap = min(max(needed, 2 * cap), self.max_len)
        grow = new_cap - cap
        pad = self.k.new_zeros(self.k.shape[0], grow, *self.k.shape[2:])
        self.k = torch.cat([self.k, pad], 1)
        self.v = torch.cat([self.v, pad.clone()], 1)

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [T, Hkv, D] at positions [start, start+T); return views of [0, start+T)."""
        end = start + k.shape[0]
        self._reserve(end)
        self.k[layer, start:end] = k
        self.v[layer, start:end] = v
        return self.k[layer, :end], self.v[layer, :end]
