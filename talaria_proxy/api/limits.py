"""What the proxy accepts before any JSON is parsed: a bounded body, and text that is valid Unicode.

`RequestLimitsMiddleware` (plain ASGI, so streaming answers pass untouched) reads the body of
every POST itself, up to `max_body_bytes`:

    Content-Length over the limit            413 at once, nothing read
    more bytes than the limit arrive         413 as soon as they do (chunked bodies)
    a lone surrogate (\\ud800) in any string  400: it cannot be encoded, tokenized or logged

then replays the body to the app, so the JSON parser never sees more than the limit. Bodies are
checked for surrogates only when they contain a `\\u` escape (raw UTF-8 cannot carry one), so
ordinary requests pay nothing for it. After a large body, freed memory is handed back to the OS
(glibc keeps it otherwise: a 50 MB body left the proxy at 4 GB before this module).

`prompt_token_bound` is the early length check: no token of the vocabulary covers more than L
characters, so a prompt of c characters has at least ceil(c / L) tokens; one whose bound is
over the context window is refused before the chat template or the tokenizer touch it.
`MAX_STOP_STRINGS` is OpenAI's limit on `stop` (every string is matched on every token).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import re

from talaria_proxy.api.errors import APIError

_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs: what is left is lone
MAX_STOP_STRINGS = 4
TRIM_AFTER_BYTES = 1 << 20  # bodies this large make malloc_trim worth its few milliseconds


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def has_lone_surrogate(value) -> bool:
    """Any string (key or value) in decoded JSON holding a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_LONGEST_TOKEN: dict[int, int] = {}  # id(tokenizer) -> L


def longest_token_chars(tokenizer) -> int:
    """L: the most characters one token can stand for (its vocabulary spelling bounds its text:
    byte-level BPE spells each byte as one character, SentencePiece spells a space as one)."""
    key = id(tokenizer)
    if key not in _LONGEST_TOKEN:
        _LONGEST_TOKEN[key] = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
    return _LONGEST_TOKEN[key]


def prompt_token_bound(request, tokenizer) -> int:
    """A lower bound on the prompt tokens of a chat or completions request (of its longest prompt)."""
    if tokenizer is None:
        return 0
    longest = longest_token_chars(tokenizer)
    messages = getattr(request, "messages", None)
    if messages is not None:
        # earlier assistant turns are left out: some templates drop parts of them (reasoning)
        chars = sum(_text_chars(m.content) for m in messages if m.role != "assistant")
        return -(-chars // longest)
    prompts = request.prompts() if hasattr(request, "prompts") else []
    return max((len(p) if isinstance(p, list) else -(-len(p) // longest) for p in prompts), default=0)


def _text_chars(content) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    return sum(len(getattr(part, "text", None) or "") for part in content)


class RequestLimitsMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is over this server's limit of {self.max_body_bytes} bytes "
                             "(max_body_bytes)", code="request_too_large", headers={"connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body was complete: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large().response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        if _ESCAPE.search(body) and self._lone_surrogate(body):
            error = APIError(400, "the request contains a lone UTF-16 surrogate (e.g. \\ud800), which is not "
                                  "valid Unicode text", code="invalid_unicode")
            await error.response()(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:  # later reads (disconnect checks) go to the real channel
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, send)
        finally:
            if size >= TRIM_AFTER_BYTES and _TRIM is not None:
                del body
                _TRIM(0)

    @staticmethod
    def _lone_surrogate(body: bytes) -> bool:
        try:
            return has_lone_surrogate(json.loads(body))
        except ValueError:  # not JSON: the app answers that with its own 400
            return False
