"""POST /v1/completions (legacy): raw prompts, no chat template.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists; each
prompt gets `n` choices, numbered prompt * n + j as OpenAI does. Streams carry `text` chunks, one
finish chunk per choice, the optional usage chunk, then `[DONE]`; there is no role chunk.

`echo` puts the prompt in front of each choice's text (in a stream: in its first chunk); with
`logprobs: k` the prompt's tokens come first in `logprobs` too, the first with a null logprob
(nothing predicts it), each other with its logprob under the raw model and k alternatives. This
is how lm-eval-harness scores a continuation (`echo: true, logprobs: 1, max_tokens: 1`, then
`token_logprobs[ctxlen:-1]`); `max_tokens: 0` scores the prompt without generating. Only echo
requests with logprobs make the engine run the LM head on every prompt row.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from talaria_proxy.api.errors import invalid
from talaria_proxy.api.generation import GenerationBatch
from talaria_proxy.api.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
                                        UsageInfo)
from talaria_proxy.api.serving_base import OpenAIServing, RequestContext
from talaria_proxy.sampling import SampledToken


class OpenAIServingCompletion(OpenAIServing):
    endpoint = "completions"
    id_prefix = "cmpl"
    prompt_param = "prompt"

    async def create(self, request: CompletionRequest, raw: Request) -> Response:
        ctx = self.new_context(request)
        echoes: list[str] = []  # per prompt: the text echoed in front of its choices

        def submit() -> GenerationBatch:
            self.check_common(request)
            self._check_unsupported(request)
            prompts = [self._tokenize(p) for p in request.prompts()]
            if request.echo:
                echoes.extend(p if isinstance(p, str) else self._detokenize(p) for p in request.prompts())
            scored = request.logprobs if request.echo else None
            if request.max_tokens == 0 and scored is None:
                scored = 0  # the engine only runs a sequence that generates nothing when it scores the prompt
            return self.start_batch(ctx, request, prompts, request.max_tokens, request.logprobs, scored)

        def echo_of(i: int) -> str | None:
            return echoes[i // request.n] if request.echo else None

        return await self.respond(raw, ctx, submit, request.stream,
                                  lambda batch: self._collect(ctx, request, batch, echo_of),
                                  lambda batch: self._chunks(ctx, request, batch, echo_of))

    def _check_unsupported(self, request: CompletionRequest) -> None:
        if request.max_tokens == 0 and not request.echo:
            raise invalid("max_tokens must be at least 1 (0 is only allowed with echo)", param="max_tokens")
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

    def _detokenize(self, ids: list[int]) -> str:
        if any(not 0 <= t < len(self.tokenizer) for t in ids):
            return ""  # the engine refuses the prompt anyway
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _logprobs(self, batch: GenerationBatch, i: int, tokens: list[SampledToken], offset: int,
                  echo: str | None) -> CompletionLogprobs:
        """Logprobs of `tokens` from text offset `offset`; with `echo`, the prompt's first."""
        if echo is None:
            return self.logprobs.completion(tokens, offset)
        prompt = self.logprobs.completion(batch.choices[i].seq.prompt_logprobs or [])
        generated = self.logprobs.completion(tokens, len(echo))
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(prompt, name).extend(getattr(generated, name))
        return prompt

    # -- answers ------------------------------------------------------------------------------
    async def _collect(self, ctx: RequestContext, request: CompletionRequest, batch: GenerationBatch,
                       echo_of) -> CompletionResponse:
        results = await self.gather(ctx, batch)
        choices = [
            CompletionChoice(index=i, text=(echo_of(i) or "") + r.text, finish_reason=r.finish_reason,
                             logprobs=(self._logprobs(batch, i, r.tokens, 0, echo_of(i))
                                       if request.logprobs is not None else None))
            for i, r in enumerate(results)
        ]
        return CompletionResponse(id=ctx.request_id, model=self.config.served_model_name,
                                  system_fingerprint=self.config.system_fingerprint, choices=choices,
                                  usage=UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    async def _chunks(self, ctx: RequestContext, request: CompletionRequest, batch: GenerationBatch, echo_of):
        created = int(time.time())
        offsets = [0] * len(batch.choices)  # text offset of each choice's next token
        echoed = [False] * len(batch.choices)  # echo goes into a choice's first chunk

        def chunk(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
            return CompletionResponse(id=ctx.request_id, created=created, model=self.config.served_model_name,
                                      system_fingerprint=self.config.system_fingerprint, choices=choices,
                                      usage=usage).model_dump_json()

        async for delta in batch.deltas():
            i = delta.index
            echo, text, logprobs = None, delta.text, None
            if not echoed[i] and request.echo:
                echoed[i], echo = True, echo_of(i)
                text = echo + text
            if request.logprobs is not None and (delta.tokens or echo is not None):
                logprobs = self._logprobs(batch, i, delta.tokens, offsets[i], echo)
                if logprobs.tokens:
                    offsets[i] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
                if echo is not None and not delta.tokens:
                    offsets[i] = len(echo)  # generated text starts after the echoed prompt
            if text or logprobs is not None:
                yield chunk([CompletionChoice(index=i, text=text, logprobs=logprobs)])
            if delta.finish_reason is not None:
                ctx.finish_reasons[i] = delta.finish_reason
                yield chunk([CompletionChoice(index=i, text="", finish_reason=delta.finish_reason)])
        if request.stream_options and request.stream_options.include_usage:
            yield chunk([], UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))
