"""Structured outputs: `response_format` -> a grammar the sampler enforces (talaria_proxy.grammar).

    {"type": "text"}                                      no grammar (the ordinary path)
    {"type": "json_object"}                               any JSON object
    {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
                                                          JSON matching the schema

`strict: true` compiles the schema exactly: a keyword the engine does not implement is a 400.
Without it, such keywords are ignored and the rest is still enforced (OpenAI then only promises
best effort; enforcing what we can is the better answer). Any other type is a 400 naming it.
"""

from __future__ import annotations

from talaria_proxy.api.errors import invalid
from talaria_proxy.api.protocol import ResponseFormat
from talaria_proxy.grammar import CompiledGrammar, GrammarCompiler, GrammarError

ANY_OBJECT = {"type": "object"}


def response_format_grammar(fmt: ResponseFormat | None, compiler: GrammarCompiler | None) -> CompiledGrammar | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type not in ("json_object", "json_schema"):
        raise invalid(f"response_format type '{fmt.type}' is not supported; use 'text', 'json_object' or "
                      "'json_schema'", param="response_format.type")
    if compiler is None:
        raise invalid("structured outputs need the model's tokenizer", param="response_format")
    if fmt.type == "json_object":
        return _compile(compiler, ANY_OBJECT, False, "response_format")
    spec = fmt.json_schema
    if spec is None:
        raise invalid("response_format of type 'json_schema' needs a 'json_schema' object",
                      param="response_format.json_schema")
    schema = ANY_OBJECT if spec.schema_ is None else spec.schema_
    return _compile(compiler, schema, bool(spec.strict), "response_format.json_schema.schema")


def _compile(compiler: GrammarCompiler, schema: dict, strict: bool, param: str) -> CompiledGrammar:
    try:
        return compiler.json_schema(schema, strict)
    except GrammarError as exc:
        raise invalid(f"the JSON schema cannot be enforced: {exc}", param=param) from None
