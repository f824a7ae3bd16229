"""Scheduler: decode first, chunked prefill within the row budget, bounded queue."""

from __future__ import annotations

import pytest

from talaria_proxy.errors import EngineOverloaded
from talaria_proxy.kv_cache import KVCache
from talaria_proxy.sampling import Sampler, SamplingParams
from talaria_proxy.scheduler import Scheduler, SchedulerConfig, Sequence


def seq(name, n_prompt):
    p = SamplingParams()
    return Sequence(name, list(range(n_prompt)), p, Sampler(p, 10), max_len=1000)


def new_cache(max_len):
    return KVCache(1, 1, 2, max_len)


def test_decode_rows_first_then_prefill_chunks_within_budget():
    s = Scheduler(SchedulerConfig(max_batch_tokens=10))
    a, b = seq("a", 4), seq("b", 25)
    s.add(a)
    s.add(b)
    plan = s.schedule(new_cache)
    assert [(c.seq.seq_id, c.num_tokens, c.completes) for c in plan] == [("a", 4, True), ("b", 6, False)]
    a.num_computed, b.num_computed = 4, 6
    a.output_ids.append(1)  # a decodes now: its row goes first, b's prefill takes the rest
    plan = s.schedule(new_cache)
    assert [(c.seq.seq_id, c.num_tokens) for c in plan] == [("a", 1), ("b", 9)]


def test_running_limit_and_bounded_queue():
    s = Scheduler(SchedulerConfig(max_running=1, max_waiting=2))
    s.add(seq("a", 2))
    s.add(seq("b", 2))
    with pytest.raises(EngineOverloaded):
        s.add(seq("c", 2))
    assert [c.seq.seq_id for c in s.schedule(new_cache)] == ["a"]
    assert len(s.waiting) == 1


def test_kv_cache_grows_and_refuses_beyond_window():
    cache = KVCache(2, 1, 2, max_len=100, initial=4)
    import torch

    k = torch.ones(10, 1, 2)
    k_all, _ = cache.write(1, 0, k, k)
    assert k_all.shape[0] == 10 and cache.k.shape[1] >= 10
    with pytest.raises(ValueError, match="context window"):
        cache.write(0, 95, k, k)
