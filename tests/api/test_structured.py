"""Structured outputs through real cloud and proxy processes: `response_format` json_object and
json_schema (strict) with the official SDK, streamed and not, n > 1; the answers of the
random-weight tiny model must parse and validate with `jsonschema`; bad schemas are 400s."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from api_helpers import MODEL, user

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "age", "tags", "kind"],
    "additionalProperties": False,
}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.mark.parametrize("max_tokens", [60, 120])
def test_json_schema_strict_validates(client, max_tokens):
    r = client.chat.completions.create(model=MODEL, messages=user("Describe a pet."), max_tokens=max_tokens,
                                       temperature=1.0, seed=7, n=3, response_format=PERSON_FORMAT)
    assert len(r.choices) == 3
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    assert r.usage.completion_tokens <= 3 * max_tokens


def test_json_schema_streamed_equals_non_streamed(client):
    kwargs = dict(model=MODEL, messages=user("Describe a pet."), max_tokens=80, temperature=0,
                  response_format=PERSON_FORMAT)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    parts, reasons = [], []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(parts) == whole
    assert [r for r in reasons if r] == ["stop"]
    jsonschema.validate(json.loads(whole), PERSON)


def test_json_object_any_object(client):
    r = client.chat.completions.create(model=MODEL, messages=user("Reply in JSON."), max_tokens=40, temperature=1.0,
                                       seed=3, n=2, response_format={"type": "json_object"})
    for choice in r.choices:
        assert isinstance(json.loads(choice.message.content), dict)


def test_tight_budget_still_closes_the_json(client):
    # Free strings and arrays: a random model would never stop, so the closing must happen.
    schema = {"type": "object", "properties": {"notes": {"type": "array", "items": {"type": "string"}}},
              "required": ["notes"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "notes", "schema": schema, "strict": True}}
    for max_tokens in (16, 33):
        r = client.chat.completions.create(model=MODEL, messages=user("Take notes."), max_tokens=max_tokens,
                                           temperature=1.0, seed=max_tokens, response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_ordinary_requests_are_unconstrained(client):
    r = client.chat.completions.create(model=MODEL, messages=user("Hello"), max_tokens=30, temperature=0,
                                       response_format={"type": "text"}, extra_body={"ignore_eos": True})
    text = r.choices[0].message.content
    with pytest.raises(ValueError):
        json.loads(text)  # the tiny model's free text is not JSON


def test_openai_parse_helper(client):
    from pydantic import BaseModel

    class Pet(BaseModel):
        name: str
        legs: int

    r = client.chat.completions.parse(model=MODEL, messages=user("A pet?"), max_tokens=60, temperature=0,
                                      response_format=Pet)
    assert isinstance(r.choices[0].message.parsed, Pet)


@pytest.mark.parametrize("fmt, param", [
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}, "strict": True}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                             "schema": {"type": "string", "format": "no-such-format"}}},
     "response_format.json_schema.schema"),
    ({"type": "grammar"}, "response_format.type"),
])
def test_bad_response_format_is_400(client, fmt, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=5, response_format=fmt)
    assert err.value.body["param"] == param


def test_ignore_eos_with_a_grammar_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=5,
                                       response_format={"type": "json_object"}, extra_body={"ignore_eos": True})
    assert err.value.body["param"] == "ignore_eos"
