"""Talaria end to end: concurrent streamed completions through the proxy's OpenAI endpoint.

The official `openai` client (AsyncOpenAI, stream=True) sends the same token-id prompts as the HF
baseline to /v1/completions with temperature 0 and `ignore_eos`, so every stream yields exactly
`new_tokens` tokens (checked against `usage`). Around every run the proxy's /metrics and the CPU
time of both server processes are read, which gives calls, bytes and masking time per token.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from benchmarks.common import StreamRecord, metric_delta, parse_prometheus, per_token_from_metrics, stream_metrics
from benchmarks.servers import Server


async def _one_stream(client, model: str, prompt: list[int], new_tokens: int) -> tuple[StreamRecord, str]:
    t_start = time.perf_counter()
    t_first = None
    tokens = 0
    text = []
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=new_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            if t_first is None:
                t_first = time.perf_counter()
            text.append(chunk.choices[0].text)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    t_end = time.perf_counter()
    if tokens != new_tokens:
        raise RuntimeError(f"stream returned {tokens} tokens, expected {new_tokens}")
    return StreamRecord(t_start, t_first, t_end, tokens), "".join(text)


class TalariaClient:
    """Runs k concurrent streams against a started proxy (and reads its cloud's CPU time)."""

    def __init__(self, proxy: Server, cloud: Server, prompts: list[list[int]], new_tokens: int):
        self.proxy, self.cloud, self.prompts, self.new_tokens = proxy, cloud, prompts, new_tokens
        self.texts: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.model = self.loop.run_until_complete(self._model_name())

    async def _model_name(self) -> str:
        async with self._client() as client:
            return (await client.models.list()).data[0].id

    def _client(self):
        import openai

        return openai.AsyncOpenAI(base_url=self.proxy.url + "/v1", api_key="bench", max_retries=0, timeout=1800)

    def _scrape(self) -> dict[str, float]:
        return parse_prometheus(httpx.get(self.proxy.url + "/metrics", timeout=10).text)

    async def _run(self, k: int, n: int) -> list:
        async with self._client() as client:
            return await asyncio.gather(*[_one_stream(client, self.model, p, n) for p in self.prompts[:k]])

    def warm_up(self) -> None:
        self.loop.run_until_complete(self._run(8, 4))

    def sample(self, k: int) -> dict[str, float]:
        """One run of k streams: client-side metrics plus per-token figures from the proxy."""
        before, p_cpu, c_cpu = self._scrape(), self.proxy.cpu_seconds(), self.cloud.cpu_seconds()
        done = self.loop.run_until_complete(self._run(k, self.new_tokens))
        p_cpu, c_cpu = self.proxy.cpu_seconds() - p_cpu, self.cloud.cpu_seconds() - c_cpu
        delta = metric_delta(before, self._scrape())
        out = stream_metrics([rec for rec, _ in done])
        out.update(per_token_from_metrics(delta, p_cpu, c_cpu))
        n = delta.get("talaria_time_to_first_token_seconds_count", 0)
        out["ttft_server_ms"] = delta.get("talaria_time_to_first_token_seconds_sum", 0) / n * 1e3 if n else None
        self.texts = [t for _, t in done]
        return out

    def close(self) -> None:
        self.loop.close()
