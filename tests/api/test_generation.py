"""Unit tests of talaria_proxy.api.generation with a scripted engine: every way a request ends
(finish, stop string, timeout, consumer cancelled, client disconnect, error) aborts what is
still running, and n choices are merged correctly."""

from __future__ import annotations

import asyncio

import pytest

from talaria_proxy.api.errors import RequestTimedOut
from talaria_proxy.api.generation import ClientDisconnected, GenerationBatch, cancel_on_disconnect
from talaria_proxy.api.text_stream import TextStream
from talaria_proxy.engine import TokenEvent
from talaria_proxy.errors import CloudUnavailable
from talaria_proxy.sampling import SampledToken, SamplingParams
from talaria_proxy.scheduler import SeqStatus


class ScriptedSeq:
    def __init__(self, seq_id: str):
        self.seq_id = seq_id
        self.status = SeqStatus.RUNNING
        self.sink: asyncio.Queue = asyncio.Queue()


class ScriptedEngine:
    """The part of AsyncEngine a GenerationBatch uses; tests push events by hand."""

    def __init__(self):
        self.seqs: list[ScriptedSeq] = []
        self.aborted: set[str] = set()

    def add_request(self, prompt_ids, params, request_id):
        seq = ScriptedSeq(request_id)
        self.seqs.append(seq)
        return seq

    async def stream(self, seq):
        try:
            while True:
                event = await seq.sink.get()
                yield event
                if event.finish_reason or event.error:
                    seq.status = SeqStatus.FINISHED
                    return
        finally:
            if seq.status is not SeqStatus.FINISHED:
                self.abort(seq)

    def abort(self, seq):
        self.aborted.add(seq.seq_id)
        seq.status = SeqStatus.FINISHED

    def emit(self, i: int, token_id: int, finish: str | None = None):
        self.seqs[i].sink.put_nowait(TokenEvent(SampledToken(token_id), finish_reason=finish))


def _batch(engine, tokenizer, n=1, stop=None, timeout=30.0) -> GenerationBatch:
    batch = GenerationBatch(engine, "req-1", timeout)
    for _ in range(n):
        batch.add([1, 2], SamplingParams(max_tokens=50), TextStream(tokenizer, stop or [], None))
    return batch


def _ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


async def test_n_choices_merge_and_finish(tokenizer):
    engine = ScriptedEngine()
    batch = _batch(engine, tokenizer, n=2)
    a, b = _ids(tokenizer, "red apples"), _ids(tokenizer, "blue sky")
    for i, ids in enumerate((a, b)):
        for k, t in enumerate(ids):
            engine.emit(i, t, "length" if k == len(ids) - 1 else None)
    texts, finishes = ["", ""], []
    async for d in batch.deltas():
        texts[d.index] += d.text
        if d.finish_reason:
            finishes.append((d.index, d.finish_reason))
    assert texts == ["red apples", "blue sky"]
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    assert batch.completion_tokens == len(a) + len(b)
    assert engine.aborted == set()  # both finished on their own


async def test_stop_string_aborts_only_its_choice(tokenizer):
    engine = ScriptedEngine()
    batch = _batch(engine, tokenizer, n=2, stop=["sky"])
    for t in _ids(tokenizer, "blue sky and more"):
        engine.emit(0, t)
    ids = _ids(tokenizer, "green grass")
    for k, t in enumerate(ids):
        engine.emit(1, t, "length" if k == len(ids) - 1 else None)
    texts, finishes = ["", ""], {}
    async for d in batch.deltas():
        texts[d.index] += d.text
        if d.finish_reason:
            finishes[d.index] = d.finish_reason
    assert texts == ["blue ", "green grass"] and finishes == {0: "stop", 1: "length"}
    assert engine.aborted == {"req-1-0"}


async def test_timeout_aborts_everything(tokenizer):
    engine = ScriptedEngine()
    batch = _batch(engine, tokenizer, n=2, timeout=0.2)
    engine.emit(0, _ids(tokenizer, "hi")[0])
    with pytest.raises(RequestTimedOut) as info:
        async for _ in batch.deltas():
            pass
    assert info.value.status == 504
    assert engine.aborted == {"req-1-0", "req-1-1"}


async def test_cancelled_consumer_aborts_everything(tokenizer):
    engine = ScriptedEngine()
    batch = _batch(engine, tokenizer, n=3)

    async def consume():
        async for _ in batch.deltas():
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert engine.aborted == {"req-1-0", "req-1-1", "req-1-2"}
    await asyncio.sleep(0)  # the pumps' own cleanup must not fail either
    assert all(c.pump.done() for c in batch.choices)


async def test_engine_error_is_raised_and_first_event_is_checked(tokenizer):
    engine = ScriptedEngine()
    batch = _batch(engine, tokenizer, n=2)
    engine.seqs[0].sink.put_nowait(TokenEvent(None, error=CloudUnavailable("down")))
    with pytest.raises(CloudUnavailable):
        await batch.wait_started()
    batch.close()
    assert "req-1-1" in engine.aborted


class FakeRequest:
    def __init__(self, disconnect_after: float | None):
        self.disconnect_after = disconnect_after

    async def receive(self):
        if self.disconnect_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.disconnect_after)
        return {"type": "http.disconnect"}


async def test_cancel_on_disconnect():
    cancelled = asyncio.Event()

    async def slow():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(cancel_on_disconnect(FakeRequest(0.05), slow()), 5)
    assert cancelled.is_set()

    async def quick():
        return 42

    assert await cancel_on_disconnect(FakeRequest(None), quick()) == 42
