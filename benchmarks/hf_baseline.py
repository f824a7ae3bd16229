"""The baseline: plain HF transformers `generate` on the same checkpoint, in this process.

Greedy, float32, EOS ignored (eos_token_id=None, min_new_tokens=N) so every run yields exactly N
tokens per sequence. One sample of a (threads, batch) point times generate(max_new_tokens=1) for
the time to first token and generate(max_new_tokens=N) for the rest; the benchmark interleaves
samples with Talaria's so both see the same machine load.
"""

from __future__ import annotations

import time


class HFBaseline:
    def __init__(self, model_path, prompts: list[list[int]], new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.prompts = prompts
        self.new_tokens = new_tokens
        self.tokens_prompt0: list[int] | None = None

    def _generate(self, ids, n: int):
        torch = self.torch
        with torch.inference_mode():
            return self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, eos_token_id=None, pad_token_id=0)

    def sample(self, threads: int, batch: int) -> tuple[float, float]:
        """(seconds for 1 new token, seconds for N new tokens) of one batch, with `threads` torch threads."""
        torch = self.torch
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ids = torch.tensor(self.prompts[:batch])  # [B, P], equal lengths: no padding
            t0 = time.perf_counter()
            self._generate(ids, 1)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = self._generate(ids, self.new_tokens)
            total = time.perf_counter() - t0
        finally:
            torch.set_num_threads(before)
        if out.shape[1] != ids.shape[1] + self.new_tokens:
            raise RuntimeError(f"HF generated {out.shape[1] - ids.shape[1]} tokens, not {self.new_tokens}")
        if self.tokens_prompt0 is None:
            self.tokens_prompt0 = out[0, ids.shape[1]:].tolist()
        return first, total

    def warm_up(self, threads=(1, 2), batches=(1, 8)) -> None:
        n, self.new_tokens = self.new_tokens, 2
        try:
            for t in threads:
                for b in batches:
                    self.sample(t, b)
        finally:
            self.new_tokens = n
            self.tokens_prompt0 = None

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()


def best_point(points: dict, batch: int) -> dict:
    """The better thread setting for `batch`: lowest ms/token (batch 1) or highest tokens/s."""
    cands = [p for p in points.values() if p["batch"] == batch]
    if not cands:
        raise ValueError(f"no HF point with batch {batch}")
    if batch == 1:
        return min(cands, key=lambda p: p["ms_per_token"])
    return max(cands, key=lambda p: p["tokens_per_s"])
