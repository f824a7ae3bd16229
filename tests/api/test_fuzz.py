"""A bounded fuzz of the proxy's request bodies (issue 13): every malformed request gets a 4xx
with an OpenAI error object, never a 5xx, a hang or a traceback, and a normal request still
succeeds afterwards. Hand-written generator, seeded: each case is invalid by construction."""

from __future__ import annotations

import json
import random

import httpx

from api_helpers import MODEL, user

CASES = 260
WRONG_TYPES = {  # field -> values of a type OpenAI does not accept there
    "model": [1, None, True, ["qwen2"], {"id": "qwen2"}],
    "messages": ["hi", 1, {}, [], [1], [None], [{"content": "no role"}], [{"role": "robot", "content": "x"}],
                 [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image_url"}]}],
                 [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": [1, 2]}]],
    "max_tokens": [True, "1", 1.5, -1, 0, [1], {}],
    "n": ["1", True, 0, -3, 1.0, 10_000],
    "stream": ["1", 1, "true", [], {}],
    "temperature": ["0.5", -1, 3, True, [0]],
    "top_p": [0, -0.1, 1.5, "1", False],
    "stop": [1, [1], [None], {"s": 1}, ["a"] * 5, True],
    "seed": ["1", 1.5, 2**64, True],
    "logit_bias": ["x", [1], {"abc": 1}, {"1": 500}, {"1": "1"}],
    "presence_penalty": [5, "0", True],
    "frequency_penalty": [-5, [], "1"],
    "logprobs": ["yes", 1.5, [True]],
    "top_logprobs": [-1, 50, "2", True],
    "stream_options": ["x", 1, {"include_usage": "yes"}],
    "user": [1, ["u"], {"id": 1}],
}
COMPLETION_WRONG = {
    "prompt": [1.5, None, [], [[]], [True, False], [1, "a"], {"text": "hi"}, [[1], "a"], [-1], [10**9]],
    "echo": ["yes", 2, []],
    "max_tokens": [True, "1", -1],
}


def malformed(rng: random.Random) -> tuple[str, bytes]:
    """One invalid request: (path, body bytes)."""
    kind = rng.randrange(6)
    chat = {"model": MODEL, "messages": user("hi"), "max_tokens": 2}
    if kind == 0:  # a wrong value in one chat field
        field = rng.choice(sorted(WRONG_TYPES))
        return "/v1/chat/completions", json.dumps({**chat, field: rng.choice(WRONG_TYPES[field])}).encode()
    if kind == 1:  # a wrong value in one completions field
        field = rng.choice(sorted(COMPLETION_WRONG))
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, field: rng.choice(COMPLETION_WRONG[field])}
        return "/v1/completions", json.dumps(body).encode()
    if kind == 2:  # a required field missing
        body = dict(chat)
        del body[rng.choice(["model", "messages"])]
        return "/v1/chat/completions", json.dumps(body).encode()
    if kind == 3:  # not JSON, or not a JSON object, or truncated
        good = json.dumps(chat).encode()
        options = [good[: rng.randrange(1, len(good) - 1)], b"", b"null", b"[1,2]", b'"text"', b"\xff\xfe\x00",
                   bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), good.replace(b"{", b"[", 1)]
        return rng.choice(["/v1/chat/completions", "/v1/completions"]), rng.choice(options)
    if kind == 4:  # a lone surrogate somewhere
        raw = json.dumps(chat)
        where = rng.choice(['"hi"', '"qwen2"', '"max_tokens"'])
        return "/v1/chat/completions", raw.replace(where, where[:-1] + "\\udc%02x\"" % rng.randrange(256), 1).encode()
    # an unknown model, or a context that cannot fit
    if rng.random() < 0.5:
        return "/v1/chat/completions", json.dumps({**chat, "model": "gpt-%d" % rng.randrange(10**6)}).encode()
    return "/v1/completions", json.dumps({"model": MODEL, "prompt": [1] * 3000, "max_tokens": 1}).encode()


def test_malformed_requests_get_4xx_openai_errors_and_the_proxy_keeps_serving(proxy):
    rng = random.Random(1313)
    seen = set()
    with httpx.Client(base_url=proxy.url, timeout=30, headers={"content-type": "application/json"}) as http:
        for _ in range(CASES):
            path, body = malformed(rng)
            resp = http.post(path, content=body)
            assert 400 <= resp.status_code < 500, (resp.status_code, body[:200], resp.text[:300])
            error = resp.json()["error"]
            assert isinstance(error["message"], str) and isinstance(error["type"], str)
            seen.add(resp.status_code)
        ok = http.post("/v1/chat/completions", json={"model": MODEL, "messages": user("hi"), "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
    assert {400, 404} <= seen
    assert "Traceback" not in proxy.log_tail(200_000)
