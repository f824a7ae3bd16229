"""Tools through real cloud and proxy processes, with the official SDK: tool_choice required, named,
auto and none; streamed tool_calls deltas that reassemble to the non-streamed call; the history of
a tool-result turn; parallel_tool_calls; 400s for what cannot work. The arguments of forced calls
must validate against the tool's schema even from the random-weight tiny model."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from api_helpers import MODEL, post_sse, prompt_token_count, user

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer"}},
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                      "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                                                     "required": ["tz"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = user("What is the weather in Paris?")


def _check_calls(message, names=None):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_returns_valid_calls(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=120, temperature=1.0, seed=5, n=3)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        _check_calls(choice.message)
        assert not choice.message.content


def test_named_choice_calls_that_function(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=100, temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert r.choices[0].finish_reason == "tool_calls"
    _check_calls(r.choices[0].message, {"get_time"})
    assert len(r.choices[0].message.tool_calls) == 1


def test_parallel_false_gives_one_call(client):
    for seed in range(3):
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=150, temperature=1.0, seed=seed)
        assert len(r.choices[0].message.tool_calls) == 1


def test_streamed_deltas_reassemble_to_the_call(client, proxy):
    body = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0)
    whole = client.chat.completions.create(**body).choices[0].message.tool_calls
    result = post_sse(proxy.url, "/v1/chat/completions", {**body, "stream": True})
    assert result.status == 200 and result.events[-1] == "[DONE]"
    calls, finishes = {}, []
    for event in result.events[:-1]:
        for choice in event["choices"]:
            finishes += [choice["finish_reason"]] if choice["finish_reason"] else []
            for d in choice["delta"].get("tool_calls", []):
                if "id" in d:  # the first delta of a call: index, id, type, name, arguments ""
                    assert d["index"] not in calls and d["type"] == "function" and d["function"]["arguments"] == ""
                    calls[d["index"]] = {"name": d["function"]["name"], "arguments": ""}
                else:
                    assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
                    calls[d["index"]]["arguments"] += d["function"]["arguments"]
    assert finishes == ["tool_calls"]
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == \
        [(c.function.name, c.function.arguments) for c in whole]


def test_auto_and_none_answer(client):
    for choice in ("auto", "none"):
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice,
                                           max_tokens=20, temperature=0)
        message = r.choices[0].message
        if choice == "none" or not message.tool_calls:
            assert isinstance(message.content, str) and r.choices[0].finish_reason in ("stop", "length")
        else:
            _check_calls(message)


def test_tools_are_rendered_by_the_template(client, tokenizer):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=1, temperature=0,
                                       tool_choice="none")
    rendered = tokenizer.apply_chat_template(ASK, tools=TOOLS, add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert r.usage.prompt_tokens == len(rendered) > prompt_token_count(tokenizer, ASK) + 50


def test_tool_result_turn(client, tokenizer):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=120, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees"}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=10, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    expected = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees"}]
    ids = tokenizer.apply_chat_template(expected, tools=TOOLS, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert r.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("kwargs, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}}}],
      "tool_choice": "required"}, "tools"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tool_requests_are_400(client, kwargs, param):
    body = {"tools": TOOLS, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **body)
    assert err.value.body["param"] == param


def test_bad_history_is_400(client):
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{not json"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=5)
    assert err.value.body["param"] == "messages[1].tool_calls[0].function.arguments"
