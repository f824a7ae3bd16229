"""The baseline: plain HF transformers `generate` on the same checkpoint, in this process.

Greedy, float32, EOS ignored so every run yields exactly `new_tokens` tokens per sequence. Each
(threads, batch) point times generate(max_new_tokens=1) for the time to first token and
generate(max_new_tokens=N) for the rest; one warm-up, then the median of `repeats`.
"""

from __future__ import annotations

import gc
import time

from benchmarks.common import hf_metrics, load_average, median


def _generate(model, input_ids, new_tokens: int):
    import torch

    with torch.inference_mode():
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)


def run_hf(model_path, prompts: list[list[int]], new_tokens: int, batches=(1, 8), threads=(1, 2),
           repeats: int = 3, say=print) -> dict:
    """{'threads=T,batch=B': metrics} plus the greedy tokens of prompt 0 (for a sanity check)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    results: dict = {"points": {}, "tokens_prompt0": None}
    before = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            for b in batches:
                ids = torch.tensor(prompts[:b])  # [B, P], equal lengths: no padding
                _generate(model, ids, 2)  # warm-up
                firsts, totals = [], []
                load = load_average()
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    _generate(model, ids, 1)
                    firsts.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    out = _generate(model, ids, new_tokens)
                    totals.append(time.perf_counter() - t0)
                    if out.shape[1] != ids.shape[1] + new_tokens:
                        raise RuntimeError(f"HF generated {out.shape[1] - ids.shape[1]} tokens, not {new_tokens}")
                if b == 1 and results["tokens_prompt0"] is None:
                    results["tokens_prompt0"] = out[0, ids.shape[1]:].tolist()
                m = hf_metrics(median(firsts), median(totals), b, new_tokens)
                m.update(threads=t, batch=b, load_avg=load, repeats=repeats)
                results["points"][f"threads={t},batch={b}"] = m
                say(f"  HF threads={t} batch={b}: {m['ms_per_token']:.1f} ms/token, "
                    f"{m['tokens_per_s']:.1f} tok/s, TTFT {m['ttft_ms']:.1f} ms (load {load:.1f})")
    finally:
        torch.set_num_threads(before)
        del model
        gc.collect()
    return results


def best_point(points: dict, batch: int) -> dict:
    """The better thread setting for `batch`: lowest ms/token (batch 1) or highest tokens/s."""
    cands = [p for p in points.values() if p["batch"] == batch]
    if not cands:
        raise ValueError(f"no HF point with batch {batch}")
    if batch == 1:
        return min(cands, key=lambda p: p["ms_per_token"])
    return max(cands, key=lambda p: p["tokens_per_s"])
