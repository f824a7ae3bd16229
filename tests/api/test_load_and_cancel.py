"""Client disconnects cancel generation (the sequences leave the engine), and 64 concurrent
streaming clients all get the right text."""

from __future__ import annotations

import asyncio

import httpx
import openai

from api_helpers import MODEL, engine_idle, metric, user, wait_until

LONG = {"model": MODEL, "messages": user("Write forever."), "max_tokens": 1500, "temperature": 0.7,
        "ignore_eos": True}


async def test_disconnected_clients_are_cancelled(proxy, client):
    """Uncancelled, these 24 sequences would keep the engine busy for ~1500 steps (minutes)."""
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0,
                                  timeout=1.0) as impatient:
        results = await asyncio.gather(*[
            impatient.chat.completions.create(model=MODEL, messages=LONG["messages"], max_tokens=1500,
                                              extra_body={"ignore_eos": True})
            for _ in range(12)
        ], return_exceptions=True)
    assert all(isinstance(r, openai.APITimeoutError) for r in results), results

    async with httpx.AsyncClient(base_url=proxy.url, timeout=60) as http:
        async def read_two_then_leave():
            async with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as resp:
                seen = 0
                async for line in resp.aiter_lines():
                    seen += line.startswith("data:")
                    if seen == 2:
                        return  # closes the connection mid-stream

        await asyncio.wait_for(asyncio.gather(*[read_two_then_leave() for _ in range(12)]), 60)

    assert await asyncio.to_thread(wait_until, lambda: engine_idle(proxy.url), 15), "sequences kept running"
    fresh = await asyncio.wait_for(asyncio.to_thread(
        client.chat.completions.create, model=MODEL, messages=user("still there?"), max_tokens=8), 30)
    assert fresh.choices[0].finish_reason in ("stop", "length")
    assert metric(proxy.url, 'talaria_requests_total{endpoint="chat",status="499"}') >= 24


async def test_64_concurrent_streaming_clients(proxy, client):
    prompts = [user(f"Question number {i}: what is the weather like?") for i in range(4)]
    expected = [client.chat.completions.create(model=MODEL, messages=p, max_tokens=16, temperature=0)
                .choices[0].message.content for p in prompts]

    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        async def one(i: int) -> tuple[int, str, list]:
            stream = await c.chat.completions.create(model=MODEL, messages=prompts[i % 4], max_tokens=16,
                                                     temperature=0, stream=True)
            text, finishes = "", []
            async for chunk in stream:
                for ch in chunk.choices:
                    text += ch.delta.content or ""
                    if ch.finish_reason:
                        finishes.append(ch.finish_reason)
            return i, text, finishes

        results = await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(64)]), 180)

    assert len(results) == 64
    for i, text, finishes in results:
        assert text == expected[i % 4], f"client {i}"
        assert len(finishes) == 1
    assert engine_idle(proxy.url)
