"""The async engine: requests in, tokens out, one batched model step at a time.

    handle = engine.add_request(prompt_ids, params)   # raises before anything streams
    async for event in engine.stream(handle): ...      # TokenEvent per generated token
    engine.abort(handle)                               # leaves the batch before the next step

The model step (4*L + 1 blocking cloud calls) and the sampling of its logits run on one
dedicated engine thread, so the event loop keeps serving HTTP; scheduling and event delivery
happen on the loop, between steps. One thread, always the same: torch's OpenMP gives each thread
that runs parallel work its own team of workers, and with more teams' threads than cores their
idle workers sleep instead of spinning, which costs every op a wake-up (cloud_backend/compute.py
has the measurements). The engine thread keeps the torch thread count the process had when the
engine was built; the CLI then drops the event loop's thread to 1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import time
from dataclasses import dataclass

import torch

from talaria_proxy.errors import CloudError, TalariaError
from talaria_proxy.model import SeqChunk, SplitModel
from talaria_proxy.sampling import SampledToken, Sampler, SamplingParams, score_tokens
from talaria_proxy.scheduler import Scheduler, SchedulerConfig, Sequence, SeqStatus

log = logging.getLogger(__name__)


class ContextLengthExceeded(ValueError):
    pass


class EngineStopped(TalariaError):
    pass


@dataclass
class TokenEvent:
    token: SampledToken | None  # None only on an error event
    finish_reason: str | None = None  # 'stop' | 'length' on the last event
    error: Exception | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class EngineStats:
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    step_seconds: float = 0.0


class AsyncEngine:
    def __init__(self, model: SplitModel, config: SchedulerConfig | None = None, max_model_len: int | None = None):
        self.model = model
        self.scheduler = Scheduler(config or SchedulerConfig())
        if max_model_len is not None and max_model_len > model.arch.max_position_embeddings:  # RoPE and cache sized for it
            raise ValueError(f"max_model_len {max_model_len} is over the model's position limit of "
                             f"{model.arch.max_position_embeddings} tokens (max_position_embeddings)")
        self.max_model_len = max_model_len or model.arch.max_position_embeddings
        self.eos_ids = set(model.arch.eos_token_ids)
        self.stats = EngineStats()
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._accepting = True
        self.last_error: Exception | None = None
        self._threads = torch.get_num_threads()  # the engine thread's OpenMP team size
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the step loop on the running event loop (an engine may be stopped and started again)."""
        self._wake = asyncio.Event()
        self._accepting = True
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="talaria-engine", initializer=torch.set_num_threads,
                initargs=(self._threads,))
        self._task = asyncio.create_task(self._loop(), name="talaria-engine")

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuse new requests, let in-flight ones finish (up to drain_timeout), then stop."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while self.scheduler.has_work() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self._finish(seq, TokenEvent(None, error=EngineStopped("server is shutting down")))
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:  # a step still waiting on the cloud finishes on its own
            self._executor.shutdown(wait=False)
            self._executor = None

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        if not self._accepting:
            raise EngineStopped("server is shutting down")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise ContextLengthExceeded(
                f"this model's maximum context length is {self.max_model_len} tokens; the request has "
                f"{len(prompt_ids)} prompt tokens and asks for up to {params.max_tokens} more"
            )
        vocab = self.model.arch.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        seq = Sequence(
            seq_id=request_id or f"seq-{next(self._ids)}",
            prompt_ids=list(prompt_ids),
            params=params,
            sampler=Sampler(params, vocab, prompt_ids),
            max_len=self.max_model_len,
            sink=asyncio.Queue(),
        )
        self.scheduler.add(seq)
        self._wake.set()
        return seq

    async def stream(self, seq: Sequence):
        """Yield TokenEvents until the last one; abort the sequence if the consumer goes away."""
        try:
            while True:
                event: TokenEvent = await seq.sink.get()
                yield event
                if event.finish_reason is not None or event.error is not None:
                    return
        finally:
            if seq.status is not SeqStatus.FINISHED:
                self.abort(seq)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None):
        seq = self.add_request(prompt_ids, params, request_id)
        async for event in self.stream(seq):
            yield event

    def abort(self, seq: Sequence) -> None:
        """Mark for removal; it is dropped before the next step is planned."""
        seq.aborted = True
        if seq.status is SeqStatus.WAITING:
            self.scheduler.remove(seq)
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------
    def _finish(self, seq: Sequence, event: TokenEvent) -> None:
        self.scheduler.remove(seq)
        event.prompt_tokens = len(seq.prompt_ids)
        event.completion_tokens = len(seq.output_ids)
        seq.sink.put_nowait(event)

    async def _loop(self) -> None:
        while True:
            for seq in [s for s in self.scheduler.running if s.aborted]:
                self.scheduler.remove(seq)
            if not self.scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                await self._gather_arrivals()
                continue
            plan = self.scheduler.schedule(self.model.new_cache)
            if not plan:
                await asyncio.sleep(0)
                continue
            chunks = [
                SeqChunk(c.seq.cache, c.seq.all_ids[c.seq.num_computed : c.seq.num_computed + c.num_tokens],
                         c.seq.num_computed, c.completes, all_logits=self._scores_prompt(c.seq))
                for c in plan
            ]
            samplers = [c.seq.sampler if c.completes and not c.seq.aborted and c.seq.params.max_tokens > 0 else None
                        for c in plan]
            t0 = time.perf_counter()
            try:
                sampled = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._step, chunks, samplers, [c.seq for c in plan])
            except Exception as exc:  # cloud down, protocol error: fail this step's sequences, keep serving
                self.last_error = exc
                if not isinstance(exc, CloudError):
                    log.exception("model step failed")
                else:
                    log.error("model step failed: %s", exc)
                for c in plan:
                    self._finish(c.seq, TokenEvent(None, error=exc))
                continue
            self.last_error = None
            self.stats.steps += 1
            self.stats.step_seconds += time.perf_counter() - t0
            for c, token in zip(plan, sampled):
                seq = c.seq
                if seq.num_computed < len(seq.prompt_ids):
                    self.stats.prompt_tokens += c.num_tokens
                seq.num_computed += c.num_tokens
                if c.completes and seq.params.max_tokens == 0 and not seq.aborted:  # echo of the prompt alone
                    self._finish(seq, TokenEvent(None, finish_reason="length"))
                    continue
                if token is None or seq.aborted or seq.status is SeqStatus.FINISHED:
                    continue
                self._emit(seq, token)

    async def _gather_arrivals(self) -> None:
        """After idling: wait while requests keep arriving (each within batch_wait_ms of the last,
        10x that in all), so that requests sent together share one prefill step instead of the
        first one running alone while the others queue behind it."""
        quiet = self.scheduler.config.batch_wait_ms / 1e3
        if quiet <= 0:
            return
        deadline = time.monotonic() + 10 * quiet
        seen = len(self.scheduler.waiting)
        while time.monotonic() < deadline:
            await asyncio.sleep(min(quiet, max(0.0, deadline - time.monotonic())))
            if len(self.scheduler.waiting) == seen:
                return
            seen = len(self.scheduler.waiting)

    @staticmethod
    def _scores_prompt(seq: Sequence) -> bool:
        return seq.params.prompt_logprobs is not None and seq.num_computed < len(seq.prompt_ids)

    def _step(self, chunks: list[SeqChunk], samplers: list[Sampler | None],
              seqs: list[Sequence]) -> list[SampledToken | None]:
        """On the engine thread: one model step, and a token for each chunk that has a sampler
        (chunks that complete their sequence's input have a row of logits; aborted ones no sampler).
        Chunks with all_logits also score their prompt tokens into seq.prompt_logprobs."""
        logits = self.model.forward(chunks)  # [R, V]: all rows of all_logits chunks, else the last row
        out, row = [], 0
        for chunk, sampler, seq in zip(chunks, samplers, seqs):
            if chunk.all_logits:
                n = len(chunk.token_ids)
                self._score_prompt(seq, chunk.start, logits[row : row + n])
                row += n - 1  # the last row is also the one sampled from
            elif not chunk.need_logits:
                out.append(None)
                continue
            out.append(sampler.sample(logits[row]) if sampler is not None and chunk.need_logits else None)
            row += 1
        return out

    @staticmethod
    def _score_prompt(seq: Sequence, start: int, logits: torch.Tensor) -> None:
        """logits [T, V] of prompt positions start..start+T-1; row j predicts prompt token start+j+1."""
        if seq.prompt_logprobs is None:
            seq.prompt_logprobs = [SampledToken(seq.prompt_ids[0])]  # nothing predicts the first token
        targets = seq.prompt_ids[start + 1 : start + len(logits) + 1]
        if targets:
            seq.prompt_logprobs += score_tokens(logits[: len(targets)], targets, seq.params.prompt_logprobs)

    def _emit(self, seq: Sequence, sampled: SampledToken) -> None:
        seq.output_ids.append(sampled.token_id)
        self.stats.generated_tokens += 1
        p = seq.params
        tok = sampled.token_id
        reason = None
        if tok in p.stop_token_ids or (not p.ignore_eos and tok in self.eos_ids):
            reason = "stop"
        elif len(seq.output_ids) >= p.max_tokens or len(seq.all_ids) >= seq.max_len:
            reason = "length"
        event = TokenEvent(sampled, finish_reason=reason)
        if reason is not None:
            self._finish(seq, event)
        else:
            event.prompt_tokens = len(seq.prompt_ids)
            event.completion_tokens = len(seq.output_ids)
            seq.sink.put_nowait(event)
