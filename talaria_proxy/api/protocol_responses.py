"""Request and response models of POST /v1/responses (the Responses API, text only).

Field order follows the OpenAI API reference. What this server implements: `input` (a string or
a list of messages with text content), `instructions`, `max_output_tokens`, `temperature`,
`top_p`, `stream`, and the vLLM sampling extensions of the other endpoints (`top_k`, `min_p`,
`repetition_penalty`, `seed`, ...). `check_supported` names the first field it cannot honour, so
the serving layer answers a 400 naming it instead of a silently different response. Fields with
no effect on the output (`metadata`, `user`, `service_tier`, `prompt_cache_key`, ...) are
accepted; `metadata` is echoed back as OpenAI does.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from talaria_proxy.api.protocol import OpenAIRequest

INPUT_TEXT_TYPES = ("input_text", "output_text", "text")  # text parts of input messages (assistant turns say output_text)


class InputMessage(OpenAIRequest):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]


class ResponsesRequest(OpenAIRequest):
    model: str
    input: str | list[dict[str, Any]] = Field(...)  # items are checked one by one (messages()) for a precise 400
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    metadata: dict[str, str] | None = None
    # known but not implemented: any value other than these defaults is a 400 (check_supported)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    store: bool | None = None
    background: bool | None = None
    include: list[str] | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    truncation: Literal["auto", "disabled"] | None = None
    max_tool_calls: int | None = None
    parallel_tool_calls: bool | None = None  # accepted: meaningless without tools

    def check_supported(self) -> tuple[str, str] | None:
        """(param, reason) of the first field this server cannot honour, or None."""
        if self.tools:
            return "tools", "tools are not supported on /v1/responses; use /v1/chat/completions"
        if self.tool_choice not in (None, "none", "auto"):
            return "tool_choice", "tool_choice needs tools, which /v1/responses does not support"
        if self.previous_response_id is not None:
            return "previous_response_id", "responses are not stored; send the whole conversation as input"
        if self.conversation is not None:
            return "conversation", "conversations are not stored; send the whole conversation as input"
        if self.store:
            return "store", ("responses are not stored (the conversation never leaves the CVM); "
                             "send store: false or leave it out")
        if self.background:
            return "background", "background responses are not supported"
        if self.include:
            return "include", f"include {self.include[0]!r} is not supported"
        if self.prompt is not None:
            return "prompt", "prompt templates are not supported; send input"
        if self.reasoning and any(v is not None for v in self.reasoning.values()):
            return "reasoning", "reasoning options are not supported"
        text_format = (self.text or {}).get("format") or {"type": "text"}
        if text_format.get("type") != "text":
            return "text.format", f"text format '{text_format.get('type')}' is not supported on /v1/responses"
        if (self.text or {}).get("verbosity") not in (None, "medium"):
            return "text.verbosity", "verbosity is not supported"
        if self.top_logprobs:
            return "top_logprobs", "logprobs are not supported on /v1/responses; use /v1/chat/completions"
        if self.truncation == "auto":
            return "truncation", "truncation 'auto' is not supported: a prompt over the context is a 400"
        return None


# -- response ---------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str = ""
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = Field(default_factory=list)


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> "ResponseUsage":
        return cls(input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens)


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = False
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str = "none"
    tools: list[Any] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
