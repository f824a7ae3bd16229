"""Per-token cost of grammar-constrained sampling in the CVM (talaria_proxy/grammar.py).

    python -m benchmarks.grammar_mask [--out results/grammar] [--tokens 256]

For the tiny model's tokenizer (V = 1024) and a synthetic 151,936-token vocabulary (Qwen2's size:
the 256 byte tokens plus generated words), it times `Sampler.sample` per generated token without a
grammar (the ordinary path), with `json_object` and with a nested schema, and splits the grammar
path into the mask computation (llguidance) and the bit unpacking + masking of the logits.
Random logits stand in for the model: the sampler's cost does not depend on where they come from.
Writes mask_cost.md and mask_cost.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

NESTED = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string"}}, "kind": {"enum": ["a", "bb"]}},
    "required": ["name", "age", "tags", "kind"], "additionalProperties": False,
}
QWEN_VOCAB = 151936


class SyntheticTokenizer:
    """What llguidance.TokenizerWrapper reads: token byte strings, EOS, and an encoder."""

    def __init__(self, size: int, seed: int = 0):
        rng = random.Random(seed)
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
        tokens = [bytes([b]) for b in range(256)]
        seen = set(tokens)
        while len(tokens) < size - 1:
            word = "".join(rng.choices(letters, weights, k=rng.randint(2, 9)))
            word = rng.choice(["", " ", " ", "_", "."]) + (word.capitalize() if rng.random() < 0.2 else word)
            if rng.random() < 0.05:
                word += rng.choice(['",', '":', "()", "\n", "}"])
            b = word.encode()
            if b not in seen:
                seen.add(b)
                tokens.append(b)
        tokens.append(b"<|endoftext|>")
        self.tokens = tokens
        self.eos_token_id = size - 1
        self.bos_token_id = None
        self.special_token_ids = [size - 1]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)  # byte tokens: a valid (not the shortest) encoding


def _tokenizers():
    import llguidance
    from transformers import AutoTokenizer

    from talaria_cli.tiny_model import ensure_tiny_model, tiny_model_dir

    tiny = AutoTokenizer.from_pretrained(ensure_tiny_model(tiny_model_dir("qwen2")))
    t0 = time.perf_counter()
    synthetic = llguidance.LLTokenizer(llguidance.TokenizerWrapper(SyntheticTokenizer(QWEN_VOCAB)))
    build_s = time.perf_counter() - t0
    return [("tiny (V=1024)", tiny, 1024, [tiny.eos_token_id]),
            (f"synthetic (V={QWEN_VOCAB})", synthetic, QWEN_VOCAB, [QWEN_VOCAB - 1])], build_s


def _per_token(params, vocab: int, eos: list[int], tokens: int, rounds: int = 3) -> tuple[float, int]:
    import torch

    from talaria_proxy.sampling import Sampler

    best, count = float("inf"), 0
    for r in range(rounds):
        gen = torch.Generator().manual_seed(r)
        rows = [torch.randn(vocab, generator=gen) * 3 for _ in range(tokens)]
        sampler = Sampler(params(), vocab)
        t0 = time.perf_counter()
        n = 0
        for row in rows:
            n += 1
            if sampler.sample(row).token_id in eos:
                break
        best, count = min(best, (time.perf_counter() - t0) / n), n
    return best, count


def _mask_split(grammar, vocab: int, reps: int = 200) -> tuple[float, float]:
    """Seconds per step: llguidance's mask computation; unpacking the bits and masking the logits."""
    import torch

    constraint = grammar.constraint(10_000)
    for token in constraint.grammar.template.compute_ff_tokens()[:3]:
        constraint.accept(token)  # inside the object: the mask is not trivial
    t0 = time.perf_counter()
    for _ in range(reps):
        constraint._fill(constraint.matcher)
    compute = (time.perf_counter() - t0) / reps
    logits = torch.randn(vocab)
    t0 = time.perf_counter()
    for _ in range(reps):
        logits.clone().masked_fill_(torch.from_numpy(constraint._bits() == 0), float("-inf"))
    return compute, (time.perf_counter() - t0) / reps


def run(out: Path, tokens: int) -> dict:
    import torch

    from talaria_proxy.grammar import GrammarCompiler
    from talaria_proxy.sampling import SamplingParams

    torch.set_num_threads(1)
    rows, (tokenizers, build_s) = [], _tokenizers()
    for label, tok, vocab, eos in tokenizers:
        compiler = GrammarCompiler(tok, vocab, eos)
        t0 = time.perf_counter()
        compiler.tokenizer()
        grammars = {"none": None, "json_object": compiler.json_schema({"type": "object"}, False),
                    "nested schema": compiler.json_schema(NESTED, True)}
        setup_s = time.perf_counter() - t0
        for name, grammar in grammars.items():
            for temperature in (0.0, 1.0):
                def params(g=grammar, t=temperature):
                    return SamplingParams(max_tokens=tokens, temperature=t, seed=1, grammar=g)

                per, n = _per_token(params, vocab, eos, tokens)
                row = {"vocab": label, "grammar": name, "temperature": temperature, "us_per_token": per * 1e6,
                       "tokens": n}
                if grammar is not None:
                    compute, apply = _mask_split(grammar, vocab)
                    row |= {"mask_compute_us": compute * 1e6, "mask_apply_us": apply * 1e6}
                rows.append(row)
        rows.append({"vocab": label, "grammar": "(compile setup)", "setup_s": setup_s})
    result = {"tokens": tokens, "synthetic_tokenizer_build_s": build_s, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "mask_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| vocabulary | grammar | temperature | µs / token | tokens | mask compute µs | unpack+mask µs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "us_per_token" in r:
            lines.append(f"| {r['vocab']} | {r['grammar']} | {r['temperature']:g} | {r['us_per_token']:.0f} | "
                         f"{r['tokens']} | {r.get('mask_compute_us', 0):.0f} | {r.get('mask_apply_us', 0):.0f} |")
    setups = ", ".join(f"{r['vocab']}: {r['setup_s']:.2f} s" for r in rows if "setup_s" in r)
    lines.append(f"\nTokenizer trie + two grammars: {setups}; the synthetic trie itself: {build_s:.2f} s. "
                 f"One thread, budget {tokens} tokens (the closing window included); `tokens`: how many the "
                 "answer took (json_object closes at once: `{}` then EOS).")
    (out / "mask_cost.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/grammar"))
    ap.add_argument("--tokens", type=int, default=256)
    args = ap.parse_args()
    run(args.out, args.tokens)
    print((args.out / "mask_cost.md").read_text())


if __name__ == "__main__":
    main()
