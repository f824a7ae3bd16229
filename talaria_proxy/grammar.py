"""Grammar-constrained decoding in the CVM's sampler, through llguidance.

    compiler = GrammarCompiler(tokenizer, vocab_size, eos_ids)     # one per served model
    grammar = compiler.json_schema(schema, strict=True)            # or .lark(text); GrammarError -> 400
    constraint = grammar.constraint(max_tokens)                    # one per sequence, used by its Sampler
    forced = constraint.restrict(logits)                           # logits[t] = -inf where t is not allowed
    constraint.accept(token)

Why llguidance (1.9.1) and not xgrammar (0.2.9): llguidance is one abi3 wheel without any Python
dependency, so it installs next to the CPU torch pin unchanged; xgrammar pulls in triton and
apache-tvm-ffi (GPU tooling the CVM has no use for). llguidance computes each mask on the CPU in
Rust from a token trie (tens of microseconds for JSON), compiles JSON Schema and Lark grammars
with JSON Schema embedded (`%json {...}`), which is how tool-call formats are written here, and is
maintained by the guidance team and used by vLLM, SGLang and llama.cpp.

Masks: a bitmask of ceil(V/32) int32 words per step, unpacked to a bool [V] row; EOS is allowed
only where the grammar accepts, so an answer never ends inside the JSON.

The budget: a random-weight model under a grammar rarely closes its JSON on its own (strings and
arrays can grow forever). Once the tokens left are few, every step simulates the closing on a copy
of the matcher: the shortest-looking way out (EOS, then `}` `]` `,` `0` `"` `{` `[`, then the
grammar's forced tokens, then the lowest allowed id). When that closing needs all but
CLOSE_MARGIN of the tokens left, the sequence switches to it and follows it token by token, so
the answer ends with EOS as complete, valid JSON (finish_reason "stop"). If even the closing does
not fit (a schema that forces long text), the answer is cut at the cap (finish_reason "length").

Shape legend: V vocab (the model's rows of logits), W = ceil(V/32) mask words.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

import llguidance
import numpy
import torch

log = logging.getLogger(__name__)

# JSON as json.dumps writes it: fixed separators and no free whitespace (a model allowed free
# whitespace can emit newlines forever).
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CLOSE_WINDOW = 64  # the closing is simulated only when at most this many tokens are left
CLOSE_MARGIN = 8  # one token can open several structures (`[{"`): switch with this much to spare
CLOSERS = ("}", "]", ",", "0", '"', "{", "[")  # preference order of the closing outside strings
STRING_PROBE = "a"  # allowed inside a string, never at a key or value position


class GrammarError(ValueError):
    """A schema or grammar that cannot be compiled (the client's mistake: a 400)."""


def json_schema_options(strict: bool) -> dict[str, Any]:
    """Compile options for a JSON schema, as llguidance reads them from `x-guidance`. Not strict:
    keywords the engine does not implement are ignored (the schema is a hint); strict: a 400."""
    return {**JSON_LAYOUT, "lenient": not strict}


def with_options(schema: dict, strict: bool) -> dict:
    if not isinstance(schema, dict):
        raise GrammarError("a JSON schema must be an object")
    return {**schema, "x-guidance": json_schema_options(strict)}


class GrammarCompiler:
    """Compiles grammars against the model's tokenizer (built once, in the background)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: list[int]):
        self.hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._lock = threading.Lock()
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._error: str | None = None
        self._closers: tuple[tuple[int, ...], int | None, int | None] = ((), None, None)

    def warm(self) -> None:
        """Build the token trie in a background thread (~1 s for a 152k vocabulary)."""
        threading.Thread(target=self.tokenizer, name="talaria-grammar-warmup", daemon=True).start()

    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None and self._error is None:
                self._build()
            if self._tokenizer is None:
                raise GrammarError(self._error)
            return self._tokenizer

    def _build(self) -> None:
        if isinstance(self.hf_tokenizer, llguidance.LLTokenizer):  # prebuilt (benchmarks, tests)
            self._finish_build(self.hf_tokenizer)
            return
        backend = getattr(self.hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            self._error = "structured outputs need a fast (tokenizers) tokenizer, which this model does not have"
            return
        backend = copy.copy(backend)  # the copy's padding and truncation settings are ours to drop
        backend.no_padding()
        backend.no_truncation()
        self._finish_build(llguidance.LLTokenizer(backend.to_str(), n_vocab=self.vocab_size, eos_token=self.eos_ids))

    def _finish_build(self, tok: llguidance.LLTokenizer) -> None:
        single = {}
        for text in (*CLOSERS, STRING_PROBE):
            ids = tok.tokenize_str(text)
            if len(ids) == 1:
                single[text] = ids[0]
        self._closers = (tuple(single[c] for c in CLOSERS if c in single), single.get('"'), single.get(STRING_PROBE))
        self._tokenizer = tok

    def json_schema(self, schema: dict, strict: bool) -> CompiledGrammar:
        return self._compile(llguidance.LLMatcher.grammar_from_json_schema(with_options(schema, strict)))

    def lark(self, text: str) -> CompiledGrammar:
        return self._compile(llguidance.LLMatcher.grammar_from_lark(text))

    def special_token_id(self, text: str) -> int | None:
        """The id of `text` if the tokenizer has it as one special token (e.g. `[TOOL_CALLS]`)."""
        ids = self.hf_tokenizer.convert_tokens_to_ids([text])
        unk = getattr(self.hf_tokenizer, "unk_token_id", None)
        if ids and ids[0] is not None and ids[0] != unk and text in getattr(self.hf_tokenizer, "all_special_tokens", []):
            return int(ids[0])
        return None

    def _compile(self, grammar: str) -> CompiledGrammar:
        tok = self.tokenizer()
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tok)
        if is_error:
            raise GrammarError(messages[0] if messages else "invalid grammar")
        template = llguidance.LLMatcher(tok, grammar, log_level=0)
        if template.is_error():
            raise GrammarError(template.get_error())
        closers, quote, probe = self._closers
        return CompiledGrammar(template, self.vocab_size, self.eos_ids, closers, quote, probe)


class CompiledGrammar:
    """An immutable compiled grammar; each sequence gets its own matcher (a copy of the template)."""

    def __init__(self, template, vocab_size: int, eos_ids: list[int], closers: tuple[int, ...],
                 quote: int | None, probe: int | None):
        self.template = template
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.closers = closers
        self.quote = quote
        self.probe = probe

    def constraint(self, max_tokens: int) -> GrammarConstraint:
        return GrammarConstraint(self, self.template.deep_copy(), max_tokens)


class GrammarConstraint:
    """The grammar state of one sequence; lives on the engine thread with its Sampler."""

    def __init__(self, grammar: CompiledGrammar, matcher, max_tokens: int):
        self.grammar = grammar
        self.matcher = matcher
        self.remaining = max_tokens  # tokens this sequence may still generate
        self.closing = False
        self.words = numpy.zeros((grammar.vocab_size + 31) // 32, dtype=numpy.uint32)  # [W]

    def _fill(self, matcher) -> bool:
        """The next mask into `words`; False when nothing is allowed."""
        matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        return bool(self.words.any())

    def _has(self, token: int) -> bool:
        return token < self.grammar.vocab_size and bool((self.words[token >> 5] >> (token & 31)) & 1)

    def allowed(self) -> torch.Tensor:
        """bool [V]: the tokens the grammar accepts next (bit j of word w is token 32w + j)."""
        self._fill(self.matcher)
        return torch.from_numpy(self._bits()).bool()

    def _bits(self) -> numpy.ndarray:
        return numpy.unpackbits(self.words.view(numpy.uint8), bitorder="little", count=self.grammar.vocab_size)

    def restrict(self, logits: torch.Tensor) -> int | None:
        """Mask logits [V] in place; return a token to take instead of sampling (the closing)."""
        if not self._fill(self.matcher):  # only after an internal error: end the answer, not the batch
            # The matcher's error text may quote generated bytes: it never reaches the log.
            log.warning("grammar matcher has no allowed token (error: %s); ending the sequence",
                        self.matcher.is_error())
            return self.grammar.eos_ids[0] if self.grammar.eos_ids else int(torch.argmax(logits))
        if not self.closing and self.remaining <= CLOSE_WINDOW:
            needed = self._closing_length(self.remaining)  # overwrites `words`: fill again below
            self.closing = needed is None or needed + CLOSE_MARGIN >= self.remaining
            self._fill(self.matcher)
        if self.closing:
            return self._closing_token(self.matcher)
        logits.masked_fill_(torch.from_numpy(self._bits() == 0), float("-inf"))
        return None

    def accept(self, token: int) -> None:
        self.remaining -= 1
        if not self.matcher.consume_token(token):
            log.warning("grammar matcher refused a sampled token")

    def _closing_token(self, matcher) -> int:
        """The next token of the closing, from the mask in `words` (bit tests, no unpacking)."""
        g = self.grammar
        for eos in g.eos_ids:
            if self._has(eos):
                return eos
        if g.probe is not None and self._has(g.probe):  # inside a string: end it
            if g.quote is not None and self._has(g.quote):
                return g.quote
        else:
            for token in g.closers:
                if self._has(token):
                    return token
        forced = matcher.compute_ff_tokens()
        if forced:
            return forced[0]
        word = int(numpy.flatnonzero(self.words)[0])
        return 32 * word + (int(self.words[word]) & -int(self.words[word])).bit_length() - 1  # lowest set bit

    def _closing_length(self, limit: int) -> int | None:
        """Tokens the closing takes from here (EOS included), or None if more than `limit`."""
        sim = self.matcher.deep_copy()
        for steps in range(1, limit + 1):
            if not self._fill(sim):
                return None
            token = self._closing_token(sim)
            if token in self.grammar.eos_ids:
                return steps
            if not sim.consume_token(token):
                return None
        return None
