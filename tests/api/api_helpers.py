"""Helpers of the API tests: messages, the tokenizer's prompt count, raw SSE, /metrics samples.

(tests/api is on sys.path under pytest's default import mode, so test modules import this file.)
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import httpx

MODEL = "qwen2"  # the tiny checkpoint's name, as the cloud publishes it
TIMEOUT = 60.0  # generous client bound: a hang fails the test instead of the suite


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def prompt_token_count(tokenizer, messages: list[dict]) -> int:
    """The tokenizer's own count of the chat-template prompt (with the generation prompt)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


@dataclass
class SSEResult:
    status: int
    headers: httpx.Headers
    events: list  # parsed JSON events, then the literal "[DONE]"
    body: dict | None = None  # JSON body of a non-stream (error) answer


def post_sse(base_url: str, path: str, body: dict, headers: dict | None = None,
             timeout: float = TIMEOUT) -> SSEResult:
    """POST a streaming request and collect every `data:` event (raw, without the SDK)."""
    with httpx.stream("POST", base_url + path, json=body, headers=headers, timeout=timeout) as resp:
        if resp.headers.get("content-type", "").split(";")[0] != "text/event-stream":
            resp.read()
            return SSEResult(resp.status_code, resp.headers, [], resp.json())
        return SSEResult(resp.status_code, resp.headers, list(iter_sse(resp.iter_lines())))


def iter_sse(lines):
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators and ": ping" comments
        data = line[len("data:"):].strip()
        yield data if data == "[DONE]" else json.loads(data)


def metric(base_url: str, name: str, key: str | None = None) -> float:
    """Value of an unlabelled Prometheus sample (e.g. talaria_num_requests_running); `key`: the
    API key of a proxy that has keys (/metrics is behind them)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(base_url + "/metrics", headers=headers, timeout=10).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def engine_idle(base_url: str, key: str | None = None) -> bool:
    return (metric(base_url, "talaria_num_requests_running", key) == 0
            and metric(base_url, "talaria_num_requests_waiting", key) == 0)
