"""What the chat and legacy-completions endpoints share: model check, sampling parameters,
submitting a request's sequences, logprob token texts, and the end-of-request log line.

The log line is the only per-request log at info level and carries ids, counts and timings;
prompt and completion text never reach a logger (a security property of the CVM).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache

from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from talaria_proxy.api.errors import APIError, api_error_from, invalid
from talaria_proxy.api.generation import GenerationBatch
from talaria_proxy.api.metrics import ProxyMetrics
from talaria_proxy.api.protocol import SamplingFields
from talaria_proxy.api.text_stream import TextStream
from talaria_proxy.engine import AsyncEngine, ContextLengthExceeded
from talaria_proxy.sampling import SamplingParams

log = logging.getLogger("talaria_proxy.api")

CLIENT_CLOSED = 499  # nginx's status for "client closed request"; only ever logged


@dataclass
class ServingConfig:
    served_model_name: str  # the id in /v1/models and in every response
    model_aliases: frozenset[str]  # other names accepted in requests (e.g. the cloud's model name)
    max_n: int
    request_timeout: float
    system_fingerprint: str | None = None


@dataclass
class RequestContext:
    """Bookkeeping of one request, for the final log line and the metrics."""

    request_id: str
    endpoint: str
    started: float
    n: int = 1
    prompt_tokens: int = 0


class OpenAIServing:
    endpoint = "base"
    id_prefix = "req"
    prompt_param = "prompt"  # the parameter a context-length error names

    def __init__(self, engine: AsyncEngine, tokenizer, config: ServingConfig, metrics: ProxyMetrics):
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.metrics = metrics
        self.token_texts = TokenTexts(tokenizer) if tokenizer is not None else None

    # -- request checks ---------------------------------------------------------------------
    def new_context(self, request: SamplingFields) -> RequestContext:
        ctx = RequestContext(f"{self.id_prefix}-{uuid.uuid4().hex}", self.endpoint, time.monotonic(), n=request.n)
        if request.model_extra:
            # Names only: the values of unknown fields may be user text.
            log.debug("%s: ignoring unknown fields %s", ctx.request_id, sorted(request.model_extra))
        return ctx

    def check_model(self, name: str) -> None:
        if name != self.config.served_model_name and name not in self.config.model_aliases:
            raise APIError(404, f"the model '{name}' does not exist; this server serves "
                                f"'{self.config.served_model_name}'", param="model", code="model_not_found")

    def check_common(self, request: SamplingFields) -> None:
        if request.n > self.config.max_n:
            raise invalid(f"n must be at most {self.config.max_n} on this server, got {request.n}", param="n")
        if self.tokenizer is None:
            raise invalid("this model was published without a tokenizer; text requests are unavailable")

    # -- submission -------------------------------------------------------------------------
    def sampling_params(self, request: SamplingFields, prompt_len: int, token_cap: int | None,
                        logprobs: int | None, choice: int) -> SamplingParams:
        room = self.engine.max_model_len - prompt_len
        if token_cap is None:
            if room < 1:
                raise ContextLengthExceeded(
                    f"this model's maximum context length is {self.engine.max_model_len} tokens; the prompt "
                    f"has {prompt_len} tokens, which leaves no room for an answer")
            token_cap = room  # OpenAI's default: as much as the context allows
        top_k = request.top_k if request.top_k and request.top_k > 0 else 0
        return SamplingParams(
            max_tokens=token_cap,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=top_k,
            # n choices of a seeded request are reproducible one by one: seed, seed+1, ...
            seed=None if request.seed is None else request.seed + choice,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias=request.logit_bias_ids(),
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
        )

    def start_batch(self, ctx: RequestContext, request: SamplingFields, prompts: list[list[int]],
                    token_cap: int | None, logprobs: int | None) -> GenerationBatch:
        """Submit `n` sequences per prompt (choice index = prompt * n + j); all or none."""
        batch = GenerationBatch(self.engine, ctx.request_id, self.config.request_timeout)
        stop = request.stop_strings()
        ctx.prompt_tokens = sum(len(p) for p in prompts)
        try:
            for prompt in prompts:
                for _ in range(request.n):
                    choice = len(batch.choices)
                    params = self.sampling_params(request, len(prompt), token_cap, logprobs, choice)
                    batch.add(prompt, params, TextStream(self.tokenizer, stop, prompt))
        except Exception as exc:
            batch.close()  # sequences already queued must not run for nobody
            raise api_error_from(exc, self.prompt_param) from None
        return batch

    # -- end of request ---------------------------------------------------------------------
    def finish(self, ctx: RequestContext, status: int, batch: GenerationBatch | None,
               finish_reasons: list[str | None] | None = None) -> None:
        now = time.monotonic()
        completion = batch.completion_tokens if batch is not None else 0
        ttft = batch.first_token_at - ctx.started if batch is not None and batch.first_token_at else None
        self.metrics.observe_request(self.endpoint, status, ctx.prompt_tokens if batch else 0, completion,
                                     ttft, now - ctx.started)
        log.info("%s %s status=%d n=%d prompt_tokens=%d completion_tokens=%d finish=%s ttft=%s duration=%.3fs",
                 ctx.request_id, self.endpoint, status, ctx.n, ctx.prompt_tokens, completion,
                 ",".join(r or "-" for r in finish_reasons or []) or "-",
                 f"{ttft:.3f}s" if ttft is not None else "-", now - ctx.started)


def event_stream(events, batch: GenerationBatch, ctx: RequestContext, shutdown_grace: float) -> EventSourceResponse:
    """SSE response over `events` (JSON strings), `data: ...\\n\\n` framing as OpenAI.

    If the client disconnects before the generator even starts, its `finally` never runs; the
    close handler and the background task abort the batch in that case too (both idempotent).
    On server shutdown a stream gets `shutdown_grace` seconds to finish before it is cut.
    """
    async def on_client_close(_message) -> None:
        batch.close()

    return EventSourceResponse(events, sep="\n", headers={"x-request-id": ctx.request_id},
                               client_close_handler_callable=on_client_close,
                               background=BackgroundTask(batch.close),
                               shutdown_grace_period=shutdown_grace)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class TokenTexts:
    """Token id -> (text, UTF-8 bytes) for logprobs. Bytes are exact for byte-level BPE vocabularies,
    where a token may hold part of a character (its text then shows U+FFFD)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_decoder = ({c: b for b, c in bytes_to_unicode().items()}
                             if type(decoder).__name__ == "ByteLevel" else None)
        self.get = lru_cache(maxsize=65536)(self._compute)

    def _compute(self, token_id: int) -> tuple[str, list[int]]:
        text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if self.byte_decoder is not None:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and piece and all(ch in self.byte_decoder for ch in piece):
                return text, [self.byte_decoder[ch] for ch in piece]
        return text, list(text.encode("utf-8"))


def clamp_logprob(value: float | None) -> float:
    """JSON has no -inf; OpenAI reports impossible tokens as -9999."""
    if value is None or value != value or value < -9999.0:
        return -9999.0
    return float(value)
