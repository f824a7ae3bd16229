"""Token ids -> text deltas for one choice: incremental detokenization plus stop strings.

    stream = TextStream(tokenizer, stop=["\\n\\n"], prompt_ids=prompt)
    for token_id in generated:
        delta = stream.push(token_id)     # text safe to send now (may be "")
        if stream.stopped: break          # a stop string appeared: abort the sequence
    tail = stream.finish()                # the rest, once generation has ended

Invariant the API relies on: the concatenation of every `push` and the final `finish` is exactly
the choice's text, so streamed and non-streamed answers agree by construction.

Detokenization (the prefix/read-offset scheme of TGI and vLLM): decode a short window of tokens
and emit only what the newest tokens added. A byte-level BPE token may end inside a multi-byte
UTF-8 character; its decode then ends in U+FFFD, and we wait for the next token instead of
sending half a character. The window starts in the prompt so that tokenizers which drop a
leading space at the start of a decode (SentencePiece) render the first token as in context.

Stop strings: text that could still grow into a stop string is held back, so a client never sees
a partial stop string that later turns out to be cut.
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"
PROMPT_CONTEXT_TOKENS = 4  # prompt tokens decoded as context for the first output token


class IncrementalDetokenizer:
    """Decodes output tokens one at a time, never splitting a UTF-8 character."""

    def __init__(self, tokenizer, prompt_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        context = list(prompt_ids or [])[-PROMPT_CONTEXT_TOKENS:]
        self.ids: list[int] = context
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = len(context)  # tokens before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return new_text[len(prefix_text):]
        return ""  # nothing new, or the tail is an incomplete character

    def flush(self) -> str:
        """Everything not yet emitted (undecodable bytes become U+FFFD, as in a full decode)."""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text):]


class StopStringMatcher:
    """Cuts text at the first stop string; holds back a tail that may start one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Feed new text; return the part that can be sent now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.held += text
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.held = self.held[:cut], ""
            return out
        keep = self._longest_stop_prefix_suffix()
        out = self.held[:len(self.held) - keep]
        self.held = self.held[len(self.held) - keep:]
        return out

    def flush(self) -> str:
        """Generation ended without a stop string: the held tail is plain text after all."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        # Length of the longest suffix of `held` that is a proper prefix of some stop string.
        # Any later match must start inside that suffix: earlier starts were ruled out when
        # their text was released.
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.held)), best, -1):
                if self.held.endswith(stop[:k]):
                    best = k
                    break
        return best


class TextStream:
    """One choice's text as it is generated: detokenizer then stop-string matcher."""

    def __init__(self, tokenizer, stop: list[str] | None = None, prompt_ids: list[int] | None = None):
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.matcher = StopStringMatcher(stop or [])
        self.text = ""  # everything released so far

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    def push(self, token_id: int) -> str:
        out = self.matcher.push(self.detok.push(token_id))
        self.text += out
        return out

    def finish(self) -> str:
        """Call once when generation ended (not needed after a stop string)."""
        if self.stopped:
            return ""
        out = self.matcher.push(self.detok.flush())
        out += self.matcher.flush()
        self.text += out
        return out
