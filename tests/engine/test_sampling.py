"""Sampling in the CVM."""

from __future__ import annotations

import pytest
import torch

from talaria_proxy.sampling import Sampler, SamplingParams


def logits():
    return torch.tensor([1.0, 3.0, 2.5, -1.0, 0.0])


def draw(params, n=200):
    s = Sampler(params, 5)
    return [s.sample(logits()).token_id for _ in range(n)]


def test_greedy_and_equivalent_limits_pick_the_argmax():
    assert set(draw(SamplingParams(temperature=0), 5)) == {1}
    assert set(draw(SamplingParams(top_k=1))) == {1}
    assert set(draw(SamplingParams(top_p=0.01))) == {1}


def test_top_k_and_top_p_restrict_the_support():
    assert set(draw(SamplingParams(top_k=2, temperature=1.0))) == {1, 2}
    # probabilities ~ [.08, .53, .32, .01, .03]: top_p .8 keeps tokens 1 and 2
    assert set(draw(SamplingParams(top_p=0.8))) == {1, 2}


def test_seed_reproduces_and_differs():
    a = draw(SamplingParams(seed=5, temperature=1.0), 50)
    assert a == draw(SamplingParams(seed=5, temperature=1.0), 50)
    assert a != draw(SamplingParams(seed=6, temperature=1.0), 50)


def test_logit_bias_and_penalties():
    assert set(draw(SamplingParams(temperature=0, logit_bias={3: 100.0}), 3)) == {3}
    # a frequency penalty larger than the logit gaps makes greedy decoding rotate through tokens
    out = draw(SamplingParams(temperature=0, frequency_penalty=5.0), 3)
    assert out[:2] == [1, 2] and len(set(out)) == 3
    assert draw(SamplingParams(temperature=0, presence_penalty=0.6), 2) == [1, 2]
    assert draw(SamplingParams(temperature=0, presence_penalty=0.4), 2) == [1, 1]


def test_logprobs_are_of_the_raw_distribution():
    s = Sampler(SamplingParams(temperature=0, logprobs=2), 5)
    tok = s.sample(logits())
    lp = torch.log_softmax(logits(), -1)
    assert tok.logprob == pytest.approx(float(lp[1]))
    assert [t for t, _ in tok.top_logprobs] == [1, 2]


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-1),
                                 dict(logprobs=21)])
def test_invalid_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_logit_bias_outside_vocab_is_refused():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Sampler(SamplingParams(logit_bias={9: 1.0}), 5)
