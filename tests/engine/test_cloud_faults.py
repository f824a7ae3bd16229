"""Cloud faults reach the caller as clear errors within seconds; nothing hangs or leaks."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from support import free_port

from talaria_proxy.errors import CloudUnavailable
from talaria_proxy.cloud_session import CloudSession
from talaria_proxy.runtime import build_runtime
from talaria_proxy.sampling import SamplingParams

LONG = SamplingParams(max_tokens=1500, temperature=0, ignore_eos=True)


async def consume_until_error(engine, after_tokens: int, on_tokens):
    """Generate; call on_tokens() once `after_tokens` arrived; return (tokens, error, seconds after)."""
    n, t_fault = 0, None
    async for ev in engine.generate([5, 6, 7], LONG):
        if ev.error is not None:
            return n, ev.error, time.monotonic() - t_fault
        n += 1
        if n == after_tokens:
            await asyncio.to_thread(on_tokens)
            t_fault = time.monotonic()
    return n, None, None


def test_cloud_killed_mid_generation_then_restarted(tiny_model, cloud_factory):
    model = tiny_model("qwen2")
    port = free_port()
    cloud = cloud_factory(model, port=port)
    backend = CloudSession(cloud.url, timeout=5.0, connect_timeout=1.0)
    rt = build_runtime(backend, "remo")

    async def scenario():
        await rt.engine.start()
        tokens, error, seconds = await consume_until_error(rt.engine, 5, lambda: cloud.stop(signal.SIGKILL))
        assert isinstance(error, CloudUnavailable) and "unreachable" in str(error)
        assert tokens < 100 and seconds < 5.0
        assert rt.engine.num_running == 0 and rt.engine.num_waiting == 0
        # a request while the cloud is down fails fast too
        t0 = time.monotonic()
        events = [ev async for ev in rt.engine.generate([1, 2], SamplingParams(max_tokens=3))]
        assert isinstance(events[-1].error, CloudUnavailable) and time.monotonic() - t0 < 5.0
        # the same cloud comes back: the proxy simply carries on
        await asyncio.to_thread(cloud_factory, model, port=port)
        events = [ev async for ev in rt.engine.generate([1, 2], SamplingParams(max_tokens=3, temperature=0))]
        assert [e.error for e in events] == [None] * 3 and events[-1].finish_reason == "length"
        await rt.engine.stop()
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(scenario())
    backend.close()


def test_cloud_restarted_with_other_bases_is_refused(tiny_model, cloud_factory):
    model = tiny_model("qwen2")
    port = free_port()
    cloud = cloud_factory(model, port=port)
    backend = CloudSession(cloud.url, timeout=5.0)
    rt = build_runtime(backend, "remo")
    cloud.stop()
    cloud_factory(model, "--basis-seed", "99", port=port)  # masks built on the old bases would not cancel

    async def scenario():
        await rt.engine.start()
        events = [ev async for ev in rt.engine.generate([1, 2], SamplingParams(max_tokens=3))]
        await rt.engine.stop()
        return events

    events = asyncio.run(scenario())
    assert isinstance(events[-1].error, CloudUnavailable) and "fingerprint" in str(events[-1].error)
    backend.close()


def test_hung_cloud_times_out(tiny_model, cloud_factory):
    cloud = cloud_factory(tiny_model("qwen2"))
    backend = CloudSession(cloud.url, timeout=1.5)
    rt = build_runtime(backend, "remo")
    try:
        async def scenario():
            await rt.engine.start()
            result = await consume_until_error(rt.engine, 3, lambda: cloud.proc.send_signal(signal.SIGSTOP))
            await rt.engine.stop()
            return result

        tokens, error, seconds = asyncio.run(scenario())
        assert isinstance(error, CloudUnavailable) and "timed out" in str(error)
        assert seconds < 5.0
    finally:
        cloud.proc.send_signal(signal.SIGCONT)
        backend.close()


def test_unreachable_cloud_at_start_fails_fast():
    backend = CloudSession(f"http://127.0.0.1:{free_port()}", connect_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(CloudUnavailable, match="unreachable"):
        build_runtime(backend, "remo")
    assert time.monotonic() - t0 < 5.0
