"""What the chat and legacy-completions endpoints share: the request flow (checks, submission,
streamed or collected answer, error mapping, cancellation), sampling parameters, and the
end-of-request log line.

    submit() -> GenerationBatch -> stream:  wait for the first token, then SSE events
                                   else:    collect every choice, then one JSON body

The log line is the only per-request log at info level and carries ids, counts and timings;
prompt and completion text never reach a logger (a security property of the CVM).

`submit` (checks, chat template, tokenization) runs on one tokenizer thread, never on the event
loop: a large prompt must not stall /health and every other stream; `start_batch` hops back to
the loop, which owns the engine's queues. Prompts that cannot fit are refused before any of that
(`prompt_token_bound`, api/limits.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from talaria_proxy.api.errors import APIError, api_error_from, invalid
from talaria_proxy.api.generation import ClientDisconnected, GenerationBatch, cancel_on_disconnect
from talaria_proxy.api.limits import MAX_STOP_STRINGS, prompt_token_bound
from talaria_proxy.api.logprobs import LogprobFormatter
from talaria_proxy.api.metrics import ProxyMetrics
from talaria_proxy.api.protocol import SamplingFields
from talaria_proxy.api.text_stream import TextStream
from talaria_proxy.engine import AsyncEngine, ContextLengthExceeded, EngineStopped
from talaria_proxy.sampling import SampledToken, SamplingParams

log = logging.getLogger("talaria_proxy.api")

CLIENT_CLOSED = 499  # nginx's status for "client closed request"; only ever logged
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # unknown fields logged by name only if they look like one
# one thread for every request's checks, template and tokenization: off the event loop, and one at
# a time (a fast tokenizer must not be used from two threads at once)
_TOKENIZER_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="talaria-tokenize")


def on_event_loop(method):
    """Run `method` on the event loop even when called from the tokenizer thread (it creates
    asyncio tasks), blocking that thread until it returns."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        loop = getattr(self, "_loop", None)
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        if on_loop or loop is None:
            return method(self, *args, **kwargs)
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(method(self, *args, **kwargs))
            except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result()
    return wrapper


@dataclass
class ServingConfig:
    served_model_name: str  # the id in /v1/models and in every response
    model_aliases: frozenset[str]  # other names accepted in requests (e.g. the cloud's model name)
    max_n: int  # largest `n` accepted
    request_timeout: float  # seconds before a generation is aborted (504)
    shutdown_grace: float  # seconds a stream may run on after SIGTERM
    system_fingerprint: str | None = None


@dataclass
class RequestContext:
    """Bookkeeping of one request, for the final log line and the metrics."""

    request_id: str
    started: float  # time.monotonic() at arrival
    n: int = 1
    prompt_tokens: int = 0
    finish_reasons: list[str | None] = field(default_factory=list)


@dataclass
class ChoiceResult:
    text: str = ""
    tokens: list[SampledToken] = field(default_factory=list)
    finish_reason: str | None = None


class OpenAIServing:
    endpoint = "base"
    id_prefix = "req"
    prompt_param = "prompt"  # the parameter a context-length error names

    def __init__(self, engine: AsyncEngine, tokenizer, config: ServingConfig, metrics: ProxyMetrics):
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.metrics = metrics
        self.logprobs = LogprobFormatter(tokenizer) if tokenizer is not None else None

    # -- request checks ---------------------------------------------------------------------
    def new_context(self, request: SamplingFields) -> RequestContext:
        ctx = RequestContext(f"{self.id_prefix}-{uuid.uuid4().hex}", time.monotonic(), n=request.n)
        if request.model_extra:
            # Names only, and only names that look like field names: a client's key is its own text.
            names = sorted(k for k in request.model_extra if _FIELD_NAME.fullmatch(k))
            log.debug("%s: ignoring unknown fields %s (+%d unnamed)", ctx.request_id, names,
                      len(request.model_extra) - len(names))
        return ctx

    def check_model(self, name: str) -> None:
        if name != self.config.served_model_name and name not in self.config.model_aliases:
            raise APIError(404, f"the model '{name}' does not exist; this server serves "
                                f"'{self.config.served_model_name}'", param="model", code="model_not_found")

    def check_common(self, request: SamplingFields) -> None:
        self.check_model(request.model)
        stop = request.stop
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:  # each is matched on every token
            raise invalid(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stop)}", param="stop")
        bound = prompt_token_bound(request, self.tokenizer)
        if bound > self.engine.max_model_len:  # refused before the template and the tokenizer run
            raise ContextLengthExceeded(f"this model's maximum context length is {self.engine.max_model_len} tokens; "
                                        f"the prompt has at least {bound} tokens")
        if request.n > self.config.max_n:
            raise invalid(f"n must be at most {self.config.max_n} on this server, got {request.n}", param="n")
        if self.tokenizer is None:
            raise invalid("this model was published without a tokenizer; text requests are unavailable")
        refused = request.refused_extension()
        if refused is not None:
            raise invalid(f"{refused} is not supported by this server", param=refused)

    # -- submission -------------------------------------------------------------------------
    def sampling_params(self, request: SamplingFields, prompt_len: int, token_cap: int | None,
                        logprobs: int | None, choice: int, prompt_logprobs: int | None = None) -> SamplingParams:
        if token_cap is None:
            room = self.engine.max_model_len - prompt_len
            if room < 1:
                raise ContextLengthExceeded(
                    f"this model's maximum context length is {self.engine.max_model_len} tokens; the prompt "
                    f"has {prompt_len} tokens, which leaves no room for an answer")
            token_cap = room  # OpenAI's default: as much as the context allows
        return SamplingParams(
            max_tokens=token_cap,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=max(request.top_k or 0, 0),  # -1 and 0 both mean "no top-k cut"
            # n choices of a seeded request are reproducible one by one: seed, seed+1, ...
            seed=None if request.seed is None else request.seed + choice,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias=request.logit_bias_ids(),
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            min_p=request.min_p or 0.0,
            repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
            stop_token_ids=list(request.stop_token_ids or []),
        )

    @on_event_loop
    def start_batch(self, ctx: RequestContext, request: SamplingFields, prompts: list[list[int]],
                    token_cap: int | None, logprobs: int | None,
                    prompt_logprobs: int | None = None, grammar: object | None = None,
                    new_stream: Callable[[list[int]], TextStream] | None = None) -> GenerationBatch:
        """Submit `n` sequences per prompt (choice index = prompt * n + j); all or none. `grammar`
        (talaria_proxy.grammar) constrains every choice; `new_stream(prompt)` replaces the TextStream."""
        sequences, queue = len(prompts) * request.n, self.engine.scheduler.config.max_waiting
        if sequences > queue:  # never fits in the waiting queue: a 429 would be retried forever
            raise invalid(f"this request needs {sequences} sequences (prompts x n) but at most {queue} can be "
                          "queued on this server (max_waiting)", param="n")
        batch = GenerationBatch(self.engine, ctx.request_id, self.config.request_timeout)
        stop = request.stop_strings()
        ctx.prompt_tokens = sum(len(p) for p in prompts)
        ctx.finish_reasons = [None] * (len(prompts) * request.n)
        try:
            for prompt in prompts:
                for _ in range(request.n):
                    params = self.sampling_params(request, len(prompt), token_cap, logprobs, len(batch.choices),
                                                  prompt_logprobs)
                    params.grammar = grammar
                    stream = new_stream(prompt) if new_stream is not None else TextStream(self.tokenizer, stop, prompt)
                    batch.add(prompt, params, stream)
        except BaseException:
            batch.close()  # sequences already queued must not run for nobody
            raise
        return batch

    # -- the request flow -------------------------------------------------------------------
    async def respond(self, raw: Request, ctx: RequestContext, submit: Callable[[], GenerationBatch], stream: bool,
                      collect: Callable[[GenerationBatch], Awaitable[BaseModel]],
                      events: Callable[[GenerationBatch], AsyncIterator[str]]) -> Response:
        """Run `submit` (checks + submission), then answer as SSE `events` or the `collect`ed body."""
        batch = None
        self._loop = asyncio.get_running_loop()
        try:
            batch = await self._loop.run_in_executor(_TOKENIZER_THREAD, submit)
            if stream:
                # Wait for the first token before answering 200, so that a cloud that is down
                # gets a real 502/503 status instead of an error inside a successful stream.
                await cancel_on_disconnect(raw, batch.wait_started())
                shutdown = anyio.Event()  # set by sse-starlette on SIGTERM
                return self._event_stream(self._sse(ctx, batch, events(batch), shutdown), batch, ctx, shutdown)
            body = await cancel_on_disconnect(raw, collect(batch))
        except ClientDisconnected:
            batch.close()
            self.finish(ctx, CLIENT_CLOSED, batch)
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:
            if batch is not None:
                batch.close()
            error = api_error_from(exc, self.prompt_param)
            self.finish(ctx, error.status, batch)
            return error.response()
        self.finish(ctx, 200, batch)
        return JSONResponse(body.model_dump(), headers={"x-request-id": ctx.request_id})

    async def gather(self, ctx: RequestContext, batch: GenerationBatch) -> list[ChoiceResult]:
        """Every choice's full text, tokens and finish reason (the non-streaming answer)."""
        await batch.wait_started()
        results = [ChoiceResult() for _ in batch.choices]
        async for delta in batch.deltas():
            result = results[delta.index]
            result.text += delta.text
            result.tokens += delta.tokens
            result.finish_reason = delta.finish_reason or result.finish_reason
            ctx.finish_reasons[delta.index] = result.finish_reason
        return results

    async def _sse(self, ctx: RequestContext, batch: GenerationBatch, chunks: AsyncIterator[str],
                   shutdown: anyio.Event | None = None):
        """Frame an endpoint's chunks: an error becomes one error event; always end with [DONE]."""
        status = 200
        try:
            async for chunk in self._until_drained(chunks, shutdown):
                yield chunk
        except Exception as exc:
            error = api_error_from(exc, self.prompt_param)
            status = error.status
            log.warning("%s: stream ended with an error: %s", ctx.request_id, error.code or error.type)
            yield json.dumps(error.body())
        except BaseException:  # the client went away (cancelled / closed): nothing more to send
            status = CLIENT_CLOSED
            raise
        finally:
            batch.close()
            self.finish(ctx, status, batch)
        yield "[DONE]"

    async def _until_drained(self, chunks: AsyncIterator[str], shutdown: anyio.Event | None):
        """`chunks` until the shutdown drain is nearly over, then EngineStopped: the stream ends with
        an error event and [DONE] instead of being cancelled mid-answer when the grace period ends."""
        if shutdown is None:
            async for chunk in chunks:
                yield chunk
            return
        grace = self.config.shutdown_grace
        cut = asyncio.ensure_future(_after_shutdown(shutdown, grace - min(1.0, grace / 2)))
        it, step = chunks.__aiter__(), None
        try:
            while True:
                step = asyncio.ensure_future(it.__anext__())
                await asyncio.wait({step, cut}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise EngineStopped(f"the server is shutting down; the answer was cut after {grace:g} s")
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            cut.cancel()
            if step is not None and not step.done():
                step.cancel()

    def _event_stream(self, events, batch: GenerationBatch, ctx: RequestContext,
                      shutdown: anyio.Event | None = None) -> EventSourceResponse:
        """SSE response with OpenAI's `data: ...\\n\\n` framing.

        A client that disconnects before the generator even starts would skip its `finally`; the
        close handler and the background task abort the batch in that case too (idempotent).
        On SIGTERM a stream may run on for `shutdown_grace` seconds before it is cut.
        """
        async def on_client_close(_message) -> None:
            batch.close()

        return EventSourceResponse(events, sep="\n", headers={"x-request-id": ctx.request_id},
                                   client_close_handler_callable=on_client_close,
                                   background=BackgroundTask(batch.close),
                                   shutdown_event=shutdown, shutdown_grace_period=self.config.shutdown_grace)

    # -- end of request ---------------------------------------------------------------------
    def finish(self, ctx: RequestContext, status: int, batch: GenerationBatch | None) -> None:
        now = time.monotonic()
        completion = batch.completion_tokens if batch is not None else 0
        ttft = batch.first_token_at - ctx.started if batch is not None and batch.first_token_at else None
        self.metrics.observe_request(self.endpoint, status, ctx.prompt_tokens if batch else 0, completion,
                                     ttft, now - ctx.started)
        log.info("%s %s status=%d n=%d prompt_tokens=%d completion_tokens=%d finish=%s ttft=%s duration=%.3fs",
                 ctx.request_id, self.endpoint, status, ctx.n, ctx.prompt_tokens, completion,
                 ",".join(r or "-" for r in ctx.finish_reasons) or "-",
                 f"{ttft:.3f}s" if ttft is not None else "-", now - ctx.started)


async def _after_shutdown(shutdown: anyio.Event, delay: float) -> None:
    await shutdown.wait()
    await asyncio.sleep(max(0.0, delay))
