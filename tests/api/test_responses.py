"""POST /v1/responses through the official SDK (`client.responses.create`, stream and not, and the
SDK's own stream helper), against the real proxy and cloud processes.

The text must equal the chat endpoint's for the same conversation at temperature 0: both render
through the checkpoint's chat template and run on the same engine.
"""

from __future__ import annotations

import openai
import pytest

from api_helpers import MODEL, prompt_token_count

NO_EOS = {"ignore_eos": True}
STREAM_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
                "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def chat_text(client, messages, max_tokens, **extra):
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, **extra)
    return r.choices[0].message.content, r.usage


def test_create_equals_chat(client, tokenizer):
    r = client.responses.create(model=MODEL, input="Tell me about the river.", instructions="Be brief.",
                                max_output_tokens=12, temperature=0, extra_body=NO_EOS)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the river."}]
    text, usage = chat_text(client, messages, 12, extra_body=NO_EOS)
    assert r.object == "response" and r.output_text == text and r.model == MODEL
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output[0].content[0].type == "output_text"
    assert r.usage.input_tokens == prompt_token_count(tokenizer, messages) == usage.prompt_tokens
    assert r.usage.output_tokens == 12 and r.usage.total_tokens == r.usage.input_tokens + 12
    # the cap ended it: incomplete, as OpenAI reports it
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.instructions == "Be brief." and r.max_output_tokens == 12 and r.temperature == 0


def test_message_list_input(client):
    conversation = [
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}, {"type": "input_text", "text": "there"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": "What is the weather?"},
    ]
    r = client.responses.create(model=MODEL, input=conversation, max_output_tokens=8, temperature=0)
    messages = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Hi\nthere"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is the weather?"}]
    assert r.output_text == chat_text(client, messages, 8)[0]
    assert r.status in ("completed", "incomplete")


def test_stream_events(client):
    kwargs = dict(model=MODEL, input="Tell me a story.", max_output_tokens=10, temperature=0)
    full = client.responses.create(**kwargs, extra_body=NO_EOS)
    events = list(client.responses.create(**kwargs, stream=True, extra_body=NO_EOS))
    types = [e.type for e in events]
    assert types[:4] == STREAM_ORDER and types[-4:-1] == CLOSING and types[-1] == "response.incomplete"
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == full.output_text == events[-4].text
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert len(item_ids) == 1 and events[2].item.id in item_ids
    assert events[0].response.status == "in_progress" and events[0].response.usage is None
    final = events[-1].response
    assert final.output_text == full.output_text and final.usage.output_tokens == 10
    assert events[-2].item.status == "incomplete" and final.id == events[0].response.id


def test_stream_completes_and_the_sdk_helper_assembles_it(client, tokenizer):
    """An answer that ends before the cap (here at a stop token: any token) is response.completed;
    the SDK's stream helper, which checks the event sequence, rebuilds the same response."""
    kwargs = dict(model=MODEL, input="Hello!", max_output_tokens=50, temperature=0,
                  extra_body={"stop_token_ids": list(range(len(tokenizer)))})
    full = client.responses.create(**kwargs)
    assert full.status == "completed" and full.incomplete_details is None and full.usage.output_tokens == 1
    with client.responses.stream(**kwargs) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert types[-1] == "response.completed" and final.status == "completed"
    assert final.output_text == full.output_text and final.usage.output_tokens == 1


async def test_async_client(aclient):
    r = await aclient.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0)
    assert r.usage.output_tokens <= 4 and isinstance(r.output_text, str)


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"truncation": "auto"}, "truncation"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"max_tokens": 5}, "max_tokens"),
    ({"min_tokens": 2}, "min_tokens"),  # a sampling extension this server does not implement
    ({"model": "gpt-4o"}, "model"),
])
def test_unsupported_fields_are_a_400_naming_them(client, extra, param):
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 2, **extra}
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as err:
        client.responses.create(**{k: v for k, v in body.items() if k in ("model", "input")},
                                extra_body={k: v for k, v in body.items() if k not in ("model", "input")})
    assert err.value.body["param"] == param, err.value.body


def test_accepted_fields_without_effect(client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=3, temperature=0, store=False,
                                metadata={"trace": "t1"}, parallel_tool_calls=True, tool_choice="auto",
                                user="u-1", text={"format": {"type": "text"}}, truncation="disabled",
                                extra_body={"top_k": 5, "repetition_penalty": 1.1})
    assert r.metadata == {"trace": "t1"} and r.store is False and r.usage.output_tokens <= 3
