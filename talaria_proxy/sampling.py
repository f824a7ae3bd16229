"""Sampling in the CVM: logits of one sequence -> next token (+ logprobs).

Order of logit processing (as vLLM): logit_bias, the repetition penalty (on prompt and generated
tokens: a positive logit is divided by it, a negative one multiplied), presence/frequency
penalties (on generated tokens), then temperature, min-p (drop tokens whose probability is below
min_p times the largest one's), top-k, top-p. Temperature 0 is greedy. Logprobs are of the model's raw
distribution (log_softmax of the unprocessed logits), as OpenAI reports them.

Shape legend: V vocab.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 16  # cap on generated tokens
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # nucleus mass kept, (0, 1]
    top_k: int = 0  # keep the k most likely tokens; 0: all
    seed: int | None = None  # per-request generator seed (reproducible sampling)
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence of a generated token
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> additive bias
    stop_token_ids: list[int] = field(default_factory=list)  # generation ends after one of these
    ignore_eos: bool = False  # do not stop at the model's EOS tokens
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token + k top alternatives
    grammar: object | None = None  # a talaria_proxy.grammar.CompiledGrammar: every step is masked by it
    prompt_logprobs: int | None = None  # None: off; k >= 0: logprob of each prompt token + k top alternatives
    min_p: float = 0.0  # keep tokens with probability >= min_p * the top token's (after temperature); 0: off
    repetition_penalty: float = 1.0  # > 0; 1: off; > 1 discourages tokens of the prompt and the output

    def __post_init__(self) -> None:
        if self.max_tokens < (0 if self.prompt_logprobs is not None else 1):  # 0: only score the prompt (echo)
            raise ValueError("max_tokens must be >= 1 (or 0 when scoring the prompt)")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("top_logprobs must be between 0 and 20")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            raise ValueError("prompt logprobs must be between 0 and 20")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")


@dataclass
class SampledToken:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None  # (token id, logprob), most likely first


class Sampler:
    """Per-sequence sampler: owns the sequence's random generator and its token counts."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: list[int] | None = None):
        self.params = params
        self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        self.counts = torch.zeros(vocab_size)  # [V] occurrences of each generated token
        self.in_prompt = None  # [V] bool: tokens of the prompt (only the repetition penalty reads it)
        if params.repetition_penalty != 1.0:
            self.in_prompt = torch.zeros(vocab_size, dtype=torch.bool)
            self.in_prompt[[t for t in prompt_ids or [] if 0 <= t < vocab_size]] = True
        self.bias = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size)
            for tok, b in params.logit_bias.items():
                if not 0 <= int(tok) < vocab_size:
                    raise ValueError(f"logit_bias token id {tok} is outside the vocabulary (0..{vocab_size - 1})")
                self.bias[int(tok)] = float(b)
        # Requests without a grammar never touch llguidance (no mask, no import).
        self.constraint = params.grammar.constraint(params.max_tokens) if params.grammar is not None else None

    def penalized(self, logits: torch.Tensor) -> torch.Tensor:
        """[V] raw logits -> [V] after logit_bias and the penalties (what greedy takes the argmax of)."""
        p = self.params
        x = logits.clone()
        if self.bias is not None:
            x += self.bias
        if self.in_prompt is not None:
            seen = (self.in_prompt | (self.counts > 0)).nonzero()[:, 0]  # only these few logits change
            # Dividing a negative logit would raise it: vLLM (after CTRL) multiplies those instead.
            old = x[seen]
            x[seen] = torch.where(old > 0, old / p.repetition_penalty, old * p.repetition_penalty)
        if p.presence_penalty or p.frequency_penalty:
            x -= p.presence_penalty * (self.counts > 0).float() + p.frequency_penalty * self.counts
        return x

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """[V] penalized logits -> [V] the distribution a token is drawn from (temperature > 0)."""
        p = self.params
        x = x / p.temperature
        if p.min_p > 0:
            probs = torch.softmax(x, dim=-1)
            x = x.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
        if p.top_k:
            kth = torch.topk(x, min(p.top_k, x.numel())).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if p.top_p < 1:
            sorted_x, order = torch.sort(x, descending=True)
            probs = torch.softmax(sorted_x, dim=-1)
            drop = probs.cumsum(-1) - probs > p.top_p  # keep the smallest prefix with mass >= top_p
            x[order[drop]] = float("-inf")
        return torch.softmax(x, dim=-1)

    def sample(self, logits: torch.Tensor) -> SampledToken:
        """logits: [V] float32."""
        p = self.params
        raw = logits
        x = self.penalized(logits)
        forced = self.constraint.restrict(x) if self.constraint is not None else None  # -inf where not allowed
        if forced is not None:
            token = forced  # the grammar's closing: the token budget is nearly spent
        elif p.temperature == 0:
            token = int(torch.argmax(x))
        else:
            token = int(torch.multinomial(self.probabilities(x), 1, generator=self.generator))
        self.counts[token] += 1
        if self.constraint is not None:
            self.constraint.accept(token)
        out = SampledToken(token)
        if p.logprobs is not None:
            lp = torch.log_softmax(raw.float(), dim=-1)
            out.logprob = float(lp[token])
            if p.logprobs > 0:
                vals, idx = torch.topk(lp, p.logprobs)
                out.top_logprobs = list(zip(idx.tolist(), vals.tolist()))
        return out


def score_tokens(logits: torch.Tensor, token_ids: list[int], top: int) -> list[SampledToken]:
    """logits [T, V] (row j predicts token_ids[j]) -> each token's logprob and the `top` most likely
    alternatives, of the raw distribution (as OpenAI's echo reports prompt tokens)."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
    chosen = lp.gather(1, torch.tensor(token_ids, dtype=torch.long)[:, None])[:, 0].tolist()  # [T]
    alternatives = [None] * len(token_ids)
    if top > 0:
        vals, idx = torch.topk(lp, top, dim=-1)  # [T, top]
        alternatives = [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
    return [SampledToken(t, c, a) for t, c, a in zip(token_ids, chosen, alternatives)]
