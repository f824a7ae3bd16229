"""POST /v1/chat/completions: messages -> the tokenizer's chat template -> engine -> OpenAI answer.

Streaming layout (what the official SDK and chat apps expect):
    one role chunk per choice      {"delta": {"role": "assistant", "content": ""}}
    content chunks                 {"delta": {"content": "..."}}
    one finish chunk per choice    {"delta": {}, "finish_reason": "stop" | "length"}
    usage chunk (include_usage)    {"choices": [], "usage": {...}}
    data: [DONE]
An error after the first chunk is one `{"error": {...}}` event, then `[DONE]`.
"""

from __future__ import annotations

import time

import jinja2
from fastapi import Request
from fastapi.responses import Response

from talaria_proxy.api.errors import invalid
from talaria_proxy.api.generation import ChoiceDelta, GenerationBatch
from talaria_proxy.api.protocol import (AssistantMessage, ChatChunkChoice, ChatCompletionChoice, ChatCompletionChunk,
                                        ChatCompletionRequest, ChatCompletionResponse, ChatMessage, DeltaMessage,
                                        UsageInfo)
from talaria_proxy.api.serving_base import OpenAIServing, RequestContext

TEXT_PART_TYPES = ("text", "input_text")  # 'input_text' is the Responses-API spelling some clients reuse


class OpenAIServingChat(OpenAIServing):
    endpoint = "chat"
    id_prefix = "chatcmpl"
    prompt_param = "messages"

    async def create(self, request: ChatCompletionRequest, raw: Request) -> Response:
        ctx = self.new_context(request)

        def submit() -> GenerationBatch:
            self.check_common(request)
            self._check_unsupported(request)
            prompt = self._render(request.messages)
            return self.start_batch(ctx, request, [prompt], request.token_cap(), request.top_logprob_count())

        return await self.respond(raw, ctx, submit, request.stream,
                                  lambda batch: self._collect(ctx, request, batch),
                                  lambda batch: self._chunks(ctx, request, batch))

    # -- request -> prompt --------------------------------------------------------------------
    def _check_unsupported(self, request: ChatCompletionRequest) -> None:
        """Parameters we cannot honour yet: a 400 naming them, never a silently different answer."""
        if request.tools:
            raise invalid("tools are not supported by this server yet", param="tools")
        if request.functions:
            raise invalid("functions are not supported by this server yet", param="functions")
        if request.tool_choice not in (None, "none", "auto"):  # 'auto' without tools means no tool calls
            raise invalid("tool_choice is not supported by this server yet", param="tool_choice")
        if request.function_call not in (None, "none", "auto"):
            raise invalid("function_call is not supported by this server yet", param="function_call")
        if request.response_format is not None and request.response_format.type != "text":
            raise invalid(f"response_format type '{request.response_format.type}' is not supported yet; "
                          "only 'text'", param="response_format")
        if request.audio is not None or any(m != "text" for m in request.modalities or []):
            raise invalid("only text output is supported", param="modalities")

    def _render(self, messages: list[ChatMessage]) -> list[int]:
        """Messages -> prompt token ids through the tokenizer's own chat template."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise invalid("this model has no chat template; use /v1/completions", param="messages")
        conversation = []
        for i, message in enumerate(messages):
            if message.tool_calls:
                raise invalid("tool calls are not supported by this server yet", param=f"messages[{i}].tool_calls")
            role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for system
            conversation.append({"role": role, "content": _flatten_content(message, i)})
        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # e.g. a template that insists on alternating roles
            # A template's own raise_exception() message is static text; other errors may quote input.
            reason = str(exc) if isinstance(exc, jinja2.TemplateError) else type(exc).__name__
            raise invalid(f"the model's chat template rejected the messages: {reason}", param="messages") from None
        # What apply_chat_template(tokenize=True) does: the rendered template already holds the specials.
        return self.tokenizer.encode(text, add_special_tokens=False)

    # -- answers ------------------------------------------------------------------------------
    async def _collect(self, ctx: RequestContext, request: ChatCompletionRequest,
                       batch: GenerationBatch) -> ChatCompletionResponse:
        results = await self.gather(ctx, batch)
        choices = [
            ChatCompletionChoice(index=i, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason,
                                 logprobs=self.logprobs.chat(r.tokens) if request.logprobs else None)
            for i, r in enumerate(results)
        ]
        return ChatCompletionResponse(id=ctx.request_id, model=self.config.served_model_name,
                                      system_fingerprint=self.config.system_fingerprint, choices=choices,
                                      usage=UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    async def _chunks(self, ctx: RequestContext, request: ChatCompletionRequest, batch: GenerationBatch):
        created = int(time.time())

        def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> str:
            return ChatCompletionChunk(id=ctx.request_id, created=created, model=self.config.served_model_name,
                                       system_fingerprint=self.config.system_fingerprint, choices=choices,
                                       usage=usage).model_dump_json()

        for choice in batch.choices:
            yield chunk([ChatChunkChoice(index=choice.index, delta=DeltaMessage(role="assistant", content=""))])
        async for delta in batch.deltas():
            for piece in self._delta_choices(delta, request.logprobs):
                yield chunk([piece])
            if delta.finish_reason is not None:
                ctx.finish_reasons[delta.index] = delta.finish_reason
        if request.stream_options and request.stream_options.include_usage:
            yield chunk([], UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    def _delta_choices(self, delta: ChoiceDelta, logprobs: bool) -> list[ChatChunkChoice]:
        out = []
        if delta.text or (logprobs and delta.tokens):  # tokens without text (EOS) still carry logprobs
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(content=delta.text),
                                       logprobs=self.logprobs.chat(delta.tokens) if logprobs else None))
        if delta.finish_reason is not None:
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(), finish_reason=delta.finish_reason))
        return out


def _flatten_content(message: ChatMessage, i: int) -> str:
    """String or text parts -> one string (parts joined by newlines, as vLLM does)."""
    content = message.content
    if content is None:
        return ""  # e.g. an assistant turn that only carried tool calls
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in TEXT_PART_TYPES:
            raise invalid(f"content parts of type '{part.type}' are not supported; this model reads text only",
                          param=f"messages[{i}].content[{j}]")
        if part.text is None:
            raise invalid("a text part needs a 'text' string", param=f"messages[{i}].content[{j}].text")
        texts.append(part.text)
    return "\n".join(texts)
