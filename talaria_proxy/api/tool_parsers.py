"""The model's text -> content and tool calls, incrementally (one parser per choice).

    parser = parser_for("hermes", parallel=True)
    for text in deltas:  out = parser.push(text)     # ParsedDelta: content + ToolCallDeltas
    out = parser.finish()                            # at the end of generation

Formats (what the chat templates ask the model to write):
    hermes    <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>     Qwen2/2.5/3, Hermes
    llama3    {"name": "f", "parameters": {...}}  (a leading <|python_tag|>; calls joined by ";")
    mistral   [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]  or  [TOOL_CALLS]f[ARGS]{...}

A call's first delta carries its index, id, name and arguments "", then its argument text follows
in fragments as the model writes it (when the object starts with the name, as the grammars make
it), or in one piece when the call is complete. Non-streamed answers run the same parser over the
whole text, so the streamed fragments concatenate to exactly the non-streamed arguments. Content
is the text before the first call; text between or after calls is dropped (as vLLM does).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

# An object that starts with its name: `{"name": "f", "arguments": ` (or "parameters").
HEADER = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
SEPARATORS = " \t\r\n;,[]"  # between the JSON objects of a call block
NAME_PREFIX = re.compile(r"[\w.-]{1,64}(\[(A(R(G(S)?)?)?)?)?")  # Mistral v11: a name, maybe part of [ARGS]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None  # set on the first delta of a call, with the name
    name: str | None = None
    arguments: str = ""


@dataclass
class ParsedDelta:
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def extend(self, other: "ParsedDelta") -> "ParsedDelta":
        self.content += other.content
        self.tool_calls += other.tool_calls
        return self


@dataclass
class _Object:
    """One JSON object of a call block as it streams in: depth and string state, and how much of
    its arguments value has been sent."""

    text: str = ""
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    call: int | None = None  # index of the call once its header went out
    args_start: int | None = None  # where the arguments value starts in `text`
    args_end: int | None = None  # where it ends, once it has
    sent: int = 0  # characters of the arguments value sent


class ToolCallParser:
    """Base: content until a start marker, then call blocks of JSON objects until `end`."""

    start: tuple[str, ...] = ()  # markers that open a call block
    end: str | None = None  # marker that closes one (None: the block runs to the end of the text)

    def __init__(self, parallel: bool = True):
        self.parallel = parallel
        self.calls = 0  # calls whose header has gone out
        self._held = ""  # content that may be the start of a marker
        self._in_block = False
        self._obj: _Object | None = None
        self._name: str | None = None  # the Mistral v11 `name[ARGS]` form: the name before the object

    # -- public ---------------------------------------------------------------------------
    def push(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        self._held += text
        while self._held:
            before = self._held
            if self._in_block:
                self._block(out)
            else:
                self._content(out)
            if self._held == before:
                break  # waiting for more text
        return out

    def finish(self) -> ParsedDelta:
        out = ParsedDelta()
        if not self._in_block:
            if self.calls == 0:
                out.content += self._held
        elif self._obj is not None:
            self._close_object(out, complete=False)
        self._held = ""
        return out

    # -- content --------------------------------------------------------------------------
    def _content(self, out: ParsedDelta) -> None:
        text = self._held
        hits = [(text.find(m), m) for m in self.start if text.find(m) >= 0]
        if hits:
            at, marker = min(hits)
            self._emit_content(out, text[:at])
            self._held = text[at + len(marker):]
            self._in_block = True
            return
        keep = max((k for m in self.start for k in range(1, len(m)) if text.endswith(m[:k])), default=0)
        self._emit_content(out, text[:len(text) - keep])
        self._held = text[len(text) - keep:]

    def _emit_content(self, out: ParsedDelta, text: str) -> None:
        if self.calls == 0:
            out.content += text

    # -- call blocks ----------------------------------------------------------------------
    def _block(self, out: ParsedDelta) -> None:
        if self._obj is not None:
            self._feed_object(out)
            return
        text = self._held.lstrip(" \t\r\n;,")
        markers = (*self.start, self.end) if self.end is not None else self.start
        for marker in markers:
            if text.startswith(marker):  # the end of this block, or another call's start marker
                self._held = text[len(marker):]
                self._in_block = marker != self.end
                return
            if marker.startswith(text):
                self._held = text  # maybe a marker, not complete yet
                return
        i = 0
        while i < len(text) and text[i] in SEPARATORS:
            i += 1
        if i == len(text):
            self._held = ""  # separators only; keep nothing
            return
        if text[i] == "{":
            self._held = text[i:]
            self._obj = _Object()
            self._feed_object(out)
            return
        self._other(out, text[i:])

    def _other(self, out: ParsedDelta, text: str) -> None:
        """Text in a block that is neither a separator nor an object: not a call after all."""
        self._held = ""
        self._in_block = False
        self._emit_content(out, text)

    def _feed_object(self, out: ParsedDelta) -> None:
        obj = self._obj
        text, self._held = self._held, ""
        for i, ch in enumerate(text):
            obj.text += ch
            if obj.in_string:
                if obj.escaped:
                    obj.escaped = False
                elif ch == "\\":
                    obj.escaped = True
                elif ch == '"':
                    obj.in_string = False
                continue
            if ch == '"':
                obj.in_string = True
            elif ch in "{[":
                obj.depth += 1
            elif ch in "}]":
                obj.depth -= 1
                if obj.args_start is not None and obj.args_end is None and obj.depth == self._args_depth():
                    obj.args_end = len(obj.text)
                if obj.depth == 0:
                    self._stream_args(out)
                    self._close_object(out, complete=True)
                    self._held = text[i + 1:]
                    return
            if obj.call is None and obj.args_start is None:
                self._try_header(out)
        if obj.call is None and obj.args_start is None:
            self._try_header(out)
        self._stream_args(out)

    def _args_depth(self) -> int:
        return 0 if self._name is not None else 1  # `name[ARGS]{...}`: the object is the arguments

    def _try_header(self, out: ParsedDelta) -> None:
        obj = self._obj
        if self._name is not None:
            obj.args_start = 0
            self._open_call(out, obj, self._name)
            return
        match = HEADER.match(obj.text)
        if match and obj.text[match.end():match.end() + 1] == "{":
            obj.args_start = match.end()
            self._open_call(out, obj, json.loads(f'"{match.group(1)}"'))

    def _open_call(self, out: ParsedDelta, obj: _Object, name: str) -> None:
        if self.calls >= 1 and not self.parallel:
            obj.call = -1  # parallel_tool_calls false: later calls are dropped
            return
        obj.call = self.calls
        self.calls += 1
        out.tool_calls.append(ToolCallDelta(obj.call, new_call_id(), name, ""))

    def _stream_args(self, out: ParsedDelta) -> None:
        obj = self._obj
        if obj.call is None or obj.call < 0 or obj.args_start is None:
            return
        stop = obj.args_end if obj.args_end is not None else len(obj.text)
        piece = obj.text[obj.args_start + obj.sent:stop]
        if piece:
            obj.sent += len(piece)
            out.tool_calls.append(ToolCallDelta(obj.call, arguments=piece))

    def _close_object(self, out: ParsedDelta, complete: bool) -> None:
        obj, self._obj = self._obj, None
        name, self._name = self._name, None
        if obj.call is not None:
            return  # streamed as it came (a cut object keeps what was sent)
        try:
            value = json.loads(obj.text) if complete else None
        except ValueError:
            value = None
        if name is None and isinstance(value, dict) and isinstance(value.get("name"), str):
            name, args = value["name"], value.get("arguments", value.get("parameters", {}))
        elif name is not None and value is not None:
            args = value
        else:
            self._emit_content(out, obj.text)  # JSON that is not a call (or cut short): it was text
            return
        self._open_call(out, obj, name)
        if obj.call >= 0:
            text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            out.tool_calls.append(ToolCallDelta(obj.call, arguments=text))


class HermesParser(ToolCallParser):
    start = ("<tool_call>",)
    end = "</tool_call>"


class Llama3JsonParser(ToolCallParser):
    """Llama 3.x: the whole answer is the calls when it starts with `{` (or <|python_tag|>)."""

    start = ("<|python_tag|>",)

    def __init__(self, parallel: bool = True):
        super().__init__(parallel)
        self._decided = False

    def push(self, text: str) -> ParsedDelta:
        if not self._decided:
            self._held += text
            stripped = self._held.lstrip()
            if not stripped:
                return ParsedDelta()
            self._decided = True
            text, self._held = self._held, ""
            if stripped.startswith("{"):
                self._in_block = True
                text = stripped
        return super().push(text)

    def finish(self) -> ParsedDelta:
        if not self._decided:
            self._decided = True
        return super().finish()


class MistralParser(ToolCallParser):
    start = ("[TOOL_CALLS]",)
    ARGS = "[ARGS]"

    def _other(self, out: ParsedDelta, text: str) -> None:
        at = text.find(self.ARGS)
        if at > 0:  # v11: `name[ARGS]{...}`
            self._name = text[:at].strip()
            self._held = text[at + len(self.ARGS):].lstrip()
            if self._held.startswith("{"):
                self._obj = _Object()
            return
        if NAME_PREFIX.fullmatch(text):
            self._held = text  # the name, waiting for [ARGS]
            return
        super()._other(out, text)


PARSERS = {"hermes": HermesParser, "llama3_json": Llama3JsonParser, "mistral": MistralParser}


def parser_for(name: str, parallel: bool = True) -> ToolCallParser:
    return PARSERS[name](parallel)
