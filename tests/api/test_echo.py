"""Completions `echo` with `logprobs`: the prompt's log-probabilities equal Hugging Face's.

Real proxy and cloud processes (the session fixtures) against `AutoModelForCausalLM` on the same
tiny checkpoint in float32. Also the lm-eval-harness request shape (`echo: true, logprobs: 1,
max_tokens: 1`, prompt as token ids, read `token_logprobs[ctxlen:-1]`) and that only echo
requests make the engine run the LM head on every prompt row.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from api_helpers import MODEL

PROMPT = "The morning train left the station a few minutes late, and 12 people waited."
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logprobs(hf_model, ids: list[int]) -> torch.Tensor:
    """[T-1] log p(ids[t] | ids[:t]) for t >= 1, and the [T-1, V] log-distributions."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0].float()  # [T, V]
    lp = torch.log_softmax(logits[:-1], -1)
    return lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0], lp


def test_prompt_logprobs_equal_hf(client, tokenizer, hf_model):
    r = client.completions.create(model=MODEL, prompt=PROMPT, echo=True, logprobs=3, max_tokens=0)
    choice = r.choices[0]
    ids = tokenizer.encode(PROMPT)
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.tokens == [tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected, dist = hf_logprobs(hf_model, ids)
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:]), expected, atol=ATOL, rtol=0)
    for t, top in enumerate(lp.top_logprobs[1:]):
        vals, idx = torch.topk(dist[t], 3)
        want: dict[str, float] = {}
        for tid, v in zip(idx.tolist(), vals.tolist()):  # keyed by text: byte tokens may share one
            want.setdefault(tokenizer.decode([tid]), v)
        assert top == pytest.approx(want, abs=ATOL)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens) == PROMPT


def test_lm_eval_loglikelihood_request(client, tokenizer, hf_model):
    """lm-eval-harness local-completions: sum of token_logprobs[ctxlen:-1] is the continuation's."""
    context = tokenizer.encode("Please remember to water the plants,")
    continuation = tokenizer.encode(" feed the fish, and lock the back door.")
    prompt = context + continuation
    r = client.completions.create(model=MODEL, prompt=[prompt], echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(prompt) + 1  # the prompt, then the one generated token
    expected, dist = hf_logprobs(hf_model, prompt)
    ctxlen = len(context)
    ours = sum(lp.token_logprobs[ctxlen:-1])
    assert ours == pytest.approx(float(expected[ctxlen - 1:].sum()), abs=ATOL * len(continuation))
    # is_greedy as lm-eval computes it: the top-1 token at every continuation position
    greedy = all(max(top, key=top.get) == tok for tok, top in zip(lp.tokens[ctxlen:-1], lp.top_logprobs[ctxlen:-1]))
    assert greedy == bool((dist[ctxlen - 1:].argmax(-1) == torch.tensor(continuation)).all())


def test_echo_with_generation_and_stream(client, tokenizer):
    kwargs = dict(model=MODEL, prompt=PROMPT, echo=True, logprobs=2, max_tokens=6, temperature=0,
                  extra_body={"ignore_eos": True})
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0]
    full = client.completions.create(**kwargs).choices[0]
    assert full.text == PROMPT + plain.text
    prompt_len = len(tokenizer.encode(PROMPT))
    lp = full.logprobs
    assert len(lp.tokens) == prompt_len + 6
    assert lp.text_offset[prompt_len] == len(PROMPT)  # generated offsets continue after the echo
    assert all(v is not None for v in lp.token_logprobs[1:])
    chunks = list(client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.text
    assert chunks[0].choices[0].text.startswith(PROMPT)  # the echo arrives in the first chunk
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert streamed == lp.tokens and offsets == lp.text_offset


def test_echo_without_logprobs_and_several_prompts(client):
    prompts = ["Stars are easier to see", "The kettle whistled"]
    r = client.completions.create(model=MODEL, prompt=prompts, echo=True, max_tokens=3, n=2, temperature=0)
    assert len(r.choices) == 4
    for choice in r.choices:
        assert choice.text.startswith(prompts[choice.index // 2]) and choice.logprobs is None
    stream = client.completions.create(model=MODEL, prompt=prompts, echo=True, max_tokens=0, stream=True)
    texts = {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: prompts[0], 1: prompts[1]}


def test_only_echo_requests_pay_the_lm_head_on_every_row(prepared_model):
    """In-process engine: count the rows the LM head is called with."""
    from cloud_backend.service import MaskedLinearService
    from talaria_proxy.transports.in_process import InProcessCloud
    from talaria_proxy.runtime import build_runtime
    from talaria_proxy.sampling import SamplingParams

    class RowCounter(InProcessCloud):
        lm_rows: list[int] = []

        def linear(self, op, x):
            if op == "lm_head":
                self.lm_rows.append(x.shape[0])
            return super().linear(op, x)

    backend = RowCounter(MaskedLinearService(prepared_model, default_rank=16))
    engine = build_runtime(backend).engine
    prompt = list(range(5, 25))

    async def run(params):
        await engine.start()
        try:
            return [e async for e in engine.generate(prompt, params)]
        finally:
            await engine.stop(1.0)

    backend.lm_rows.clear()
    asyncio.run(run(SamplingParams(max_tokens=2, temperature=0)))
    assert backend.lm_rows == [1, 1]
    backend.lm_rows.clear()
    events = asyncio.run(run(SamplingParams(max_tokens=0, prompt_logprobs=0)))
    assert backend.lm_rows == [len(prompt)] and events[-1].token is None and events[-1].finish_reason == "length"


@pytest.fixture(scope="module")
def prepared_model(model_dir):
    from cloud_backend.checkpoint import load_prepared_model

    return load_prepared_model(str(model_dir))
