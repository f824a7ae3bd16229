"""POST /v1/chat/completions through the official `openai` package (sync and async) against real
cloud and proxy processes: exact usage, streaming rules, stop strings, n > 1, seeds, logprobs."""

from __future__ import annotations

import asyncio

import pytest

from api_helpers import MODEL, post_sse, prompt_token_count, user

GREETING = user("Hello there, how are you today?")
NO_EOS = {"ignore_eos": True}  # extension, sent via extra_body: fixed-length answers


@pytest.fixture(scope="module")
def reference(proxy):
    """Temperature-0 answers (40 tokens, EOS allowed) that the other tests compare against."""
    import openai

    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        def answer(messages, max_tokens=40):
            r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0)
            return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens

        return {"greeting": answer(GREETING)}


def test_non_streaming_shape_and_exact_usage(client, tokenizer):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "Three more?"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=7, temperature=0, extra_body=NO_EOS)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert r.created > 0 and r.system_fingerprint
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == prompt_token_count(tokenizer, messages)
    assert r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_text_parts_and_developer_role_render_like_strings(client, tokenizer):
    parts = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=5, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=plain, max_tokens=5, temperature=0)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens == prompt_token_count(tokenizer, plain)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_finish_reason_stop_on_eos(client, tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    r = client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=20, temperature=0,
                                       logit_bias={str(eos): 100})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ""
    assert r.usage.completion_tokens == 1  # the EOS token counts, but is not text


def test_max_completion_tokens_wins_over_max_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=9, max_completion_tokens=3,
                                       temperature=0, extra_body=NO_EOS)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_streaming_rules(client, reference):
    text, finish, _ = reference["greeting"]
    stream = client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=40, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.delta.role is None for c in chunks[1:] for ch in c.choices)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason is not None]
    assert finishes == [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    streamed = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    assert streamed == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "not streamed token by token"


def test_raw_sse_ends_with_done_and_usage_matches_non_streaming(proxy, client):
    body = {"model": MODEL, "messages": GREETING, "max_tokens": 12, "temperature": 0}
    full = client.chat.completions.create(**body, extra_body=NO_EOS)
    body.update(NO_EOS)
    res = post_sse(proxy.url, "/v1/chat/completions", {**body, "stream": True,
                                                       "stream_options": {"include_usage": True}})
    assert res.status == 200 and res.headers["content-type"].startswith("text/event-stream")
    assert res.events[-1] == "[DONE]" and res.events.count("[DONE]") == 1
    usage_chunk = res.events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == full.usage.model_dump(exclude_none=True)
    assert "usage" not in res.events[0]  # only the last chunk carries usage
    # Without include_usage there is no usage chunk at all.
    plain = post_sse(proxy.url, "/v1/chat/completions", {**body, "stream": True})
    assert all(e == "[DONE]" or e["choices"] for e in plain.events)


async def test_async_streaming_equals_non_streaming(aclient, reference):
    text, _, _ = reference["greeting"]
    full = await aclient.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=40, temperature=0)
    assert full.choices[0].message.content == text
    stream = await aclient.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=40,
                                                   temperature=0, stream=True)
    pieces = [ch.delta.content or "" async for c in stream for ch in c.choices]
    assert "".join(pieces) == text


def _stop_window(text: str) -> str:
    """A short all-letters substring of `text` past its start, to use as a stop string."""
    for i in range(8, len(text) - 3):
        window = text[i:i + 3]
        if window.isalpha() and window.isascii():
            return window
    pytest.skip("reference text has no plain-letter window")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text(client, reference, stream):
    text, _, _ = reference["greeting"]
    stop = _stop_window(text)
    expected = text[:text.index(stop)]
    kwargs = dict(model=MODEL, messages=GREETING, max_tokens=40, temperature=0, stop=["\u2603never", stop])
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        content = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
        finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    else:
        r = client.chat.completions.create(**kwargs)
        content, finishes = r.choices[0].message.content, [r.choices[0].finish_reason]
        assert 0 < r.usage.completion_tokens < 40
    assert content == expected  # nothing of the stop string, not even a prefix of it
    assert finishes == ["stop"]


def test_n_choices_batched_and_usage_summed(client, reference, tokenizer):
    r = client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=40, temperature=0, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == reference["greeting"][0] for c in r.choices)
    assert r.usage.prompt_tokens == prompt_token_count(tokenizer, GREETING)  # counted once, as OpenAI
    assert r.usage.completion_tokens == 3 * reference["greeting"][2]


def test_n_streaming_one_role_and_one_finish_per_choice(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=6, temperature=0.8,
                                                 n=2, seed=5, stream=True, extra_body=NO_EOS))
    roles = [ch.index for c in chunks for ch in c.choices if ch.delta.role]
    finishes = [(ch.index, ch.finish_reason) for c in chunks for ch in c.choices if ch.finish_reason]
    assert sorted(roles) == [0, 1]
    assert sorted(finishes) == [(0, "length"), (1, "length")]


def test_seed_reproducibility_and_seed_per_choice(client):
    kwargs = dict(model=MODEL, messages=GREETING, max_tokens=16, temperature=1.0, extra_body=NO_EOS)
    a = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    c = client.chat.completions.create(seed=1235, **kwargs).choices[0].message.content
    assert a == b
    assert a != c
    pair = client.chat.completions.create(seed=1234, n=2, **kwargs)
    assert [ch.message.content for ch in pair.choices] == [a, c]  # choice j samples with seed + j


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body=NO_EOS)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert joined == r.choices[0].message.content
    assert client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=2).choices[0].logprobs is None


def test_unknown_fields_and_user_are_ignored(client):
    r = client.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=2, user="u-42",
                                       parallel_tool_calls=False, extra_body={"some_future_field": {"x": 1}},
                                       response_format={"type": "text"}, tool_choice="none")
    assert r.usage.completion_tokens >= 1


async def test_async_concurrent_requests_share_steps(aclient, reference):
    results = await asyncio.gather(*[
        aclient.chat.completions.create(model=MODEL, messages=GREETING, max_tokens=40, temperature=0)
        for _ in range(4)
    ])
    assert {r.choices[0].message.content for r in results} == {reference["greeting"][0]}
