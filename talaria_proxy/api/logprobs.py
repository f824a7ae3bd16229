"""Sampled tokens -> OpenAI logprobs, in the chat layout and the legacy completions layout.

Token texts come from decoding the single token; `bytes` are exact for byte-level BPE
vocabularies (GPT-2 style), where one token may hold only part of a UTF-8 character and its text
then shows U+FFFD. JSON has no -inf, so impossible tokens are reported as -9999 (as OpenAI does).
"""

from __future__ import annotations

from functools import lru_cache

from talaria_proxy.api.protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob
from talaria_proxy.sampling import SampledToken

MIN_LOGPROB = -9999.0


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:  # control bytes and space map above U+00FF
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clamp_logprob(value: float | None) -> float:
    if value is None or value != value or value < MIN_LOGPROB:  # None, NaN, -inf
        return MIN_LOGPROB
    return float(value)


class LogprobFormatter:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_decoder = ({c: b for b, c in bytes_to_unicode().items()}
                             if type(decoder).__name__ == "ByteLevel" else None)
        self.token = lru_cache(maxsize=65536)(self._token)

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        """Token id -> (text, UTF-8 bytes)."""
        text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if self.byte_decoder is not None:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and piece and all(ch in self.byte_decoder for ch in piece):
                return text, [self.byte_decoder[ch] for ch in piece]
        return text, list(text.encode("utf-8"))

    def chat(self, tokens: list[SampledToken]) -> ChoiceLogprobs:
        content = []
        for tok in tokens:
            text, raw = self.token(tok.token_id)
            top = [TopLogprob(token=t, logprob=clamp_logprob(lp), bytes=b)
                   for (t, b), lp in ((self.token(tid), lp) for tid, lp in tok.top_logprobs or [])]
            content.append(TokenLogprob(token=text, logprob=clamp_logprob(tok.logprob), bytes=raw, top_logprobs=top))
        return ChoiceLogprobs(content=content)

    def completion(self, tokens: list[SampledToken], offset: int = 0) -> CompletionLogprobs:
        """Legacy layout; `offset` is the text offset of the first token within the choice's text."""
        out = CompletionLogprobs()
        for tok in tokens:
            text, _ = self.token(tok.token_id)
            out.tokens.append(text)
            if tok.logprob is None and tok.top_logprobs is None:  # an unscored token: the prompt's first (echo)
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
            else:
                out.token_logprobs.append(clamp_logprob(tok.logprob))
                top: dict[str, float] = {}
                for tid, lp in tok.top_logprobs or []:  # most likely first: two ids with one text keep the first
                    top.setdefault(self.token(tid)[0], clamp_logprob(lp))
                out.top_logprobs.append(top)
            out.text_offset.append(offset)
            offset += len(text)
        return out
