"""Continuous batching: which rows of which sequences go into the next step.

Every step carries the decode token of each running sequence plus prefill chunks of new ones,
up to `max_batch_tokens` rows, and the model sends all of them in one call per layer-op. The
scheduler is plain data (no asyncio, no torch); the engine owns the event loop around it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from talaria_proxy.errors import EngineOverloaded
from talaria_proxy.kv_cache import KVCache
from talaria_proxy.sampling import Sampler, SamplingParams


@dataclass
class SchedulerConfig:
    max_batch_tokens: int = 512  # rows per step: decode tokens + prefill chunk rows
    max_running: int = 64  # sequences holding a KV cache at once
    max_waiting: int = 256  # bounded queue of admitted-but-not-started requests
    # an idle engine that gets a request waits until no other one has arrived for this long (at
    # most 10x as long in all), so that requests sent together share their first step
    batch_wait_ms: float = 3.0


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    seq_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sampler: Sampler
    max_len: int  # context window for this sequence (prompt + output)
    output_ids: list[int] = field(default_factory=list)
    cache: KVCache | None = None
    num_computed: int = 0  # tokens whose k/v are in the cache
    status: SeqStatus = SeqStatus.WAITING
    aborted: bool = False
    sink: Any = None  # the engine's per-sequence event queue
    prompt_logprobs: list | None = None  # SampledToken per prompt token (first: no logprob), when asked for

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def pending(self) -> int:
        """Tokens known but not yet in the cache (prompt remainder, or the last sampled token)."""
        return len(self.prompt_ids) + len(self.output_ids) - self.num_computed


@dataclass
class ScheduledChunk:
    seq: Sequence
    num_tokens: int
    completes: bool = False  # after this chunk every known token is cached: the step yields its next logits

    def __post_init__(self) -> None:
        self.completes = self.num_tokens == self.seq.pending


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        if len(self.waiting) >= self.config.max_waiting:
            raise EngineOverloaded(f"too many queued requests ({len(self.waiting)} waiting); retry later")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence, releasing its cache."""
        seq.status = SeqStatus.FINISHED
        seq.cache = None
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def schedule(self, new_cache) -> list[ScheduledChunk]:
        """Plan one step: decode tokens first (latency), then prefill chunks, oldest first."""
        budget = self.config.max_batch_tokens
        plan: list[ScheduledChunk] = []
        for seq in [s for s in self.running if s.num_computed >= len(s.prompt_ids)]:  # decoding
            if budget == 0:
                break
            plan.append(ScheduledChunk(seq, 1))
            budget -= 1
        for seq in [s for s in self.running if s.num_computed < len(s.prompt_ids)]:  # prefilling
            if budget == 0:
                break
            n = min(seq.pending, budget)
            plan.append(ScheduledChunk(seq, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.config.max_running:
            seq = self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            seq.cache = new_cache(seq.max_len)
            self.running.append(seq)
            n = min(seq.pending, budget)
            plan.append(ScheduledChunk(seq, n))
            budget -= n
        return plan
