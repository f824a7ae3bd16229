"""The step profiler's bookkeeping, with a fake transport: no cloud, no model."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.breakdown import Counters, TimingTransport, attention_timer, pad_timer, split_step, summarise
from talaria_proxy.transports.base import LinearTransport, PendingCall


class FakeTransport(LinearTransport):
    name = "fake"

    def __init__(self):
        self.calls = []
        self.abandoned = 0
        self.closed = False

    def begin(self, op, tensor):
        self.calls.append(op)

        def release(ok):
            self.abandoned += not ok

        return PendingCall(lambda: tensor * 2, release)

    def close(self):
        self.closed = True


def test_timing_transport_delegates_and_charges_the_gemm_table():
    table = {("0.qkv", 3): {"gemm_s": 0.002, "serialise_s": 0.001, "bytes": 100},
             ("lm_head", 1): {"gemm_s": 0.010, "serialise_s": 0.003, "bytes": 900}}
    inner = FakeTransport()
    backend = TimingTransport(inner, table)
    y = backend.linear("0.qkv", torch.ones(3, 4))
    backend.linear("lm_head", torch.ones(1, 4))
    assert torch.equal(y, torch.full((3, 4), 2.0)) and inner.calls == ["0.qkv", "lm_head"]
    c = backend.counters
    assert c.calls == 2 and c.payload_bytes == 1000
    assert c.gemm_s == pytest.approx(0.012) and c.serialise_s == pytest.approx(0.004)
    assert c.round_trip_s > 0
    backend.linear("0.qkv", torch.ones(5, 4))  # a shape the table was not built for must not look free
    assert math.isnan(backend.counters.gemm_s) and math.isnan(backend.counters.payload_bytes)
    backend.close()
    assert inner.closed


def test_timing_transport_passes_an_abandon_on_and_charges_nothing():
    inner = FakeTransport()
    backend = TimingTransport(inner, {})
    backend.begin("0.o", torch.ones(1, 4)).abandon()
    assert inner.abandoned == 1 and backend.counters.calls == 0


def test_pad_waits_are_their_own_component():
    c = Counters(calls=9, round_trip_s=0.009, gemm_s=0.003, attention_s=0.001, sampling_s=0.0005, pad_wait_s=0.004)
    d = split_step(0.02, c, mask_s=0.006)  # the pool's wait happened inside the scheme's mask
    parts = ("cloud_gemm_ms", "transport_ms", "masking_ms", "pad_wait_ms", "attention_ms", "sampling_ms", "other_cvm_ms")
    assert sum(d[p] for p in parts) == pytest.approx(d["total_ms"])
    assert d["masking_ms"] == pytest.approx(2.0) and d["pad_wait_ms"] == pytest.approx(4.0)


def test_pad_timer_times_encode_and_decode_and_restores():
    import talaria_proxy.schemes.pad as pad_mod

    original = pad_mod.encode_rows, pad_mod.decode_rows
    c = Counters()
    with pad_timer(c):
        x_bar, f = pad_mod.encode_rows(torch.randn(3, 8), 30, bias=True)
        y = pad_mod.decode_rows(x_bar[:, :2], f, torch.zeros(2, dtype=torch.int64))
    assert c.encode_s > 0 and c.decode_s > 0 and y.shape == (3, 2)
    assert (pad_mod.encode_rows, pad_mod.decode_rows) == original


def test_split_step_components_add_up_to_the_step():
    c = Counters(calls=9, round_trip_s=0.009, gemm_s=0.003, attention_s=0.001, sampling_s=0.0005)
    d = split_step(0.015, c, mask_s=0.002)
    parts = ("cloud_gemm_ms", "transport_ms", "masking_ms", "attention_ms", "sampling_ms", "other_cvm_ms")
    assert sum(d[p] for p in parts) == pytest.approx(d["total_ms"])
    assert d["transport_ms"] == pytest.approx(6.0) and d["other_cvm_ms"] == pytest.approx(2.5)
    assert d["transport_ms_per_call"] == pytest.approx(6.0 / 9)


def test_split_step_keeps_the_overlapped_share_out_of_the_sum():
    # 0.5 ms of the 2 ms masking ran inside round trips: counting it again would shrink 'other'
    c = Counters(calls=9, round_trip_s=0.009, gemm_s=0.003, attention_s=0.001, sampling_s=0.0005)
    d = split_step(0.015, c, mask_s=0.002, overlap_s=0.0005)
    parts = ("cloud_gemm_ms", "transport_ms", "masking_ms", "attention_ms", "sampling_ms", "other_cvm_ms")
    assert sum(d[p] for p in parts) == pytest.approx(d["total_ms"])
    assert d["masking_ms"] == pytest.approx(1.5) and d["cvm_share_ms"] == pytest.approx(0.5)
    assert d["other_cvm_ms"] == pytest.approx(3.0)


def test_summarise_merges_passes_into_medians():
    def step(total):
        return {"total_ms": total, "cloud_gemm_ms": total / 2}

    raws = [{"arch": {"num_layers": 2}, "batch=1": {"prefill": [step(50)], "decode": [step(10), step(12)],
                                                     "cloud_cpu_s": 0.03, "wall_s": 0.072, "load_avg": 2.0}},
            {"arch": {"num_layers": 2}, "batch=1": {"prefill": [step(70)], "decode": [step(30)],
                                                     "cloud_cpu_s": 0.02, "wall_s": 0.1, "load_avg": 4.0}}]
    s = summarise(raws)
    d = s["batch=1"]["decode"]
    assert d["total_ms"] == 12 and d["cloud_gemm_ms"] == 6 and d["steps"] == 3
    assert d["cloud_cpu_ms_mean"] == pytest.approx(50 / 5)  # 0.05 s over 5 steps incl. prefills
    assert s["batch=1"]["prefill"]["total_ms"] == 60 and d["load_avg"] == 3.0


def test_attention_timer_counts_and_restores():
    import talaria_proxy.model as model_mod
    from talaria_proxy.kv_cache import KVCache

    original, original_write = model_mod.attention, KVCache.write
    c = Counters()
    with attention_timer(c):
        assert model_mod.attention is not original
        q = torch.randn(2, 4, 8)
        model_mod.attention(q, torch.randn(2, 2, 8), torch.randn(2, 2, 8), 0, None)
    assert c.attention_s > 0
    assert model_mod.attention is original and KVCache.write is original_write
