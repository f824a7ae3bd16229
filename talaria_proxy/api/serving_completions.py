"""POST /v1/completions (legacy): raw prompts, no chat template.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists; each
prompt gets `n` choices, numbered prompt * n + j as OpenAI does. Streams carry `text` chunks, one
finish chunk per choice, the optional usage chunk, then `[DONE]`; there is no role chunk.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from talaria_proxy.api.errors import invalid
from talaria_proxy.api.generation import GenerationBatch
from talaria_proxy.api.protocol import CompletionChoice, CompletionRequest, CompletionResponse, UsageInfo
from talaria_proxy.api.serving_base import OpenAIServing, RequestContext


class OpenAIServingCompletion(OpenAIServing):
    endpoint = "completions"
    id_prefix = "cmpl"
    prompt_param = "prompt"

    async def create(self, request: CompletionRequest, raw: Request) -> Response:
        ctx = self.new_context(request)

        def submit() -> GenerationBatch:
            self.check_common(request)
            self._check_unsupported(request)
            prompts = [self._tokenize(p) for p in request.prompts()]
            return self.start_batch(ctx, request, prompts, request.max_tokens, request.logprobs)

        return await self.respond(raw, ctx, submit, request.stream,
                                  lambda batch: self._collect(ctx, request, batch),
                                  lambda batch: self._chunks(ctx, request, batch))

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
            return self.tokenizer.encode(prompt)  # with the tokenizer's own BOS, like `tokenizer(prompt)`
        return list(prompt)  # token ids are checked against the vocabulary by the engine

    # -- answers ------------------------------------------------------------------------------
    async def _collect(self, ctx: RequestContext, request: CompletionRequest,
                       batch: GenerationBatch) -> CompletionResponse:
        results = await self.gather(ctx, batch)
        choices = [
            CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason,
                             logprobs=self.logprobs.completion(r.tokens) if request.logprobs is not None else None)
            for i, r in enumerate(results)
        ]
        return CompletionResponse(id=ctx.request_id, model=self.config.served_model_name,
                                  system_fingerprint=self.config.system_fingerprint, choices=choices,
                                  usage=UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    async def _chunks(self, ctx: RequestContext, request: CompletionRequest, batch: GenerationBatch):
        created = int(time.time())
        offsets = [0] * len(batch.choices)  # text offset of each choice's next token

        def chunk(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
            return CompletionResponse(id=ctx.request_id, created=created, model=self.config.served_model_name,
                                      system_fingerprint=self.config.system_fingerprint, choices=choices,
                                      usage=usage).model_dump_json()

        async for delta in batch.deltas():
            i = delta.index
            logprobs = None
            if request.logprobs is not None and delta.tokens:
                logprobs = self.logprobs.completion(delta.tokens, offsets[i])
                offsets[i] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
            if delta.text or logprobs is not None:
                yield chunk([CompletionChoice(index=i, text=delta.text, logprobs=logprobs)])
            if delta.finish_reason is not None:
                ctx.finish_reasons[i] = delta.finish_reason
                yield chunk([CompletionChoice(index=i, text="", finish_reason=delta.finish_reason)])
        if request.stream_options and request.stream_options.include_usage:
            yield chunk([], UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))
