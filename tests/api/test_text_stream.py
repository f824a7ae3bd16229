"""Unit tests of talaria_proxy.api.text_stream: incremental detokenization with the tiny byte-level
BPE tokenizer (multi-byte characters split across tokens) and stop-string hold-back."""

from __future__ import annotations

import pytest

from talaria_proxy.api.text_stream import IncrementalDetokenizer, StopStringMatcher, TextStream

MULTIBYTE = "Grüße aus Zürich: 日本語のテキスト, emoji 🙂🚀 and ASCII."


def _prompt(tokenizer) -> list[int]:
    """The tail of a chat prompt, which the detokenizer uses as context."""
    return tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)


def test_multibyte_characters_are_never_split(tokenizer):
    ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the test needs characters split across tokens"
    detok = IncrementalDetokenizer(tokenizer, _prompt(tokenizer))
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == MULTIBYTE == tokenizer.decode(ids)


def test_special_tokens_are_skipped_and_invalid_bytes_match_a_full_decode(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    lone = tokenizer.encode("é", add_special_tokens=False)  # 'é' is 2 bytes; keep only a piece if split
    ids = tokenizer.encode("ok ", add_special_tokens=False) + lone + [eos]
    stream = TextStream(tokenizer, [], _prompt(tokenizer))
    text = "".join(stream.push(i) for i in ids) + stream.finish()
    assert text == tokenizer.decode(ids, skip_special_tokens=True)
    # A dangling lead byte (the model may emit one) is flushed as U+FFFD, like a full decode.
    first_byte_tokens = [i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]) == "\ufffd"][:1]
    stream = TextStream(tokenizer, [], None)
    tail = "".join(stream.push(i) for i in first_byte_tokens)
    assert tail == ""
    assert stream.finish() == tokenizer.decode(first_byte_tokens)


@pytest.mark.parametrize("chunks, stops, expected", [
    (["Hello wor", "ld, END", " tail"], ["END"], ["Hello wor", "ld, ", None]),
    (["ab", "c", "d"], ["abcd"], ["", "", ""]),  # every prefix held, then cut at 0
    (["xa", "ab", "q"], ["aab"], ["x", "", None]),  # overlapping candidate prefixes
    (["no stop ", "here"], ["zz"], ["no stop ", "here"]),
    (["a<", "|e", "nd|>b"], ["<|end|>", "<x"], ["a", "", ""]),
])
def test_stop_string_hold_back(chunks, stops, expected):
    m = StopStringMatcher(stops)
    released = []
    for chunk in chunks:
        released.append(m.push(chunk) if not m.stopped else None)
    assert released == expected


def test_held_text_is_released_when_generation_ends_without_a_stop():
    m = StopStringMatcher(["STOP"])
    assert m.push("almost ST") == "almost "
    assert m.flush() == "ST"
    assert not m.stopped


def test_stop_string_across_tokens_never_leaks(tokenizer):
    text = "The morning train left the station a few minutes late."
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    # A stop string made of the end of one token and the start of the next.
    k = next(k for k in range(3, len(ids) - 1) if len(pieces[k]) >= 2 and len(pieces[k + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    expected = text[:text.index(stop)]
    stream = TextStream(tokenizer, [stop], _prompt(tokenizer))
    released = ""
    for i in ids:
        released += stream.push(i)
        assert expected.startswith(released), "text past the stop string's start was released"
        if stream.stopped:
            break
    assert stream.stopped
    assert released == stream.text == expected


def test_concatenated_deltas_equal_decode_for_random_ids(tokenizer):
    import random

    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(3, tokenizer.vocab_size) for _ in range(rng.randrange(1, 40))]
        stream = TextStream(tokenizer, [], _prompt(tokenizer))
        text = "".join(stream.push(i) for i in ids) + stream.finish()
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
