"""The proxy bounds what it accepts (issue 13): bodies, prompts, stop strings, Unicode, types,
queue-sized requests, /metrics behind the keys, shutdown mid-stream, settings refused up front.
Real proxy and cloud processes (tests/api/conftest.py); the fuzz test is in test_fuzz.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from api_helpers import MODEL, iter_sse, user

SURROGATE = "\\ud800"  # as it travels in JSON: a lone high surrogate


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def post(url: str, body, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=content, headers={"content-type": "application/json"},
                      timeout=kwargs.pop("timeout", 60), **kwargs)


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text[:300]
    error = resp.json()["error"]
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    if param is not None:
        assert error["param"] == param
    return error


class HealthProbe:
    """Polls /health in a thread; the slowest answer while it ran."""

    def __init__(self, url: str):
        self.url, self.latencies, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                t0 = time.monotonic()
                http.get(self.url + "/health")
                self.latencies.append(time.monotonic() - t0)
                time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def test_a_50mb_body_is_413_at_once_while_health_stays_fast(proxy):
    with HealthProbe(proxy.url) as idle:
        time.sleep(0.5)
    baseline = max(idle.latencies)
    rss_before = rss_mb(proxy.proc.pid)
    body = json.dumps({"model": MODEL, "messages": user("hello world " * 4_200_000), "max_tokens": 1})
    with HealthProbe(proxy.url) as probe:
        t0 = time.monotonic()
        resp = post(proxy.url, body.encode())
        elapsed = time.monotonic() - t0

        def chunks():  # the same without Content-Length: refused as the bytes pass the limit
            data = body.encode()
            for i in range(0, len(data), 1 << 20):
                yield data[i:i + (1 << 20)]

        chunked = httpx.post(proxy.url + "/v1/chat/completions", content=chunks(), timeout=60)
        time.sleep(0.2)
    error = assert_openai_error(resp, 413)
    assert error["code"] == "request_too_large" and elapsed < 1.0, f"413 after {elapsed:.2f}s"
    assert_openai_error(chunked, 413)
    assert max(probe.latencies) < baseline + 0.1, f"/health took {max(probe.latencies):.3f}s"
    assert rss_mb(proxy.proc.pid) - rss_before < 200


def test_a_prompt_over_the_context_is_refused_before_tokenizing(proxy):
    text = "abc " * 1_500_000  # 6 MB: under the body limit, far over the 2048-token context
    with HealthProbe(proxy.url) as probe:
        t0 = time.monotonic()
        resp = post(proxy.url, {"model": MODEL, "messages": user(text), "max_tokens": 1})
        elapsed = time.monotonic() - t0
    assert assert_openai_error(resp, 400)["code"] == "context_length_exceeded"
    assert elapsed < 2.0 and max(probe.latencies) < 0.5
    resp = post(proxy.url, {"model": MODEL, "prompt": text, "max_tokens": 1}, path="/v1/completions")
    assert assert_openai_error(resp, 400)["code"] == "context_length_exceeded"


def test_more_than_four_stop_strings_are_400(proxy):
    body = {"model": MODEL, "messages": user("hi"), "max_tokens": 2}
    assert post(proxy.url, {**body, "stop": ["a", "b", "c", "d"]}).status_code == 200
    assert_openai_error(post(proxy.url, {**body, "stop": [f"s{i}" for i in range(999)]}), 400, "stop")


@pytest.mark.parametrize("raw", [
    '{"model":"qwen2","messages":[{"role":"user","content":"a%sb"}],"max_tokens":2}',
    '{"model":"q%s","messages":[{"role":"user","content":"hi"}],"max_tokens":2}',
    '{"model":"qwen2","messages":[{"role":"user","content":[{"type":"text","text":"%s"}]}]}',
    '{"model":"qwen2","messages":[{"role":"user","content":"hi"}],"stop":"%s","max_tokens":2}',
    '{"model":"qwen2","messages":[{"role":"user","content":"hi"}],"x%s":1,"max_tokens":2}',
])
def test_lone_surrogates_anywhere_are_400(proxy, raw):
    with httpx.Client(base_url=proxy.url, timeout=60) as http:  # one keep-alive connection throughout
        resp = http.post("/v1/chat/completions", content=raw % SURROGATE, headers={"content-type": "application/json"})
        assert assert_openai_error(resp, 400)["code"] == "invalid_unicode"
        assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": user("hi"),
                                                        "max_tokens": 1}).status_code == 200
    resp = post(proxy.url, '{"model":"qwen2","prompt":["ok","%s"],"max_tokens":1}' % SURROGATE, path="/v1/completions")
    assert_openai_error(resp, 400)
    assert post(proxy.url, '{"model":"qwen2","messages":[{"role":"user","content":"\\ud83d\\ude00"}],'
                           '"max_tokens":1}').status_code == 200  # a valid pair is one emoji
    log = proxy.log_tail(200_000)
    assert "\ud800" not in log and "\\ud800" not in log and "Traceback" not in log


@pytest.mark.parametrize("field, value, path", [
    ("max_tokens", True, "/v1/chat/completions"), ("n", "1", "/v1/chat/completions"),
    ("stream", "1", "/v1/chat/completions"), ("temperature", "0.5", "/v1/chat/completions"),
    ("prompt", [True, False], "/v1/completions"), ("max_tokens", 1.5, "/v1/completions"),
])
def test_loosely_typed_fields_are_400(proxy, field, value, path):
    body = {"model": MODEL, "max_tokens": 2, **({"prompt": "hi"} if "completions" in path and "chat" not in path
                                                   else {"messages": user("hi")})}
    assert_openai_error(post(proxy.url, {**body, field: value}, path=path), 400)


def test_a_request_larger_than_the_queue_is_400_not_429(cloud, proxy_factory):
    small = proxy_factory(cloud.url, "--max-waiting", "2")
    body = {"model": MODEL, "messages": user("hi"), "max_tokens": 1}
    error = assert_openai_error(post(small.url, {**body, "n": 3}), 400, "n")
    assert "max_waiting" in error["message"]
    resp = post(small.url, {"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 1}, path="/v1/completions")
    assert_openai_error(resp, 400, "n")
    assert post(small.url, {**body, "n": 2}).status_code == 200


def test_metrics_need_a_key_when_keys_are_set(cloud, proxy_factory):
    keyed = proxy_factory(cloud.url, "--api-key", "sk-metrics")
    assert_openai_error(httpx.get(keyed.url + "/metrics"), 401)
    ok = httpx.get(keyed.url + "/metrics", headers={"authorization": "Bearer sk-metrics"})
    assert ok.status_code == 200 and "talaria_requests_total" in ok.text
    assert httpx.get(keyed.url + "/health").status_code == 200  # still public


def test_sigterm_ends_long_streams_with_an_error_event_and_done(cloud, proxy_factory):
    short = proxy_factory(cloud.url, "--shutdown-drain", "2")
    body = {"model": MODEL, "messages": user("go on"), "max_tokens": 2000, "ignore_eos": True, "stream": True}
    events = []
    with httpx.stream("POST", short.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        for event in iter_sse(lines):
            events.append(event)
            if len(events) == 3:
                short.proc.send_signal(signal.SIGTERM)
                break
        events += list(iter_sse(lines))
    assert events[-1] == "[DONE]", events[-3:]
    assert events[-2]["error"]["code"] == "shutting_down"
    assert short.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down


def test_settings_that_cannot_work_are_refused_up_front(cloud, helpers):
    run = [sys.executable, "-m", "talaria_cli.main"]
    port = str(helpers.free_port())
    proxy = subprocess.run([*run, "proxy", "--cloud", cloud.url, "--max-model-len", "1000000", "--port", port],
                           capture_output=True, text=True, timeout=120)
    assert proxy.returncode != 0 and "position limit" in proxy.stderr
    up = subprocess.run([*run, "up", "--port", port, "--cloud-port", port], capture_output=True, text=True, timeout=60)
    assert up.returncode == 2 and "different" in up.stdout + up.stderr and "--cloud-port" in up.stdout + up.stderr
    assert "Talaria is up" not in up.stdout
