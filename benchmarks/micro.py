"""Micro-measurements that price optimisations the step profile cannot try directly.

    attention_batching     the per-sequence decode attention loop vs one batched SDPA call
(Transports are compared as measured variants of the step profile, not as micro-measurements.)
"""

from __future__ import annotations

import time

from benchmarks.common import median


def _timeit(fn, n: int, stat=median) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return stat(ts)


def attention_batching(arch: dict, batch: int, seq_len: int, reps: int = 20) -> dict[str, float]:
    """Per decode step (all layers): the per-sequence attention loop vs one batched SDPA call."""
    import torch
    import torch.nn.functional as F

    from talaria_proxy.layers import attention

    H, Hkv, D, L = arch["num_heads"], arch["num_kv_heads"], arch["head_dim"], arch["num_layers"]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 1, H, D, generator=g)  # [B, T=1, H, D]
    k = torch.randn(batch, seq_len, Hkv, D, generator=g)  # [B, S, Hkv, D]
    v = torch.randn(batch, seq_len, Hkv, D, generator=g)

    def loop():
        return [attention(q[i], k[i], v[i], seq_len - 1, None) for i in range(batch)]

    def batched():  # [B, H, 1, D] x [B, H, S, D]: GQA by expanding kv heads
        kh = k.transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        vh = v.transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        return F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, scale=D**-0.5)

    return {"loop_ms_per_step": _timeit(loop, reps) * L * 1e3, "batched_ms_per_step": _timeit(batched, reps) * L * 1e3}
