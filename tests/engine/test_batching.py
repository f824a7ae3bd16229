"""Continuous batching: batch results equal solo results; a step costs 4*L + 1 calls."""

from __future__ import annotations

import asyncio

import torch

from batch_runs import LENGTHS, prompts, run_all
from talaria_proxy.runtime import build_runtime
from talaria_proxy.sampling import SamplingParams
from talaria_proxy.scheduler import SchedulerConfig



def test_eight_concurrent_sequences_equal_solo_runs(spy_backend):
    # a small batch budget forces chunked prefill interleaved with decoding
    rt = build_runtime(spy_backend("qwen3"), "remo", scheduler=SchedulerConfig(max_batch_tokens=32))
    ps = prompts(rt.manifest.arch.vocab_size)
    together = asyncio.run(run_all(rt, ps))
    for p, got in zip(ps, together):
        solo_rt = build_runtime(spy_backend("qwen3"), "remo")
        assert asyncio.run(run_all(solo_rt, [p]))[0] == got


def test_each_step_costs_4L_plus_1_calls_carrying_every_sequence(spy_backend):
    backend = spy_backend("llama")
    rt = build_runtime(backend, "remo")
    L = rt.manifest.arch.num_layers
    ps = prompts(rt.manifest.arch.vocab_size)
    backend.calls.clear()
    asyncio.run(run_all(rt, ps, max_tokens=10))
    steps = rt.engine.stats.steps
    assert steps == 10  # one prefill step for all eight (budget 512 rows), then 9 decode steps
    assert len(backend.calls) == steps * (4 * L + 1)
    per_step = [backend.calls[i : i + 4 * L + 1] for i in range(0, len(backend.calls), 4 * L + 1)]
    expected_ops = [f"{i}.{op}" for i in range(L) for op in ("qkv", "o", "gate_up", "down")] + ["lm_head"]
    for step, calls in enumerate(per_step):
        assert [op for op, _ in calls] == expected_ops
        rows = sum(LENGTHS) if step == 0 else len(LENGTHS)
        assert all(x.shape[0] == (8 if op == "lm_head" else rows) for op, x in calls)


def test_steps_and_sampling_run_on_one_engine_thread_with_the_builders_thread_count(spy_backend, monkeypatch):
    """All tensor work of the engine stays on one thread, never the event loop's (see engine.py):
    a second thread running torch ops with several threads would start a second OpenMP team."""
    import threading

    from talaria_proxy import sampling

    seen: dict[str, set] = {"linear": set(), "sample": set(), "threads": set()}
    backend = spy_backend("qwen2")
    inner_linear, inner_sample = backend.linear, sampling.Sampler.sample

    def linear(op, x):
        seen["linear"].add(threading.get_ident())
        seen["threads"].add(torch.get_num_threads())
        return inner_linear(op, x)

    def sample(self, logits):
        seen["sample"].add(threading.get_ident())
        return inner_sample(self, logits)

    backend.linear = linear
    monkeypatch.setattr(sampling.Sampler, "sample", sample)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rt = build_runtime(backend, "remo")
    finally:
        torch.set_num_threads(before)
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread
    asyncio.run(run_all(rt, prompts(rt.manifest.arch.vocab_size)[:3], max_tokens=4))
    assert len(seen["linear"]) == 1 and seen["sample"] == seen["linear"] and loop_thread not in seen["linear"]
    assert seen["threads"] == {2}  # the count at build time, whatever the loop's thread has now


def _first_step_rows(spy_backend, batch_wait_ms: float) -> tuple[int, int]:
    """Two requests, the second 1 ms after the first, into an idle engine: rows of the first
    step's first call, and the rows of both prompts."""
    backend = spy_backend("qwen2")
    rt = build_runtime(backend, "remo", scheduler=SchedulerConfig(batch_wait_ms=batch_wait_ms))
    a, b = prompts(rt.manifest.arch.vocab_size)[2:4]
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)

    async def run():
        await rt.engine.start()
        try:
            async def one(p, delay):
                await asyncio.sleep(delay)
                return [ev async for ev in rt.engine.generate(p, params)]

            await asyncio.gather(one(a, 0), one(b, 0.001))
        finally:
            await rt.engine.stop()

    backend.calls.clear()
    asyncio.run(run())
    return backend.calls[0][1].shape[0], len(a) + len(b)


def test_requests_arriving_together_share_the_first_step(spy_backend):
    rows, both = _first_step_rows(spy_backend, batch_wait_ms=20)
    assert rows == both  # one prefill for both
    rows, both = _first_step_rows(spy_backend, batch_wait_ms=0)
    assert rows < both  # without the window the first request starts alone
