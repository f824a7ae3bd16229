"""min_p and repetition_penalty as vLLM applies them, and no sampling field silently ignored.

The reference below is vLLM's formula written out plainly (its `apply_penalties` and min-p
processor): the repetition penalty divides positive and multiplies negative logits of every
token seen in the prompt or the output, then frequency/presence penalties act on the output's
counts, then temperature, then tokens with probability below min_p * max probability are dropped.
"""

from __future__ import annotations

import pytest
import torch

from api_helpers import MODEL, user
from talaria_proxy.sampling import Sampler, SamplingParams

V = 48


def vllm_reference(logits, prompt, output, *, repetition=1.0, frequency=0.0, presence=0.0, temperature=1.0,
                   min_p=0.0):
    counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=V).float()
    seen = torch.zeros(V, dtype=torch.bool)
    seen[prompt] = True
    seen |= counts > 0
    penalty = torch.where(seen, torch.tensor(repetition), torch.tensor(1.0))
    x = torch.where(logits > 0, logits / penalty, logits * penalty)
    x = x - frequency * counts - presence * (counts > 0).float()
    x = x / temperature
    probs = torch.softmax(x, -1)
    x = x.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return torch.softmax(x, -1)


def sampler_after(params: SamplingParams, prompt: list[int], output: list[int]) -> Sampler:
    """A sampler whose sequence has generated `output`, forced through its public sample()."""
    sampler = Sampler(params, V, prompt)
    for token in output:
        force = torch.full((V,), -1000.0)
        force[token] = 1000.0
        assert sampler.sample(force).token_id == token
    return sampler


CASES = [
    dict(repetition=1.3),
    dict(repetition=0.7),  # < 1 favours repeats
    dict(repetition=2.0, frequency=0.5, presence=0.3, temperature=0.8),
    dict(min_p=0.05),
    dict(min_p=0.2, temperature=1.7),
    dict(repetition=1.5, min_p=0.1, temperature=0.6),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_distribution_matches_vllms_formula(case):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(V, generator=gen) * 3  # positive and negative logits
    prompt = torch.randint(0, V, (12,), generator=gen).tolist()
    output = torch.randint(0, V, (6,), generator=gen).tolist()
    params = SamplingParams(temperature=case.get("temperature", 1.0), min_p=case.get("min_p", 0.0),
                            repetition_penalty=case.get("repetition", 1.0),
                            frequency_penalty=case.get("frequency", 0.0), presence_penalty=case.get("presence", 0.0))
    sampler = sampler_after(params, prompt, output)
    ours = sampler.probabilities(sampler.penalized(logits))
    expected = vllm_reference(logits, prompt, output, **case)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    # and the change is real: the plain distribution differs
    assert not torch.allclose(expected, torch.softmax(logits / params.temperature, -1), atol=1e-4)


def test_min_p_support_by_sampling():
    logits = torch.tensor([2.0, 1.9, 0.5, 0.0, -1.0, -3.0])
    probs = torch.softmax(logits, -1)
    kept = {i for i in range(6) if probs[i] >= 0.2 * probs.max()}
    sampler = Sampler(SamplingParams(min_p=0.2, seed=3), 6)
    drawn = {sampler.sample(logits).token_id for _ in range(400)}
    assert drawn == kept and len(kept) < 6


def test_repetition_penalty_changes_greedy_choice():
    logits = torch.tensor([3.0, 2.8, -0.5, -0.4])
    # token 0 is in the prompt: 3.0 / 1.2 = 2.5 < 2.8, so greedy moves to token 1
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=1.2), 4, [0]).sample(logits).token_id == 1
    assert Sampler(SamplingParams(temperature=0), 4, [0]).sample(logits).token_id == 0
    # negative logits are multiplied: -0.4 * 2 = -0.8 < -0.5 once token 3 was seen
    masked = logits.clone()
    masked[:2] = -10.0
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), 4, [3]).sample(masked).token_id == 2


@pytest.mark.parametrize("bad", [dict(min_p=1.5), dict(min_p=-0.1), dict(repetition_penalty=0.0)])
def test_invalid_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


# -- through the HTTP API ---------------------------------------------------------------------


def test_api_applies_repetition_penalty_and_min_p(client):
    """A huge repetition penalty forbids every prompt and output token again: no token repeats."""
    common = dict(model=MODEL, prompt="the cat the cat the cat", max_tokens=12, temperature=0)
    plain = client.completions.create(**common)
    penalized = client.completions.create(**common, extra_body={"repetition_penalty": 1e6, "ignore_eos": True})
    assert penalized.choices[0].text != plain.choices[0].text
    logprobs = client.completions.create(**common, logprobs=0, extra_body={"repetition_penalty": 1e6,
                                                                            "ignore_eos": True}).choices[0].logprobs
    assert len(set(logprobs.tokens)) == len(logprobs.tokens)
    # min_p = 1 keeps only the most likely token: sampling at any temperature is then greedy
    greedy = client.chat.completions.create(model=MODEL, messages=user("Hi"), max_tokens=8, temperature=0)
    for seed in (1, 2):
        hot = client.chat.completions.create(model=MODEL, messages=user("Hi"), max_tokens=8, temperature=1.5,
                                             seed=seed, extra_body={"min_p": 1.0})
        assert hot.choices[0].message.content == greedy.choices[0].message.content


@pytest.mark.parametrize("field,value", [("min_tokens", 3), ("use_beam_search", True), ("typical_p", 0.5),
                                         ("guided_regex", "a+"), ("include_stop_str_in_output", True)])
def test_unimplemented_sampling_fields_are_a_400_naming_them(client, field, value):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={field: value})
    assert err.value.body["param"] == field
    # the value that means what the server does anyway is accepted
    default = {"min_tokens": 0, "use_beam_search": False, "typical_p": 1.0, "guided_regex": None,
               "include_stop_str_in_output": False}[field]
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={field: default})


def test_stop_token_ids_end_generation(client, tokenizer):
    common = dict(model=MODEL, prompt="The morning train", max_tokens=8, temperature=0)
    free = client.completions.create(**common, logprobs=0, extra_body={"ignore_eos": True})
    tokens = free.choices[0].logprobs.tokens
    # the first generated token whose text maps back to exactly one id
    position, stop_id = next((i, ids[0]) for i, ids in
                             enumerate(tokenizer.encode(t, add_special_tokens=False) for t in tokens) if len(ids) == 1)
    stopped = client.completions.create(**common, extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens <= position + 1
