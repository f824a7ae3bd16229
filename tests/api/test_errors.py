"""Every row of the error table (design/openai-compat.md): OpenAI error bodies with the right status,
never 422 or 500 for a client mistake; API keys, CORS and the bounded queue on a restricted proxy.
(Cloud failures, 502/503, are in test_cloud_failure.py.)"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from api_helpers import MODEL, engine_idle, metric, user, wait_until

OK = {"model": MODEL, "messages": user("hi"), "max_tokens": 2}


def _error(resp: httpx.Response, status: int, param: str | None = "unset", code: str | None = "unset") -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] and set(err) >= {"message", "type", "param", "code"}
    if param != "unset":
        assert err["param"] == param, err
    if code != "unset":
        assert err["code"] == code, err
    return err


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL}, "messages"),  # missing messages
    ({**OK, "messages": []}, "messages"),
    ({**OK, "messages": "hello"}, "messages"),
    ({**OK, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({**OK, "temperature": "hot"}, "temperature"),
    ({**OK, "temperature": 2.5}, "temperature"),
    ({**OK, "top_p": 0}, "top_p"),
    ({**OK, "max_tokens": 0}, "max_tokens"),
    ({**OK, "n": 0}, "n"),
    ({**OK, "n": 9}, "n"),  # above --max-n (default 8)
    ({**OK, "presence_penalty": 3}, "presence_penalty"),
    ({**OK, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({**OK, "top_logprobs": 2}, None),  # needs logprobs: true
    ({**OK, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({**OK, "stream_options": {"include_usage": True}}, None),  # stream_options without stream
    ({**OK, "tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({**OK, "tool_choice": "required"}, "tool_choice"),  # without tools
    ({**OK, "response_format": {"type": "grammar"}}, "response_format.type"),
    ({**OK, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({**OK, "messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                      {"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[1]"),
    ({**OK, "messages": [{"role": "assistant", "content": None,
                          "tool_calls": [{"id": "1", "type": "function"}]}]}, "messages[0].tool_calls[0]"),
])
def test_bad_chat_requests_are_400(proxy, body, param):
    err = _error(httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30), 400, param=param)
    assert err["type"] == "invalid_request_error"
    if body.get("stream_options"):
        assert "stream_options" in err["message"]
    if "top_logprobs" in body and not body.get("logprobs"):
        assert "logprobs" in err["message"]


def test_invalid_json_is_400(proxy):
    resp = httpx.post(proxy.url + "/v1/chat/completions", content=b'{"model": "qwen2", "messages": [',
                      headers={"content-type": "application/json"})
    assert _error(resp, 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),  # 0 only with echo
    ({"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": MODEL, "prompt": []}, "prompt"),
    ({"model": MODEL, "prompt": [10 ** 9]}, None),  # token id outside the vocabulary
    ({"model": MODEL}, "prompt"),
])
def test_bad_completion_requests_are_400(proxy, body, param):
    _error(httpx.post(proxy.url + "/v1/completions", json=body, timeout=30), 400, param=param)


def test_unknown_model_is_404(proxy, client):
    _error(httpx.post(proxy.url + "/v1/chat/completions", json={**OK, "model": "gpt-4o"}), 404,
           param="model", code="model_not_found")
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    assert info.value.code == "model_not_found"
    _error(httpx.get(proxy.url + "/v1/models/nope"), 404, code="model_not_found")


def test_context_length_exceeded(proxy, client, tokenizer):
    # max_tokens beyond the window
    _error(httpx.post(proxy.url + "/v1/chat/completions", json={**OK, "max_tokens": 5000}), 400,
           param="messages", code="context_length_exceeded")
    # a prompt longer than the window, without max_tokens
    long_text = "The river ran cold and clear. " * 400
    assert len(tokenizer(long_text)["input_ids"]) > 2048
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=user(long_text))
    assert info.value.code == "context_length_exceeded"
    _error(httpx.post(proxy.url + "/v1/completions", json={"model": MODEL, "prompt": long_text}), 400,
           param="prompt", code="context_length_exceeded")


def test_unknown_route_and_method(proxy):
    _error(httpx.get(proxy.url + "/v1/nothing-here"), 404, code="not_found")
    _error(httpx.get(proxy.url + "/v1/chat/completions"), 405)


def test_sdk_sees_typed_errors_not_retries(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=user("hi"), tools=[
            {"type": "function", "function": {"name": "no spaces allowed", "parameters": {"type": "object"}}}])
    assert info.value.status_code == 400 and info.value.param == "tools[0].function.name"


# -- a restricted proxy: API keys, CORS, a queue of one ------------------------------------------

KEYS = ("sk-first", "sk-second")
ORIGIN = "http://chat.example"


@pytest.fixture(scope="module")
def restricted(cloud, proxy_factory):
    return proxy_factory(cloud.url, "--api-key", KEYS[0], "--api-key", KEYS[1], "--cors-origin", ORIGIN,
                         "--max-running", "1", "--max-waiting", "1")


def test_api_keys(restricted):
    url = restricted.url + "/v1/chat/completions"
    _error(httpx.post(url, json=OK), 401, code="invalid_api_key")
    _error(httpx.post(url, json=OK, headers={"authorization": "Bearer sk-wrong"}), 401, code="invalid_api_key")
    _error(httpx.get(restricted.url + "/v1/models", headers={"authorization": f"Basic {KEYS[0]}"}), 401)
    for key in KEYS:
        with openai.OpenAI(base_url=restricted.url + "/v1", api_key=key, max_retries=0, timeout=60) as c:
            assert c.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=1).usage
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=restricted.url + "/v1", api_key="sk-nope", max_retries=0).models.list()
    assert httpx.get(restricted.url + "/health").status_code == 200  # public


def test_cors(restricted, proxy):
    preflight = httpx.options(restricted.url + "/v1/chat/completions", headers={
        "origin": ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    denied = httpx.get(restricted.url + "/v1/models", headers={"origin": ORIGIN})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(restricted.url + "/health", headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # CORS is off unless configured
    plain = httpx.options(proxy.url + "/v1/chat/completions", headers={
        "origin": ORIGIN, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in plain.headers


async def test_full_queue_is_429_with_retry_after(restricted):
    headers = {"authorization": f"Bearer {KEYS[0]}"}
    long = {"model": MODEL, "messages": user("go on"), "max_tokens": 1500, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=restricted.url, headers=headers, timeout=60) as http:
        async def hold(ready: asyncio.Event):
            async with http.stream("POST", "/v1/chat/completions", json=long) as resp:
                ready.set()
                async for _ in resp.aiter_lines():
                    pass

        running_ready = asyncio.Event()
        running = asyncio.create_task(hold(running_ready))  # takes the one running slot
        await asyncio.wait_for(running_ready.wait(), 30)
        waiting = asyncio.create_task(hold(asyncio.Event()))  # takes the one waiting slot
        assert await asyncio.to_thread(wait_until, lambda: metric(restricted.url, "talaria_num_requests_waiting", KEYS[0]) == 1, 30)

        async with openai.AsyncOpenAI(base_url=restricted.url + "/v1", api_key=KEYS[0], max_retries=0) as c:
            with pytest.raises(openai.RateLimitError) as info:
                await c.chat.completions.create(model=MODEL, messages=user("me too"), max_tokens=1)
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.code == "too_many_requests"
        running.cancel()
        waiting.cancel()
        await asyncio.gather(running, waiting, return_exceptions=True)
    # Both held requests were cancelled by their disconnects: the engine drains at once.
    assert await asyncio.to_thread(wait_until, lambda: engine_idle(restricted.url, KEYS[0]), 15)
