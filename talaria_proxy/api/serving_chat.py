"""POST /v1/chat/completions: messages -> chat template -> engine -> OpenAI (streamed) answer.

Streaming layout (what the official SDK and chat apps expect):
    one role chunk per choice      {"delta": {"role": "assistant", "content": ""}}
    content chunks                 {"delta": {"content": "..."}}
    one finish chunk per choice    {"delta": {}, "finish_reason": "stop" | "length"}
    usage chunk (include_usage)    {"choices": [], "usage": {...}}
    data: [DONE]
An error after the first chunk is one `{"error": {...}}` event, then `[DONE]`.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from talaria_proxy.api.errors import APIError, api_error_from, invalid
from talaria_proxy.api.generation import ChoiceDelta, ClientDisconnected, GenerationBatch, cancel_on_disconnect
from talaria_proxy.api.protocol import (AssistantMessage, ChatChunkChoice, ChatCompletionChoice, ChatCompletionChunk,
                                        ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ChoiceLogprobs,
                                        DeltaMessage, TokenLogprob, TopLogprob, UsageInfo)
from talaria_proxy.api.serving_base import CLIENT_CLOSED, OpenAIServing, RequestContext, clamp_logprob, event_stream
from talaria_proxy.sampling import SampledToken

log = logging.getLogger("talaria_proxy.api")

class OpenAIServingChat(OpenAIServing):
    endpoint = "chat"
    id_prefix = "chatcmpl"
    prompt_param = "messages"

    def __init__(self, *args, shutdown_grace: float = 30.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.shutdown_grace = shutdown_grace

    async def create(self, request: ChatCompletionRequest, raw: Request) -> Response:
        ctx = self.new_context(request)
        batch = None
        try:
            self.check_model(request.model)
            self.check_common(request)
            self._check_unsupported(request)
            prompt = self._render(request.messages)
            batch = self.start_batch(ctx, request, [prompt], request.token_cap(), request.top_logprob_count())
            if request.stream:
                # Wait for the first token before answering 200, so a cloud that is down gets a
                # proper 502/503 status instead of an error inside a successful stream.
                await cancel_on_disconnect(raw, batch.wait_started())
                return event_stream(self._stream(ctx, request, batch), batch, ctx, self.shutdown_grace)
            body = await cancel_on_disconnect(raw, self._collect(ctx, request, batch))
        except ClientDisconnected:
            if batch is not None:
                batch.close()
            self.finish(ctx, CLIENT_CLOSED, batch)
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:
            if batch is not None:
                batch.close()
            error = api_error_from(exc, self.prompt_param)
            self.finish(ctx, error.status, batch)
            return error.response()
        self.finish(ctx, 200, batch, [c.finish_reason for c in body.choices])
        return JSONResponse(body.model_dump(), headers={"x-request-id": ctx.request_id})

    # -- request -> prompt --------------------------------------------------------------------
    def _check_unsupported(self, request: ChatCompletionRequest) -> None:
        if request.tools:
            raise invalid("tools are not supported by this server yet", param="tools")
        if request.functions:
            raise invalid("functions are not supported by this server yet", param="functions")
        if request.tool_choice not in (None, "none"):
            raise invalid("tool_choice is not supported by this server yet (only 'none')", param="tool_choice")
        if request.function_call not in (None, "none"):
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
            role = "system" if message.role == "developer" else message.role  # OpenAI's newer name
            conversation.append({"role": role, "content": _flatten_content(message, i)})
        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # e.g. a template that insists on alternating roles
            import jinja2

            reason = str(exc) if isinstance(exc, jinja2.TemplateError) else type(exc).__name__
            raise invalid(f"the model's chat template rejected the messages: {reason}", param="messages") from None
        # The same call apply_chat_template(tokenize=True) makes: the template carries the specials.
        return self.tokenizer.encode(text, add_special_tokens=False)

    # -- non-streaming ------------------------------------------------------------------------
    async def _collect(self, ctx: RequestContext, request: ChatCompletionRequest,
                       batch: GenerationBatch) -> ChatCompletionResponse:
        await batch.wait_started()
        n = len(batch.choices)
        texts, reasons = [""] * n, [None] * n
        tokens: list[list[SampledToken]] = [[] for _ in range(n)]
        async for delta in batch.deltas():
            texts[delta.index] += delta.text
            tokens[delta.index] += delta.tokens
            reasons[delta.index] = delta.finish_reason or reasons[delta.index]
        choices = [
            ChatCompletionChoice(index=i, message=AssistantMessage(content=texts[i]), finish_reason=reasons[i],
                                 logprobs=self._logprobs(tokens[i]) if request.logprobs else None)
            for i in range(n)
        ]
        return ChatCompletionResponse(id=ctx.request_id, model=self.config.served_model_name,
                                      system_fingerprint=self.config.system_fingerprint, choices=choices,
                                      usage=UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    # -- streaming ----------------------------------------------------------------------------
    async def _stream(self, ctx: RequestContext, request: ChatCompletionRequest, batch: GenerationBatch):
        created = int(time.time())
        status, reasons = 200, [None] * len(batch.choices)

        def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> str:
            return ChatCompletionChunk(id=ctx.request_id, created=created, model=self.config.served_model_name,
                                       system_fingerprint=self.config.system_fingerprint, choices=choices,
                                       usage=usage).model_dump_json()

        try:
            for choice in batch.choices:
                yield chunk([ChatChunkChoice(index=choice.index, delta=DeltaMessage(role="assistant", content=""))])
            async for delta in batch.deltas():
                for piece in self._delta_chunks(delta, request.logprobs):
                    yield chunk([piece])
                reasons[delta.index] = delta.finish_reason or reasons[delta.index]
            if request.stream_options and request.stream_options.include_usage:
                yield chunk([], UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))
        except Exception as exc:
            error: APIError = api_error_from(exc, self.prompt_param)
            status = error.status
            log.warning("%s: stream ended with an error: %s", ctx.request_id, error.code or error.type)
            yield json.dumps(error.body())
        except BaseException:  # client gone (cancelled / generator closed): nothing more to send
            status = CLIENT_CLOSED
            raise
        finally:
            batch.close()
            self.finish(ctx, status, batch, reasons)
        yield "[DONE]"

    def _delta_chunks(self, delta: ChoiceDelta, logprobs: bool) -> list[ChatChunkChoice]:
        out = []
        if delta.text:
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(content=delta.text),
                                       logprobs=self._logprobs(delta.tokens) if logprobs else None))
        elif logprobs and delta.tokens:  # tokens that produced no text (e.g. EOS) still have logprobs
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(content=""),
                                       logprobs=self._logprobs(delta.tokens)))
        if delta.finish_reason is not None:
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(), finish_reason=delta.finish_reason))
        return out

    def _logprobs(self, tokens: list[SampledToken]) -> ChoiceLogprobs:
        content = []
        for tok in tokens:
            text, raw = self.token_texts.get(tok.token_id)
            top = []
            for tid, lp in tok.top_logprobs or []:
                t_text, t_raw = self.token_texts.get(tid)
                top.append(TopLogprob(token=t_text, logprob=clamp_logprob(lp), bytes=t_raw))
            content.append(TokenLogprob(token=text, logprob=clamp_logprob(tok.logprob), bytes=raw, top_logprobs=top))
        return ChoiceLogprobs(content=content)


def _flatten_content(message: ChatMessage, i: int) -> str:
    """String or text parts -> one string (parts joined by newlines, as vLLM does)."""
    content = message.content
    if content is None:
        return ""  # e.g. an assistant turn that only carried tool calls
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in ("text", "input_text") or part.text is None:
            raise invalid(f"content parts of type '{part.type}' are not supported; this model reads text only",
                          param=f"messages[{i}].content[{j}]")
        texts.append(part.text)
    return "\n".join(texts)
