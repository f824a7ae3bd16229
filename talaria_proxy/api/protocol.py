"""OpenAI request and response models of the proxy's HTTP API (pydantic, at the process boundary).

Field order follows the OpenAI API reference. Requests accept unknown fields (clients such as
LibreChat send extras); the serving layer logs their *names* at debug level and ignores them.
Fields we know but cannot honour (`functions`, audio, ...) are kept here so that the serving
layer can refuse them with a 400 naming the parameter, rather than silently answering something
else; `tools` and `response_format` are served by api/tools.py and api/structured.py.

Checks that only need the request itself live here (ranges, `top_logprobs` without `logprobs`,
`stream_options` without `stream`); checks that need the model (context length, vocabulary,
served name) live in the serving classes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# -- requests ---------------------------------------------------------------------------------


class OpenAIRequest(BaseModel):
    """Base of request bodies: unknown fields are kept in `model_extra`, then ignored.

    Strict types, as OpenAI's own API: `"n": "1"`, `"max_tokens": true`, `"stream": "1"` or token
    ids `[true, false]` are 400s, not coerced (an int is still a valid float)."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        # OpenAI's schema makes optional parameters nullable and clients send `"n": null` and the
        # like for "not set": treat an explicit null as the default (a required field stays missing).
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data


class TextPart(OpenAIRequest):
    """One element of an array `content`; only `{"type": "text"}` is supported (checked in serving)."""

    type: str
    text: str | None = None


class ChatMessage(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted, not rendered: chat templates rarely use it
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's calls (checked in api/tools.py)
    tool_call_id: str | None = None  # a tool turn: the call it answers


class StreamOptions(OpenAIRequest):
    include_usage: bool = False


class JSONSchemaFormat(OpenAIRequest):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(..., min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # absent: any JSON object
    strict: bool | None = None


class ResponseFormat(OpenAIRequest):
    type: str = "text"  # text | json_object | json_schema (api/structured.py)
    json_schema: JSONSchemaFormat | None = None


# Sampling extensions other servers (vLLM, llama.cpp, TGI) accept that this one does not implement,
# each with the value that means what this server does anyway: that value (or null) is accepted,
# any other is a 400 naming the field, so no sampling field is silently ignored.
UNSUPPORTED_EXTENSIONS: dict[str, object] = {
    "min_tokens": 0, "use_beam_search": False, "length_penalty": 1.0, "early_stopping": False,
    "include_stop_str_in_output": False, "skip_special_tokens": True, "spaces_between_special_tokens": True,
    "bad_words": [], "allowed_token_ids": [], "prompt_logprobs": 0, "truncate_prompt_tokens": 0,
    "logits_processors": [], "typical_p": 1.0, "top_a": 0.0, "tfs": 1.0, "mirostat": 0,
    "dynatemp_range": 0.0, "xtc_probability": 0.0, "dry_multiplier": 0.0, "top_n_sigma": -1.0,
    "repeat_penalty": 1.0, "n_probs": 0,
    "guided_json": None, "guided_regex": None, "guided_choice": None, "guided_grammar": None,
    "structured_outputs": None, "grammar": None, "json_schema": None,
}


class SamplingFields(OpenAIRequest):
    """Parameters shared by /v1/chat/completions and /v1/completions."""

    model: str
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None  # accepted and ignored
    # extensions (as vLLM)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: no top-k cut
    min_p: float | None = Field(None, ge=0.0, le=1.0)  # drop tokens below min_p * the top probability
    repetition_penalty: float | None = Field(None, gt=0.0)  # on prompt + output tokens; 1: off
    stop_token_ids: list[int] | None = None  # generation also ends after one of these tokens
    ignore_eos: bool = False  # keep generating past EOS (benchmarks, fixed-length tests)

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys_are_token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            try:
                int(key)
            except ValueError:
                raise ValueError(f"keys must be token ids, got {key!r}") from None
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"bias of token {key} must be in [-100, 100], got {value}")
        return bias

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def refused_extension(self) -> str | None:
        """The first vLLM-style extra field set to a value this server would not honour."""
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED_EXTENSIONS and value is not None and value != UNSUPPORTED_EXTENSIONS[name]:
                return name
        return None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]  # an empty stop string would end every answer at once

    def logit_bias_ids(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in (self.logit_bias or {}).items()}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)  # newer name of max_tokens; wins over it
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None  # deprecated form of tools
    function_call: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # false: at most one tool call
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1)
    echo: bool = False  # the answer starts with the prompt (and, with logprobs, the prompt's logprobs)
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=0)  # 0 (with echo): score the prompt, generate nothing
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, prompt):
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("prompt must not be empty")
        return prompt

    def prompts(self) -> list[str] | list[list[int]]:
        """The batch of prompts: a list of strings or a list of token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]  # type: ignore[list-item]
        return p  # type: ignore[return-value]


# -- responses --------------------------------------------------------------------------------


def _none_omitted(default=None, **kwargs):
    """A field left out of the JSON when None (OpenAI omits e.g. `role` after the first chunk)."""
    return Field(default, exclude_if=lambda v: v is None, **kwargs)


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "UsageInfo":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = ""  # None when the answer is only tool calls
    tool_calls: list[ToolCall] | None = _none_omitted()


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaFunctionCall(BaseModel):
    name: str | None = _none_omitted()
    arguments: str | None = _none_omitted()


class DeltaToolCall(BaseModel):
    """The first delta of a call carries id, type and name (arguments ""), later ones argument text."""

    index: int
    id: str | None = _none_omitted()
    type: Literal["function"] | None = _none_omitted()
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = _none_omitted()
    content: str | None = _none_omitted()
    tool_calls: list[DeltaToolCall] | None = _none_omitted()


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = _none_omitted()


class CompletionLogprobs(BaseModel):
    """The legacy logprobs layout: parallel lists per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)  # None: the prompt's first token
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: UsageInfo | None = _none_omitted()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "talaria"
    max_model_len: int | None = _none_omitted()  # context window in tokens (as vLLM reports it)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
