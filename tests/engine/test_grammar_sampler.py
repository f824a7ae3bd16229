"""The grammar-constrained sampler (talaria_proxy/grammar.py through sampling.Sampler) on random
logits and the tiny tokenizer: every answer is valid JSON for its schema, whatever the budget it
can close within; EOS is allowed only where the grammar accepts; the ordinary path has no mask."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from talaria_proxy.grammar import CLOSE_WINDOW, GrammarCompiler, GrammarError
from talaria_proxy.sampling import Sampler, SamplingParams

NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["a", "bb"]},
        "sub": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"],
                "additionalProperties": False},
    },
    "required": ["name", "age", "tags", "kind", "sub"],
    "additionalProperties": False,
}
MIN_NESTED_TOKENS = 60  # the shortest valid NESTED answer is ~45 tokens of the tiny tokenizer


@pytest.fixture(scope="module")
def setup(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("qwen2"))
    vocab = 1024
    return tokenizer, GrammarCompiler(tokenizer, vocab, [tokenizer.eos_token_id]), vocab


def generate(sampler: Sampler, vocab: int, eos: int, max_tokens: int, seed: int, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max_tokens):
        token = sampler.sample(torch.randn(vocab, generator=gen) * scale).token_id
        out.append(token)
        if token == eos:
            break
    return out


@pytest.mark.parametrize("schema", [{"type": "object"}, NESTED], ids=["any-object", "nested"])
@pytest.mark.parametrize("max_tokens", [MIN_NESTED_TOKENS, 100, 300])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_answers_are_valid_json(setup, schema, max_tokens, temperature):
    tokenizer, compiler, vocab = setup
    grammar = compiler.json_schema(schema, strict=True)
    for seed in range(3):
        sampler = Sampler(SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                                         grammar=grammar), vocab)
        ids = generate(sampler, vocab, tokenizer.eos_token_id, max_tokens, seed)
        assert ids[-1] == tokenizer.eos_token_id and len(ids) <= max_tokens  # closed in time
        jsonschema.validate(json.loads(tokenizer.decode(ids, skip_special_tokens=True)), schema)


def test_eos_only_where_the_grammar_accepts(setup):
    tokenizer, compiler, vocab = setup
    grammar = compiler.json_schema(NESTED, strict=True)
    constraint = grammar.constraint(10_000)  # far from the budget: no closing, only the mask
    gen = torch.Generator().manual_seed(0)
    eos = tokenizer.eos_token_id
    for _ in range(400):
        allowed = constraint.allowed()
        assert bool(allowed[eos]) == constraint.matcher.is_accepting()
        logits = torch.randn(vocab, generator=gen)
        assert constraint.restrict(logits) is None
        assert torch.isinf(logits[~allowed]).all() and torch.isfinite(logits[allowed]).all()
        token = int(torch.argmax(logits))
        constraint.accept(token)
        if token == eos:
            break


def test_closing_starts_only_near_the_budget(setup):
    _, compiler, vocab = setup
    grammar = compiler.json_schema({"type": "object"}, strict=True)
    constraint = grammar.constraint(CLOSE_WINDOW + 50)
    open_brace = compiler.tokenizer().tokenize_str('{"')
    for token in open_brace:
        assert constraint.restrict(torch.zeros(vocab)) is None  # plenty left: sampling stays free
        constraint.accept(token)
    assert not constraint.closing


def test_too_small_a_budget_ends_with_length(setup):
    tokenizer, compiler, vocab = setup
    grammar = compiler.json_schema(NESTED, strict=True)
    sampler = Sampler(SamplingParams(max_tokens=10, temperature=1.0, seed=1, grammar=grammar), vocab)
    ids = generate(sampler, vocab, tokenizer.eos_token_id, 10, 1)
    assert len(ids) == 10 and tokenizer.eos_token_id not in ids  # cut at the cap: the caller says "length"
    assert tokenizer.decode(ids).startswith('{"name": "')


def test_n_sequences_have_their_own_state(setup):
    tokenizer, compiler, vocab = setup
    grammar = compiler.json_schema(NESTED, strict=True)
    samplers = [Sampler(SamplingParams(max_tokens=120, temperature=1.0, seed=s, grammar=grammar), vocab)
                for s in range(3)]
    gen = torch.Generator().manual_seed(9)
    outs = [[] for _ in samplers]
    for _ in range(120):  # interleaved, as the engine samples a batch
        for out, sampler in zip(outs, samplers):
            if not out or out[-1] != tokenizer.eos_token_id:
                out.append(sampler.sample(torch.randn(vocab, generator=gen) * 3).token_id)
    for out in outs:
        jsonschema.validate(json.loads(tokenizer.decode(out, skip_special_tokens=True)), NESTED)


def test_plain_requests_have_no_constraint():
    assert Sampler(SamplingParams(max_tokens=5), 16).constraint is None


@pytest.mark.parametrize("schema", [{"type": "frobnicate"}, {"type": "string", "format": "no-such-format"}])
def test_bad_schemas_raise(setup, schema):
    _, compiler, _ = setup
    with pytest.raises(GrammarError):
        compiler.json_schema(schema, strict=True)


def test_lenient_schema_ignores_unknown_keywords(setup):
    _, compiler, _ = setup
    compiler.json_schema({"type": "string", "format": "no-such-format"}, strict=False)
