"""POST /tokenize and POST /detokenize, with vLLM's request and response shapes.

    /tokenize    {"prompt": "..."} or {"messages": [...]}  ->  {"count", "max_model_len", "tokens", "token_strs"}
    /detokenize  {"tokens": [ids]}                           ->  {"prompt": "..."}

Clients use them to count tokens before sending (context budgeting) and to check what the
chat template makes of a conversation: `messages` go through the same template as
/v1/chat/completions, so `count` equals that endpoint's `usage.prompt_tokens`. The tokenizer is
the CVM's own; nothing here reaches the cloud, and no text is logged.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import jinja2
from pydantic import BaseModel, Field

from talaria_proxy.api.errors import invalid
from talaria_proxy.api.protocol import ChatMessage, OpenAIRequest
from talaria_proxy.api.serving_base import _TOKENIZER_THREAD
from talaria_proxy.api.serving_chat import _flatten_content


class TokenizeRequest(OpenAIRequest):
    model: str | None = None  # optional, as in vLLM; checked when given
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (the template has them)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None  # rendered by the template, as for chat completions
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIRequest):
    model: str | None = None
    tokens: list[int] = Field(...)


class DetokenizeResponse(BaseModel):
    prompt: str


class OpenAIServingTokenize:
    def __init__(self, tokenizer, max_model_len: int, check_model):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.check_model = check_model  # raises the 404 of an unknown model name

    async def handle(self, method: Callable[[Any], BaseModel], request) -> dict:
        """Run `method` on the proxy's one tokenizer thread: off the event loop, and never at the
        same time as another request's tokenization (a fast tokenizer is not safe across threads)."""
        answer = await asyncio.get_running_loop().run_in_executor(_TOKENIZER_THREAD, method, request)
        return answer.model_dump()

    def _check(self, model: str | None) -> None:
        if model is not None:
            self.check_model(model)
        if self.tokenizer is None:
            raise invalid("this model was published without a tokenizer")

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self._check(request.model)
        if (request.prompt is None) == (request.messages is None):
            raise invalid("give exactly one of prompt and messages", param="prompt")
        if request.prompt is not None:
            special = True if request.add_special_tokens is None else request.add_special_tokens
            ids = self.tokenizer.encode(request.prompt, add_special_tokens=special)
        else:
            ids = self.tokenizer.encode(self._render(request), add_special_tokens=bool(request.add_special_tokens))
        strs = self.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.max_model_len, tokens=ids, token_strs=strs)

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self._check(request.model)
        bad = next((t for t in request.tokens if not 0 <= t < len(self.tokenizer)), None)
        if bad is not None:
            raise invalid(f"token id {bad} is outside the vocabulary (0..{len(self.tokenizer) - 1})", param="tokens")
        return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))

    def _render(self, request: TokenizeRequest) -> str:
        if not request.messages:
            raise invalid("messages must not be empty", param="messages")
        if request.add_generation_prompt and request.continue_final_message:
            raise invalid("add_generation_prompt and continue_final_message exclude each other",
                          param="continue_final_message")
        conversation = []
        for i, message in enumerate(request.messages):
            turn: dict[str, Any] = {"role": message.role, "content": _flatten_content(message, i)}
            for key in ("tool_calls", "tool_call_id"):  # as the chat endpoint: `name` is not rendered
                if getattr(message, key, None):
                    turn[key] = getattr(message, key)
            conversation.append(turn)
        return render_chat(self.tokenizer, conversation, add_generation_prompt=request.add_generation_prompt,
                           continue_final_message=request.continue_final_message, tools=request.tools)


def render_chat(tokenizer, conversation: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None) -> str:
    """A conversation -> the chat template's text, as /v1/chat/completions renders it (a 400 when
    the model has no template or the template refuses the conversation)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise invalid("this model has no chat template; use /v1/completions or a prompt", param="messages")
    conversation = [{**turn, "role": "system" if turn["role"] == "developer" else turn["role"]}
                    for turn in conversation]  # 'developer' is OpenAI's newer name for system
    extra = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                             continue_final_message=continue_final_message, tokenize=False, **extra)
    except Exception as exc:  # a template's own raise_exception() is static text; others may quote input
        reason = str(exc) if isinstance(exc, jinja2.TemplateError) else type(exc).__name__
        raise invalid(f"the model's chat template rejected the messages: {reason}", param="messages") from None
