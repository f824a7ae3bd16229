"""Tools in chat completions: the request side (validation, history, forced-call grammars) and the
answer side (per-choice parsers -> `message.tool_calls` and streamed `tool_calls` deltas).

    tool_choice  "none"      tools are rendered, the answer is text (never parsed into calls)
                 "auto"      the model decides; its output is parsed (tool_parsers.py)
                 "required"  decoded under a grammar: one call (or more, with parallel_tool_calls)
                 {"type": "function", "function": {"name": N}}   the same, for function N only

The format (and so the parser and grammar) follows the chat template: one that asks for
<tool_call> blocks is Hermes, [TOOL_CALLS] is Mistral, <|python_tag|> / ipython is Llama 3.x;
otherwise the model family decides (qwen -> Hermes, llama -> Llama 3.x, mistral -> Mistral).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from talaria_proxy.api.errors import invalid
from talaria_proxy.api.protocol import (ChatCompletionRequest, ChatMessage, DeltaFunctionCall, DeltaToolCall,
                                        FunctionCall, ToolCall)
from talaria_proxy.api.text_stream import TextStream
from talaria_proxy.api.tool_parsers import ParsedDelta, ToolCallDelta, ToolCallParser, parser_for
from talaria_proxy.grammar import CompiledGrammar, GrammarCompiler, GrammarError, with_options

FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FAMILY_FORMATS = {"qwen2": "hermes", "qwen3": "hermes", "llama": "llama3_json", "mistral": "mistral"}
MARKERS = {"mistral": ("[TOOL_CALLS]", "[ARGS]"), "llama3_json": ("<|python_tag|>",), "hermes": ()}
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass
class ToolRequest:
    tools: list[dict]  # validated OpenAI tool objects, as the chat template receives them
    choice: str  # none | auto | required | named
    named: str | None = None
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "named")

    @property
    def parsed(self) -> bool:
        return self.choice != "none"


def tool_request(request: ChatCompletionRequest) -> ToolRequest | None:
    """Validate `tools` / `tool_choice`; None when the request has no tools."""
    choice = request.tool_choice
    if not request.tools:
        if choice in (None, "none", "auto"):
            return None  # 'auto' without tools means no tool calls
        raise invalid("tool_choice needs 'tools'", param="tool_choice")
    tools = [_check_tool(tool, i) for i, tool in enumerate(request.tools)]
    names = [t["function"]["name"] for t in tools]
    parallel = request.parallel_tool_calls is not False
    if choice is None or choice in ("none", "auto", "required"):
        return ToolRequest(tools, choice or "auto", parallel=parallel)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise invalid(f"tool_choice names the function '{name}', which is not in tools", param="tool_choice")
        return ToolRequest(tools, "named", name, parallel)
    raise invalid("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                  "{'name': ...}}", param="tool_choice")


def _check_tool(tool: dict, i: int) -> dict:
    if tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise invalid("only tools of type 'function' are supported", param=f"tools[{i}]")
    fn = tool["function"]
    if not isinstance(fn.get("name"), str) or not FUNCTION_NAME.fullmatch(fn["name"]):
        raise invalid("a function name must be 1-64 letters, digits, '_', '-' or '.'", param=f"tools[{i}].function.name")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise invalid("function parameters must be a JSON schema object", param=f"tools[{i}].function.parameters")
    return {"type": "function", "function": {k: v for k, v in fn.items() if v is not None}}


def history_message(message: ChatMessage, i: int, content: str) -> dict:
    """A message as chat templates read it: assistant calls with their arguments as objects."""
    role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for system
    out: dict = {"role": role, "content": content}
    if message.tool_calls:
        if message.role != "assistant":
            raise invalid("only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls")
        out["tool_calls"] = [_history_call(call, i, j) for j, call in enumerate(message.tool_calls)]
        if message.content is None:
            out["content"] = None  # templates test for a missing text, not an empty one
    if message.role == "tool":
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
    return out


def _history_call(call: dict, i: int, j: int) -> dict:
    fn = call.get("function")
    param = f"messages[{i}].tool_calls[{j}]"
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise invalid("a tool call needs a function with a name", param=param)
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except ValueError:
            raise invalid("tool call arguments must be a JSON string", param=f"{param}.function.arguments") from None
    return {"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}}


# -- the format of a checkpoint -------------------------------------------------------------


@dataclass(frozen=True)
class ToolFormat:
    parser: str  # a key of tool_parsers.PARSERS
    markers: dict[int, str] = field(default_factory=dict)  # special token id -> its text (the parser reads it)


def tool_format(tokenizer, family: str, compiler: GrammarCompiler | None) -> ToolFormat:
    template = getattr(tokenizer, "chat_template", None) or ""
    template = template if isinstance(template, str) else json.dumps(template)
    if "<tool_call>" in template:
        name = "hermes"
    elif "[TOOL_CALLS]" in template:
        name = "mistral"
    elif "<|python_tag|>" in template or "ipython" in template:
        name = "llama3_json"
    else:
        name = FAMILY_FORMATS.get(family, "hermes")
    markers = {}
    for text in MARKERS[name]:
        token = compiler.special_token_id(text) if compiler is not None else None
        if token is not None:
            markers[token] = text
    return ToolFormat(name, markers)


def forced_call_grammar(tools: ToolRequest, fmt: ToolFormat, compiler: GrammarCompiler) -> CompiledGrammar:
    """A Lark grammar whose sentences are exactly the valid calls of the allowed tools."""
    allowed = [t["function"] for t in tools.tools if tools.choice == "required" or t["function"]["name"] == tools.named]
    key = "parameters" if fmt.parser == "llama3_json" else "arguments"
    rules = []
    for k, fn in enumerate(allowed):
        schema = {"type": "object", "properties": {"name": {"const": fn["name"]}, key: fn.get("parameters") or NO_ARGUMENTS},
                  "required": ["name", key], "additionalProperties": False}
        rules.append(f"fn{k}: %json {json.dumps(with_options(schema, bool(fn.get('strict'))))}")
    obj = "obj: " + " | ".join(f"fn{k}" for k in range(len(allowed)))
    if fmt.parser == "hermes":
        call = 'call: "<tool_call>\\n" obj "\\n</tool_call>"'
        start = 'start: call ("\\n" call)*' if tools.parallel else "start: call"
    elif fmt.parser == "llama3_json":
        call = "call: obj"
        start = 'start: call ("; " call)*' if tools.parallel else "start: call"
    else:
        token = next((t for t, text in fmt.markers.items() if text == "[TOOL_CALLS]"), None)
        mark = f"<[{token}]>" if token is not None else json.dumps("[TOOL_CALLS]")
        call = "call: obj"
        start = f'start: {mark} "[" call (", " call)* "]"' if tools.parallel else f'start: {mark} "[" call "]"'
    try:
        return compiler.lark("\n".join([start, call, obj, *rules]) + "\n")
    except GrammarError as exc:
        raise invalid(f"the tools' parameter schemas cannot be enforced: {exc}", param="tools") from None


# -- the answer side ----------------------------------------------------------------------


class MarkedTextStream(TextStream):
    """A TextStream that also writes the tool-call marker tokens the detokenizer skips as special."""

    def __init__(self, tokenizer, stop: list[str], prompt_ids: list[int], markers: dict[int, str]):
        super().__init__(tokenizer, stop, prompt_ids)
        self.markers = markers

    def push(self, token_id: int) -> str:
        marker = self.markers.get(token_id)
        if marker is None:
            return super().push(token_id)
        out = self.matcher.push(self.detok.flush() + marker)  # text before the marker goes first
        self.text += out
        return out


class ToolOutput:
    """One parser per choice; text in, (content, tool-call deltas, finish reason) out."""

    def __init__(self, fmt: ToolFormat, tools: ToolRequest, n: int):
        self.parsers: list[ToolCallParser] = [parser_for(fmt.parser, tools.parallel) for _ in range(n)]

    def feed(self, index: int, text: str, finish_reason: str | None) -> tuple[ParsedDelta, str | None]:
        parser = self.parsers[index]
        out = parser.push(text) if text else ParsedDelta()
        if finish_reason is not None:
            out.extend(parser.finish())
            if parser.calls and finish_reason == "stop":
                finish_reason = "tool_calls"
        return out, finish_reason


def tool_calls(deltas: list[ToolCallDelta]) -> list[ToolCall]:
    """A whole answer's call deltas -> `message.tool_calls` (the streamed fragments, joined)."""
    calls: dict[int, ToolCall] = {}
    for d in deltas:
        if d.id is not None:
            calls[d.index] = ToolCall(id=d.id, function=FunctionCall(name=d.name, arguments=""))
        calls[d.index].function.arguments += d.arguments
    return [calls[i] for i in sorted(calls)]


def delta_tool_call(d: ToolCallDelta) -> DeltaToolCall:
    if d.id is not None:
        return DeltaToolCall(index=d.index, id=d.id, type="function",
                             function=DeltaFunctionCall(name=d.name, arguments=d.arguments))
    return DeltaToolCall(index=d.index, function=DeltaFunctionCall(arguments=d.arguments))
