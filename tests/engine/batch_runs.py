"""Eight prompts of different lengths and a runner that generates them together (shared by the
batching and pad-scheme tests; `from batch_runs import prompts, run_all`)."""

from __future__ import annotations

import asyncio

import torch

from talaria_proxy.sampling import SamplingParams

LENGTHS = [1, 3, 7, 12, 20, 33, 50, 75]  # 8 sequences of different prompt lengths


def prompts(vocab):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in LENGTHS]


async def run_all(rt, ps, max_tokens=24):
    await rt.engine.start()
    try:
        async def one(p):
            params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
            return [ev.token.token_id async for ev in rt.engine.generate(p, params)]

        return await asyncio.gather(*[one(p) for p in ps])
    finally:
        await rt.engine.stop()
