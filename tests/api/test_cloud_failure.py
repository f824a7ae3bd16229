"""The cloud backend dies mid-stream: the stream ends with an error event then [DONE], new requests
get 502/503 (never a hang), /health turns 503, and everything recovers when the cloud is back."""

from __future__ import annotations

import signal

import httpx
import openai
import pytest

from api_helpers import MODEL, iter_sse, user, wait_until


@pytest.fixture(scope="module")
def stack(helpers, model_dir, server_logs, proxy_factory):
    """A cloud of its own (this module kills it) and a proxy in front of it."""
    port = helpers.free_port()
    clouds = []

    def start_cloud():
        server = helpers.start_talaria("cloud", ["--model", str(model_dir)],
                                       server_logs / f"failing-cloud-{len(clouds)}.log", port=port)
        clouds.append(server)
        return server.wait_ready()

    cloud = start_cloud()
    proxy = proxy_factory(cloud.url, "--cloud-timeout", "5")
    yield cloud, proxy, start_cloud
    for server in clouds:
        server.stop()


def test_cloud_failure_and_recovery(stack):
    cloud, proxy, start_cloud = stack
    body = {"model": MODEL, "messages": user("Keep talking."), "max_tokens": 1500, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        events = iter_sse(resp.iter_lines())
        for _ in range(3):
            assert next(events)["choices"]  # streaming is under way
        cloud.stop(signal.SIGKILL)
        rest = list(events)  # the read timeout (30 s) turns a hang into a failure
    errors = [e for e in rest if e != "[DONE]" and "error" in e]
    assert rest[-1] == "[DONE]" and len(errors) == 1 and rest[-2] is errors[0]
    assert errors[0]["error"]["code"] in ("cloud_unavailable", "cloud_error")
    assert all(ch.get("finish_reason") is None for e in rest[:-2] for ch in e["choices"])

    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=30) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=MODEL, messages=user("hello?"), max_tokens=4)
        assert info.value.status_code in (502, 503)
        # A new stream fails before its first byte, so it gets a real status too.
        failed = httpx.post(proxy.url + "/v1/chat/completions", json={**body, "max_tokens": 4}, timeout=30)
        assert failed.status_code in (502, 503) and failed.json()["error"]["message"]
        assert wait_until(lambda: httpx.get(proxy.url + "/health").status_code == 503, 10)

        start_cloud()  # same port, same checkpoint and basis seed: same fingerprint
        assert wait_until(lambda: httpx.get(proxy.url + "/health").status_code == 200, 10)
        again = client.chat.completions.create(model=MODEL, messages=user("hello?"), max_tokens=4,
                                               extra_body={"ignore_eos": True})
        assert again.usage.completion_tokens == 4
