"""The tool-call parsers (talaria_proxy/api/tool_parsers.py) on model outputs of the three formats:
the same content and calls whatever the text's chunking (streamed deltas = non-streamed answer),
the delta layout, parallel_tool_calls false, and text that only looks like a call."""

from __future__ import annotations

import pytest

from talaria_proxy.api.tool_parsers import parser_for


def run(name: str, text: str, step: int, parallel: bool = True):
    """Feed `text` in pieces of `step` characters; return (content, [(name, arguments)])."""
    parser = parser_for(name, parallel)
    outs = [parser.push(text[i:i + step]) for i in range(0, len(text), step)] + [parser.finish()]
    content, calls = "", {}
    for out in outs:
        content += out.content
        for d in out.tool_calls:
            if d.id is not None:  # the first delta: id, name and no arguments yet
                assert d.id.startswith("call_") and d.arguments == "" and d.index not in calls
                calls[d.index] = [d.name, ""]
            else:
                assert d.name is None
                calls[d.index][1] += d.arguments
    assert sorted(calls) == list(range(len(calls)))
    return content, [tuple(calls[i]) for i in sorted(calls)]


HERMES = ('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, {"x": "}"}]}}'
          '\n</tool_call>\n<tool_call>\n{"arguments": {"tz": "UTC"}, "name": "get_time"}\n</tool_call>')
CASES = [
    ("hermes", HERMES, "Let me check.",
     [("get_weather", '{"city": "Paris", "n": [1, {"x": "}"}]}'), ("get_time", '{"tz": "UTC"}')]),
    ("hermes", "No tools needed <tool", "No tools needed <tool", []),
    ("llama3_json", '{"name": "f", "parameters": {"q": "a;b"}}; {"name": "g", "parameters": {}}', "",
     [("f", '{"q": "a;b"}'), ("g", "{}")]),
    ("llama3_json", "<|python_tag|>{\"name\": \"f\", \"parameters\": {}}", "", [("f", "{}")]),
    ("llama3_json", "  Plain answer {not a call}", "  Plain answer {not a call}", []),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),  # JSON content, not a call
    ("mistral", 'Hi[TOOL_CALLS][{"name": "f", "arguments": {"q": 1}}, {"name": "g", "arguments": {}}]', "Hi",
     [("f", '{"q": 1}'), ("g", "{}")]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]g[ARGS]{}', "",
     [("get_weather", '{"city": "Oslo"}'), ("g", "{}")]),
]


@pytest.mark.parametrize("name, text, content, calls", CASES)
@pytest.mark.parametrize("step", [1, 2, 7, 10_000])
def test_any_chunking_gives_the_same_answer(name, text, content, calls, step):
    assert run(name, text, step) == (content, calls)


def test_arguments_stream_as_they_are_written():
    parser = parser_for("hermes")
    head = parser.push('<tool_call>\n{"name": "f", "arguments": {"city": "Pa')
    assert [(d.name, d.arguments) for d in head.tool_calls] == [("f", ""), (None, '{"city": "Pa')]
    tail = parser.push('ris"}}\n</tool_call>')
    assert [d.arguments for d in tail.tool_calls] == ['ris"}']
    assert parser.finish().tool_calls == [] and parser.calls == 1


def test_parallel_false_keeps_the_first_call():
    assert run("hermes", HERMES, 3, parallel=False) == (
        "Let me check.", [("get_weather", '{"city": "Paris", "n": [1, {"x": "}"}]}')])


def test_a_cut_call_keeps_what_was_sent():
    text = '<tool_call>\n{"name": "f", "arguments": {"a": "unfinish'
    assert run("hermes", text, 4) == ("", [("f", '{"a": "unfinish')])


def test_unparseable_block_becomes_content():
    assert run("hermes", "<tool_call>\n{oops}\n</tool_call>", 3) == ("{oops}", [])
