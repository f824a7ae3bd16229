"""The pad scheme in the CVM: the fixed-point bound, exact finishing, concurrency, pads used once,
and residues that say nothing about the prompt (in-process pad clouds: compute and dealer)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from cloud_backend.checkpoint import load_prepared_model
from cloud_backend.ring_kernel import ring_matmul
from cloud_backend.service import MaskedLinearService
from batch_runs import prompts, run_all

from talaria_proxy.runtime import build_runtime
from talaria_proxy.sampling import SamplingParams
from talaria_proxy.schemes.pad import PRODUCT_BITS, decode_rows, encode_rows
from talaria_proxy.transports.in_process import InProcessCloud
from talaria_wire.ring import HALF_T, T, W_BITS, lift, limb_bits



def test_a_row_at_the_bound_multiplies_exactly_and_one_past_it_would_wrap():
    d = 4096
    w_bar = torch.full((d, 1), float(2**W_BITS), dtype=torch.float64)  # ||w_bar|| = 2^29, the worst column
    w_norm_bits = 29
    x = torch.ones(1, d)  # parallel to the column: Cauchy-Schwarz holds with equality
    x_bar, f = encode_rows(x, w_norm_bits, bias=False)
    assert float(x_bar.double().norm()) == 2.0 ** (PRODUCT_BITS - w_norm_bits - 1)  # the bound, reached
    r = torch.randint(0, T, x_bar.shape, dtype=torch.int64)
    v = ring_matmul(torch.remainder(x_bar - r, T), w_bar, limb_bits(d))
    prod = lift(torch.remainder(v + ring_matmul(r, w_bar, limb_bits(d)), T))
    exact = int(x_bar[0, 0]) * 2**W_BITS * d
    assert int(prod[0, 0]) == exact and exact < HALF_T
    assert decode_rows(prod, f, torch.zeros(1, dtype=torch.int64)).item() == pytest.approx(d * 2.0**W_BITS)
    # eight times larger (three bits past the budget) the product passes t/2 and the lift is wrong
    too_big = x_bar * 8
    v = ring_matmul(torch.remainder(too_big - r, T), w_bar, limb_bits(d))
    wrong = lift(torch.remainder(v + ring_matmul(r, w_bar, limb_bits(d)), T))
    assert int(wrong[0, 0]) != 8 * exact


def test_rows_of_any_scale_keep_about_33_bits_and_zero_rows_stay_zero():
    x = torch.tensor([[1e-30, 0.0, 2e-30], [3e4, -1e4, 5.0], [0.0, 0.0, 0.0]])
    x_bar, f = encode_rows(x, w_norm_bits=27, bias=True)
    assert x_bar.shape == (3, 4) and torch.equal(x_bar[2], torch.tensor([0, 0, 0, 2 ** int(f[2])]))
    norms = x_bar.double().norm(dim=1)
    assert (norms <= 2.0 ** (PRODUCT_BITS - 27 - 1) + 1).all() and (norms > 2.0 ** (PRODUCT_BITS - 27 - 3)).all()
    back = torch.ldexp(x_bar[:, :3].double(), -f[:, None].double())
    assert ((back - x.double()).abs() <= torch.ldexp(torch.full((3, 1), 0.5, dtype=torch.float64), -f[:, None].double())).all()
    with pytest.raises(ValueError, match="NaN"):
        encode_rows(torch.tensor([[float("nan")]]), 27, bias=False)


@pytest.fixture(scope="module")
def pad_clouds(tiny_model):
    def make(arch="qwen2"):
        model = str(tiny_model(arch))
        return tuple(MaskedLinearService(load_prepared_model(model, dtype=torch.float64), scheme="pad") for _ in "cd")

    return make


class SpyCloud(InProcessCloud):
    def __init__(self, service):
        super().__init__(service)
        self.calls: list[tuple[str, torch.Tensor]] = []

    def linear(self, op, x):
        self.calls.append((op, x.clone()))
        return super().linear(op, x)


def pad_runtime(services, **kw):
    compute, dealer = services
    return build_runtime(SpyCloud(compute), "pad", dealer=InProcessCloud(dealer, role="pad dealer"),
                         pad_pool_bytes=8 << 20, pad_block_rows=16, **kw)


def test_eight_concurrent_sequences_equal_solo_runs_and_no_pad_is_handed_out_twice(pad_clouds):
    from talaria_proxy.scheduler import SchedulerConfig

    services = pad_clouds("qwen3")
    rt = pad_runtime(services, scheduler=SchedulerConfig(max_batch_tokens=32))
    seen: set[tuple[int, ...]] = set()
    handed = 0
    take = rt.pads.take

    def spy_take(op, rows):
        nonlocal handed
        r, rw = take(op, rows)
        for row in r.tolist():  # 62-bit uniform values: two equal rows mean one pad used twice
            key = (hash(op),) + tuple(row[:4])
            assert key not in seen, f"pad row of {op} handed out twice"
            seen.add(key)
        handed += rows
        assert r.any(dim=1).all() and rw.any(dim=1).all()  # real pads, not the zeroed ones
        return r, rw

    rt.pads.take = spy_take
    try:
        ps = prompts(rt.manifest.arch.vocab_size)
        together = asyncio.run(run_all(rt, ps))
    finally:
        rt.close()
    assert handed == len(seen) and handed > 0
    for p, got in zip(ps, together):
        solo = pad_runtime(services)
        try:
            assert asyncio.run(run_all(solo, [p]))[0] == got
        finally:
            solo.close()


def test_the_same_prompt_twice_produces_unrelated_residues(pad_clouds):
    rt = pad_runtime(pad_clouds("qwen2"))
    try:
        params = SamplingParams(max_tokens=1, temperature=0)

        async def once():
            await rt.engine.start()
            try:
                return [ev async for ev in rt.engine.generate(list(range(5, 65)), params)]
            finally:
                await rt.engine.stop()

        sent = rt.backend.calls
        asyncio.run(once())
        first = [x for op, x in sent if op == "0.qkv"][0]
        sent.clear()
        asyncio.run(once())
        second = [x for op, x in sent if op == "0.qkv"][0]
    finally:
        rt.close()
    assert first.shape == second.shape
    assert (first == second).float().mean() < 1e-3  # 62-bit residues: equal only by chance
    a, b = (first.double() / T - 0.5).flatten(), (second.double() / T - 0.5).flatten()
    corr = float((a * b).mean() / (a.std() * b.std()))
    assert abs(corr) < 0.1, corr  # std ~1/sqrt(3900) = 0.016 for unrelated uniform values


def test_a_pad_runtime_refuses_a_remo_cloud_and_a_dealer_with_other_weights(pad_clouds, tiny_model):
    from talaria_proxy.runtime import ProtocolMismatch
    from talaria_proxy.schemes.base import SchemeMismatch

    remo = MaskedLinearService(load_prepared_model(str(tiny_model("qwen2"))), default_rank=8)
    compute, _ = pad_clouds("qwen2")
    _, other = pad_clouds("llama")
    with pytest.raises((SchemeMismatch, ProtocolMismatch)):
        build_runtime(InProcessCloud(remo), "pad", dealer=InProcessCloud(compute))
    with pytest.raises(ProtocolMismatch, match="same checkpoint"):
        build_runtime(InProcessCloud(compute), "pad", dealer=InProcessCloud(other))
    with pytest.raises(ValueError, match="needs a dealer"):
        build_runtime(InProcessCloud(compute), "pad")


def test_a_step_budget_over_the_clouds_row_limit_is_refused_at_start(tiny_model):
    from talaria_proxy.scheduler import SchedulerConfig

    service = MaskedLinearService(load_prepared_model(str(tiny_model("qwen2"))), default_rank=8, max_rows=64)
    assert service.manifest.max_rows == 64
    with pytest.raises(ValueError, match="max_batch_tokens 512 is over the cloud's max_rows 64"):
        build_runtime(InProcessCloud(service), "remo")
    build_runtime(InProcessCloud(service), "remo", scheduler=SchedulerConfig(max_batch_tokens=64)).close()


def test_lift_sum_and_scaled_decode_equal_their_slow_forms():
    from talaria_wire.ring import HALF_T, lift, lift_sum

    g = torch.Generator().manual_seed(0)
    edge = torch.tensor([0, 1, HALF_T - 1, HALF_T, HALF_T + 1, T - 2, T - 1])
    a = torch.cat([edge.repeat_interleave(7), torch.randint(0, T, (10000,), generator=g)])
    b = torch.cat([edge.repeat(7), torch.randint(0, T, (10000,), generator=g)])
    assert torch.equal(lift_sum(a, b), lift(torch.remainder(a + b, T)))
    prod = torch.randint(-(2**60), 2**60, (3, 500), generator=g)
    f, col = torch.randint(-40, 60, (3,), generator=g), torch.randint(-5, 130, (500,), generator=g)
    scale = torch.ldexp(torch.ones(500, dtype=torch.float64), -col.double())
    assert torch.equal(decode_rows(prod, f, col), decode_rows(prod, f, col, scale))


def test_an_he_pool_too_small_for_whole_batches_says_so_at_start(pad_clouds, caplog):
    from talaria_proxy.runtime import build_pad_pool

    compute, _ = pad_clouds()
    cloud = InProcessCloud(compute)
    manifest = cloud.manifest()
    with caplog.at_level("WARNING", logger="talaria_proxy.runtime"):
        pool = build_pad_pool(manifest, cloud, "he", None, capacity_bytes=16 << 20, timeout=5.0, block_rows=32)
    try:
        assert pool.source.rows < pool.source.max_rows
        assert f"keeps {pool.source.rows} of the {pool.source.max_rows} pad rows" in caplog.text
        assert "full batches need pad_pool_mb >= " in caplog.text
    finally:
        pool.close()
