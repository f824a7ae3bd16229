"""POST /v1/completions (legacy): raw prompts, no chat template.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists; each
prompt gets `n` choices, numbered prompt * n + j as OpenAI does. Streams carry `text` chunks, one
finish chunk per choice, the optional usage chunk, then `[DONE]`; no role chunk.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from talaria_proxy.api.errors import APIError, api_error_from, invalid
from talaria_proxy.api.generation import ClientDisconnected, GenerationBatch, cancel_on_disconnect
from talaria_proxy.api.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
                                        UsageInfo)
from talaria_proxy.api.serving_base import CLIENT_CLOSED, OpenAIServing, RequestContext, clamp_logprob, event_stream
from talaria_proxy.sampling import SampledToken

log = logging.getLogger("talaria_proxy.api")


class OpenAIServingCompletion(OpenAIServing):
    endpoint = "completions"
    id_prefix = "cmpl"
    prompt_param = "prompt"

    def __init__(self, *args, shutdown_grace: float = 30.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.shutdown_grace = shutdown_grace

    async def create(self, request: CompletionRequest, raw: Request) -> Response:
        ctx = self.new_context(request)
        batch = None
        try:
            self.check_model(request.model)
            self.check_common(request)
            self._check_unsupported(request)
            prompts = [self._tokenize(p) for p in request.prompts()]
            batch = self.start_batch(ctx, request, prompts, request.max_tokens, request.logprobs)
            if request.stream:
                await cancel_on_disconnect(raw, batch.wait_started())  # errors before 200, as in chat
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
        return JSONResponse(body.model_dump(exclude_none=False), headers={"x-request-id": ctx.request_id})

    def _check_unsupported(self, request: CompletionRequest) -> None:
        if request.echo:
            raise invalid("echo is not supported by this server yet", param="echo")
        if request.suffix:
            raise invalid("suffix is not supported by this model", param="suffix")
        if request.best_of is not None and request.best_of != request.n:
            raise invalid("best_of other than n is not supported", param="best_of")

    def _tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise invalid("prompt must not be empty", param="prompt")
            return self.tokenizer.encode(prompt)  # with the tokenizer's own BOS, as `tokenizer(prompt)`
        return list(prompt)

    # -- non-streaming ------------------------------------------------------------------------
    async def _collect(self, ctx: RequestContext, request: CompletionRequest,
                       batch: GenerationBatch) -> CompletionResponse:
        await batch.wait_started()
        n = len(batch.choices)
        texts, reasons = [""] * n, [None] * n
        tokens: list[list[SampledToken]] = [[] for _ in range(n)]
        async for delta in batch.deltas():
            texts[delta.index] += delta.text
            tokens[delta.index] += delta.tokens
            reasons[delta.index] = delta.finish_reason or reasons[delta.index]
        choices = [
            CompletionChoice(index=i, text=texts[i], finish_reason=reasons[i],
                             logprobs=self._logprobs(tokens[i], 0) if request.logprobs is not None else None)
            for i in range(n)
        ]
        return CompletionResponse(id=ctx.request_id, model=self.config.served_model_name,
                                  system_fingerprint=self.config.system_fingerprint, choices=choices,
                                  usage=UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    # -- streaming ----------------------------------------------------------------------------
    async def _stream(self, ctx: RequestContext, request: CompletionRequest, batch: GenerationBatch):
        created = int(time.time())
        status, reasons = 200, [None] * len(batch.choices)
        offsets = [0] * len(batch.choices)  # text_offset of the next token, per choice

        def chunk(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
            return CompletionResponse(id=ctx.request_id, created=created, model=self.config.served_model_name,
                                      system_fingerprint=self.config.system_fingerprint, choices=choices,
                                      usage=usage).model_dump_json()

        try:
            async for delta in batch.deltas():
                i = delta.index
                logprobs = None
                if request.logprobs is not None and delta.tokens:
                    logprobs = self._logprobs(delta.tokens, offsets[i])
                    offsets[i] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
                if delta.text or logprobs is not None:
                    yield chunk([CompletionChoice(index=i, text=delta.text, logprobs=logprobs)])
                if delta.finish_reason is not None:
                    reasons[i] = delta.finish_reason
                    yield chunk([CompletionChoice(index=i, text="", finish_reason=delta.finish_reason)])
            if request.stream_options and request.stream_options.include_usage:
                yield chunk([], UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))
        except Exception as exc:
            error: APIError = api_error_from(exc, self.prompt_param)
            status = error.status
            log.warning("%s: stream ended with an error: %s", ctx.request_id, error.code or error.type)
            yield json.dumps(error.body())
        except BaseException:
            status = CLIENT_CLOSED
            raise
        finally:
            batch.close()
            self.finish(ctx, status, batch, reasons)
        yield "[DONE]"

    def _logprobs(self, tokens: list[SampledToken], offset: int) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for tok in tokens:
            text, _ = self.token_texts.get(tok.token_id)
            out.tokens.append(text)
            out.token_logprobs.append(clamp_logprob(tok.logprob))
            out.top_logprobs.append({self.token_texts.get(t)[0]: clamp_logprob(lp) for t, lp in tok.top_logprobs or []})
            out.text_offset.append(offset)
            offset += len(text)
        return out
