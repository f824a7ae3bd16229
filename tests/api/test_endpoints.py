"""Legacy /v1/completions, /v1/models, /health, /metrics, live streaming, and the no-text-in-logs rule."""

from __future__ import annotations

import json

import httpx

from api_helpers import MODEL, iter_sse, metric, post_sse, user, wait_until

NO_EOS = {"ignore_eos": True}


def test_models_list_and_retrieve(client, proxy):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model" and models.data[0].owned_by
    assert client.models.retrieve(MODEL).id == MODEL
    raw = httpx.get(proxy.url + "/v1/models").json()
    assert raw["object"] == "list" and raw["data"][0]["created"] > 0


def test_legacy_completion_exact_usage_and_stream_equality(client, tokenizer):
    prompt = "The morning train left the station"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, extra_body=NO_EOS)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert r.usage.completion_tokens == 10 and r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body=NO_EOS))
    assert len({c.id for c in chunks}) == 1
    assert "".join(ch.text for c in chunks for ch in c.choices) == r.choices[0].text
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_legacy_batch_of_prompts_token_ids_and_logprobs(client, tokenizer):
    ids = tokenizer("A small cat slept")["input_ids"]
    text = client.completions.create(model=MODEL, prompt="A small cat slept", max_tokens=5, temperature=0)
    r = client.completions.create(model=MODEL, prompt=[ids, ids], n=2, max_tokens=5, temperature=0, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.text == text.choices[0].text for c in r.choices)
    assert r.usage.prompt_tokens == 2 * len(ids)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens // 4
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0


def test_first_event_arrives_while_generation_is_still_running(proxy):
    """What `curl -N` shows: tokens leave as they are generated, not when the answer is done."""
    body = {"model": MODEL, "messages": user("Tell me a long story."), "max_tokens": 120, "temperature": 0,
            "stream": True, **NO_EOS}
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        events = iter_sse(resp.iter_lines())
        first_content = next(e for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))
        assert first_content["choices"][0]["finish_reason"] is None
        # The sequence is still in the engine, so this event was not buffered until the end.
        assert metric(proxy.url, "talaria_num_requests_running") >= 1
        rest = list(events)
    assert rest[-1] == "[DONE]"
    assert rest[-2]["choices"][0]["finish_reason"] == "length"


def test_health_and_metrics(proxy, client):
    assert httpx.get(proxy.url + "/health").json()["status"] == "ok"
    before = metric(proxy.url, "talaria_completion_tokens_total")
    client.chat.completions.create(model=MODEL, messages=user("count me"), max_tokens=4, extra_body=NO_EOS)
    text = httpx.get(proxy.url + "/metrics").text
    for name in ("talaria_num_requests_running", "talaria_num_requests_waiting", "talaria_prompt_tokens_total",
                 "talaria_time_to_first_token_seconds_bucket", "talaria_cloud_call_seconds_count",
                 "talaria_cloud_call_seconds_sum", 'talaria_requests_total{endpoint="chat",status="200"}'):
        assert name in text, name
    assert metric(proxy.url, "talaria_completion_tokens_total") == before + 4
    assert metric(proxy.url, "talaria_cloud_call_seconds_count") > 0


def test_request_id_header(proxy):
    r = httpx.post(proxy.url + "/v1/chat/completions",
                   json={"model": MODEL, "messages": user("hi"), "max_tokens": 1}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == r.json()["id"]


def test_logs_never_contain_prompt_or_completion_text(proxy, client):
    secret = "Zebra quartz violin 9731 marmalade"
    r = client.chat.completions.create(model=MODEL, messages=user(secret), max_tokens=30, temperature=0,
                                       extra_body={"ignore_eos": True, "unknown_field": secret})
    streamed = post_sse(proxy.url, "/v1/chat/completions", {"model": MODEL, "messages": user(secret),
                                                            "max_tokens": 30, "temperature": 0, "stream": True,
                                                            **NO_EOS})
    answer = r.choices[0].message.content
    assert len(answer.strip()) >= 10
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in streamed.events
                   if e != "[DONE]" and e["choices"]) == answer
    assert wait_until(lambda: r.id in proxy.log_path.read_text(errors="replace"), 5)  # request was logged
    log = proxy.log_path.read_text(errors="replace")  # the proxy runs at debug level
    assert secret not in log and "Zebra quartz" not in log
    assert answer not in log and json.dumps(answer)[1:-1] not in log
