"""The sequences of one HTTP request, consumed together, and cancelled together.

A request with `n` choices (or several legacy prompts) becomes several engine sequences that
batch in the same steps. `GenerationBatch` submits them, runs one small pump task per sequence
(engine events -> one shared queue), and turns events into `ChoiceDelta`s: text that is safe to
send, the tokens behind it (for logprobs) and the finish reason.

Cancellation is the point of this module: whenever the consumer goes away (client disconnect,
timeout, stop string, error), `close()` cancels the pumps, which closes `engine.stream()` and
aborts the sequence, and also aborts it directly, so it leaves the batch before the next step.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator

from talaria_proxy.api.errors import RequestTimedOut
from talaria_proxy.api.text_stream import TextStream
from talaria_proxy.engine import AsyncEngine, TokenEvent
from talaria_proxy.sampling import SampledToken, SamplingParams
from talaria_proxy.scheduler import Sequence, SeqStatus


@dataclass
class ChoiceDelta:
    index: int
    text: str  # new text of this choice ("" on a bare finish)
    tokens: list[SampledToken]  # tokens consumed since the previous delta of this choice
    finish_reason: str | None = None


@dataclass
class _Choice:
    index: int
    seq: Sequence
    stream: TextStream  # detokenizer + stop strings of this choice
    pump: asyncio.Task | None = None
    pending: list[SampledToken] = field(default_factory=list)  # tokens whose text is not sent yet
    completion_tokens: int = 0
    finish_reason: str | None = None


class GenerationBatch:
    """All sequences of one request; iterate `deltas()` once, always `close()` (idempotent)."""

    def __init__(self, engine: AsyncEngine, request_id: str, timeout_s: float):
        self.engine = engine
        self.request_id = request_id
        self.timeout_s = timeout_s
        self.deadline = asyncio.get_running_loop().time() + timeout_s
        self.choices: list[_Choice] = []
        self.first_token_at: float | None = None  # time.monotonic() of the first generated token
        self._queue: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()
        self._pushback: deque[tuple[int, TokenEvent]] = deque()
        self._open = 0  # choices without a finish reason yet

    # -- submission -----------------------------------------------------------------------
    def add(self, prompt_ids: list[int], params: SamplingParams, stream: TextStream) -> None:
        """Queue one choice in the engine; engine exceptions propagate (the caller closes the batch)."""
        index = len(self.choices)
        seq = self.engine.add_request(prompt_ids, params, f"{self.request_id}-{index}")
        choice = _Choice(index, seq, stream)
        choice.pump = asyncio.create_task(self._pump(choice), name=f"pump-{seq.seq_id}")
        self.choices.append(choice)
        self._open += 1

    async def _pump(self, choice: _Choice) -> None:
        # Cancelling this task raises inside engine.stream(), whose `finally` aborts the sequence.
        async for event in self.engine.stream(choice.seq):
            self._queue.put_nowait((choice.index, event))

    # -- consumption ----------------------------------------------------------------------
    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    async def wait_started(self) -> None:
        """Wait for the first engine event; raise its error if generation failed right away."""
        item = await self._next_event()
        self._pushback.append(item)
        if item[1].error is not None:
            raise item[1].error

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """Deltas worth sending (new text or a finish); raises the first engine error."""
        try:
            while self._open > 0:
                index, event = await self._next_event()
                choice = self.choices[index]
                if choice.finish_reason is not None:
                    continue  # a token produced before the stop-string abort took effect
                if event.error is not None:
                    raise event.error
                delta = self._advance(choice, event)
                if delta is not None:
                    yield delta
        finally:
            self.close()

    def _advance(self, choice: _Choice, event: TokenEvent) -> ChoiceDelta | None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        text = ""
        if event.token is not None:  # None: a finish without a token (echo with max_tokens 0)
            choice.completion_tokens += 1
            choice.pending.append(event.token)
            text = choice.stream.push(event.token.token_id)
        finish = None
        if choice.stream.stopped:
            finish = "stop"
            self._cancel(choice)  # the engine would keep generating past the stop string
        elif event.finish_reason is not None:
            finish = event.finish_reason
            text += choice.stream.finish()
        if finish is not None:
            choice.finish_reason = finish
            self._open -= 1
        if not text and finish is None:
            return None  # held back (partial character or possible stop string)
        delta = ChoiceDelta(choice.index, text, choice.pending, finish)
        choice.pending = []
        return delta

    async def _next_event(self) -> tuple[int, TokenEvent]:
        if self._pushback:
            return self._pushback.popleft()
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self._queue.get()
        except TimeoutError:
            self.close()
            raise RequestTimedOut(self.timeout_s) from None

    # -- cancellation ---------------------------------------------------------------------
    def _cancel(self, choice: _Choice) -> None:
        if choice.pump is not None and not choice.pump.done():
            choice.pump.cancel()
        if choice.seq.status is not SeqStatus.FINISHED:
            # Synchronous, so the sequence is out of the next step even before the pump runs again.
            self.engine.abort(choice.seq)

    def close(self) -> None:
        """Abort every unfinished sequence of the request. Safe to call more than once."""
        for choice in self.choices:
            self._cancel(choice)


class ClientDisconnected(Exception):
    """The HTTP client went away before its (non-streaming) answer was ready."""


async def cancel_on_disconnect(request, awaitable):
    """Await `awaitable`, cancelling it if the client disconnects first.

    Starlette does not cancel a plain (non-streaming) handler when its client goes away, so a
    generation would run to its token cap for nobody; we watch the ASGI receive channel, which
    yields `http.disconnect` once the body has been read and the connection closes.
    """
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # our own task is being cancelled (server shutdown): take the work down too
        work.cancel()
        watch.cancel()
        raise
    watch.cancel()
    if work in done:
        return work.result()
    work.cancel()
    await asyncio.wait({work})
    raise ClientDisconnected()


async def _wait_disconnect(request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
