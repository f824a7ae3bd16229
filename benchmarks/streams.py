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

from benchmarks.common import (StreamRecord, load_average, median, median_of_runs, metric_delta, parse_prometheus,
                               per_token_from_metrics, stream_metrics)
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


def _scrape(proxy: Server) -> dict[str, float]:
    return parse_prometheus(httpx.get(proxy.url + "/metrics", timeout=10).text)


async def _run_streams(proxy: Server, cloud: Server, prompts: list[list[int]], new_tokens: int, repeats: int,
                       say) -> dict:
    import openai

    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="bench", max_retries=0, timeout=1800) as client:
        model = (await client.models.list()).data[0].id
        await _one_stream(client, model, prompts[0], 4)  # warm-up: connections, first-call paths
        runs, wires, texts = [], [], []
        loads = []
        for _ in range(repeats):
            loads.append(load_average())
            before, p_cpu, c_cpu = _scrape(proxy), proxy.cpu_seconds(), cloud.cpu_seconds()
            done = await asyncio.gather(*[_one_stream(client, model, p, new_tokens) for p in prompts])
            p_cpu, c_cpu = proxy.cpu_seconds() - p_cpu, cloud.cpu_seconds() - c_cpu
            delta = metric_delta(before, _scrape(proxy))
            runs.append(stream_metrics([rec for rec, _ in done]))
            wires.append(per_token_from_metrics(delta, p_cpu, c_cpu))
            texts = [t for _, t in done]
            # server-side time to first token: histogram sum / count of this run
            n = delta.get("talaria_time_to_first_token_seconds_count", 0)
            runs[-1]["ttft_server_ms"] = delta.get("talaria_time_to_first_token_seconds_sum", 0) / n * 1e3 if n else None
        out = median_of_runs(runs)
        out.update(median_of_runs(wires))
        out.update(streams=len(prompts), repeats=repeats, load_avg=median(loads))
        say(f"  Talaria {len(prompts)} stream(s): {out['ms_per_token']:.1f} ms/token, {out['tokens_per_s']:.1f} tok/s, "
            f"TTFT {out['ttft_ms']:.1f} ms, {out['calls_per_token']:.1f} calls/token (load {out['load_avg']:.1f})")
        return {"metrics": out, "texts": texts}


def run_talaria(proxy: Server, cloud: Server, prompts: list[list[int]], new_tokens: int, stream_counts=(1, 8),
                repeats: int = 3, say=print) -> dict:
    results = {}
    for k in stream_counts:
        results[f"streams={k}"] = asyncio.run(_run_streams(proxy, cloud, prompts[:k], new_tokens, repeats, say))
    return results
