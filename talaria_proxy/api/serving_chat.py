"""POST /v1/chat/completions: messages -> the tokenizer's chat template -> engine -> OpenAI answer.

Streaming layout (what the official SDK and chat apps expect):
    one role chunk per choice      {"delta": {"role": "assistant", "content": ""}}
    content chunks                 {"delta": {"content": "..."}}
    tool-call chunks (api/tools)   {"delta": {"tool_calls": [{"index", "id", "type", "function": {"name", "arguments": ""}}]}}
                                   {"delta": {"tool_calls": [{"index", "function": {"arguments": "..."}}]}}
    one finish chunk per choice    {"delta": {}, "finish_reason": "stop" | "length" | "tool_calls"}
    usage chunk (include_usage)    {"choices": [], "usage": {...}}
    data: [DONE]
An error after the first chunk is one `{"error": {...}}` event, then `[DONE]`.
"""

from __future__ import annotations

import time

import jinja2
from fastapi import Request
from fastapi.responses import Response

from talaria_proxy.api.errors import APIError, invalid
from talaria_proxy.api.generation import ChoiceDelta, GenerationBatch
from talaria_proxy.api.protocol import (AssistantMessage, ChatChunkChoice, ChatCompletionChoice, ChatCompletionChunk,
                                        ChatCompletionRequest, ChatCompletionResponse, ChatMessage, DeltaMessage,
                                        UsageInfo)
from talaria_proxy.api.serving_base import OpenAIServing, RequestContext
from talaria_proxy.api.structured import response_format_grammar
from talaria_proxy.api.tools import (MarkedTextStream, ToolOutput, ToolRequest, delta_tool_call, forced_call_grammar,
                                     history_message, tool_calls, tool_format, tool_request)
from talaria_proxy.grammar import GrammarCompiler

TEXT_PART_TYPES = ("text", "input_text")  # 'input_text' is the Responses-API spelling some clients reuse


class OpenAIServingChat(OpenAIServing):
    endpoint = "chat"
    id_prefix = "chatcmpl"
    prompt_param = "messages"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grammars = self.tool_format = None
        if self.tokenizer is not None:
            arch = self.engine.model.arch
            self.grammars = GrammarCompiler(self.tokenizer, arch.vocab_size, arch.eos_token_ids)
            self.grammars.warm()
            self.tool_format = tool_format(self.tokenizer, arch.family, self.grammars)

    async def create(self, request: ChatCompletionRequest, raw: Request) -> Response:
        ctx = self.new_context(request)
        tools: ToolRequest | None = None

        def submit() -> GenerationBatch:
            nonlocal tools
            self.check_common(request)
            self._check_unsupported(request)
            tools = tool_request(request)
            prompt = self._render(request.messages, tools)
            grammar = response_format_grammar(request.response_format, self.grammars)
            if tools is not None and tools.forced:
                if grammar is not None:
                    raise invalid("response_format cannot be combined with a required or named tool_choice",
                                  param="response_format")
                grammar = forced_call_grammar(tools, self.tool_format, self.grammars)
            if grammar is not None and request.ignore_eos:  # the grammar ends with EOS; past it nothing is valid
                raise invalid("ignore_eos cannot be combined with response_format or a forced tool call",
                              param="ignore_eos")
            markers = self.tool_format.markers if tools is not None and tools.parsed else {}
            new_stream = (lambda p: MarkedTextStream(self.tokenizer, request.stop_strings(), p, markers)) if markers else None
            return self.start_batch(ctx, request, [prompt], request.token_cap(), request.top_logprob_count(),
                                    grammar=grammar, new_stream=new_stream)

        def output() -> ToolOutput | None:
            return ToolOutput(self.tool_format, tools, request.n) if tools is not None and tools.parsed else None

        return await self.respond(raw, ctx, submit, request.stream,
                                  lambda batch: self._collect(ctx, request, batch, output()),
                                  lambda batch: self._chunks(ctx, request, batch, output()))

    # -- request -> prompt --------------------------------------------------------------------
    def _check_unsupported(self, request: ChatCompletionRequest) -> None:
        """Parameters we cannot honour yet: a 400 naming them, never a silently different answer."""
        if request.functions:
            raise invalid("the deprecated 'functions' are not supported; send 'tools'", param="functions")
        if request.function_call not in (None, "none", "auto"):
            raise invalid("the deprecated 'function_call' is not supported; send 'tool_choice'", param="function_call")
        if request.audio is not None or any(m != "text" for m in request.modalities or []):
            raise invalid("only text output is supported", param="modalities")

    def _render(self, messages: list[ChatMessage], tools: ToolRequest | None = None) -> list[int]:
        """Messages (and tools) -> prompt token ids through the tokenizer's own chat template."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise invalid("this model has no chat template; use /v1/completions", param="messages")
        conversation = [history_message(m, i, _flatten_content(m, i)) for i, m in enumerate(messages)]
        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False,
                                                      tools=tools.tools if tools is not None else None)
            if tools is not None and tools.parsed and text == self.tokenizer.apply_chat_template(
                    conversation, add_generation_prompt=True, tokenize=False):
                raise invalid("this model's chat template does not render tools", param="tools")
        except Exception as exc:  # e.g. a template that insists on alternating roles
            if isinstance(exc, APIError):
                raise
            # A template's own raise_exception() message is static text; other errors may quote input.
            reason = str(exc) if isinstance(exc, jinja2.TemplateError) else type(exc).__name__
            raise invalid(f"the model's chat template rejected the messages: {reason}", param="messages") from None
        # What apply_chat_template(tokenize=True) does: the rendered template already holds the specials.
        return self.tokenizer.encode(text, add_special_tokens=False)

    # -- answers ------------------------------------------------------------------------------
    async def _collect(self, ctx: RequestContext, request: ChatCompletionRequest,
                       batch: GenerationBatch, calls: ToolOutput | None) -> ChatCompletionResponse:
        results = await self.gather(ctx, batch)
        choices = []
        for i, r in enumerate(results):
            message, finish = AssistantMessage(content=r.text), r.finish_reason
            if calls is not None:  # the same parser as the stream: the same calls
                parsed, finish = calls.feed(i, r.text, finish or "stop")
                found = tool_calls(parsed.tool_calls)
                message = AssistantMessage(content=parsed.content or (None if found else ""), tool_calls=found or None)
                ctx.finish_reasons[i] = finish
            choices.append(ChatCompletionChoice(index=i, message=message, finish_reason=finish,
                                                logprobs=self.logprobs.chat(r.tokens) if request.logprobs else None))
        return ChatCompletionResponse(id=ctx.request_id, model=self.config.served_model_name,
                                      system_fingerprint=self.config.system_fingerprint, choices=choices,
                                      usage=UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    async def _chunks(self, ctx: RequestContext, request: ChatCompletionRequest, batch: GenerationBatch,
                      calls: ToolOutput | None):
        created = int(time.time())

        def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> str:
            return ChatCompletionChunk(id=ctx.request_id, created=created, model=self.config.served_model_name,
                                       system_fingerprint=self.config.system_fingerprint, choices=choices,
                                       usage=usage).model_dump_json()

        for choice in batch.choices:
            yield chunk([ChatChunkChoice(index=choice.index, delta=DeltaMessage(role="assistant", content=""))])
        async for delta in batch.deltas():
            for piece in self._delta_choices(delta, request.logprobs, calls):
                yield chunk([piece])
                if piece.finish_reason is not None:
                    ctx.finish_reasons[delta.index] = piece.finish_reason
        if request.stream_options and request.stream_options.include_usage:
            yield chunk([], UsageInfo.of(ctx.prompt_tokens, batch.completion_tokens))

    def _delta_choices(self, delta: ChoiceDelta, logprobs: bool, calls: ToolOutput | None) -> list[ChatChunkChoice]:
        out = []
        text, finish, found = delta.text, delta.finish_reason, []
        if calls is not None:
            parsed, finish = calls.feed(delta.index, delta.text, finish)
            text, found = parsed.content, parsed.tool_calls
        if text or (logprobs and delta.tokens):  # tokens without text (EOS) still carry logprobs
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(content=text),
                                       logprobs=self.logprobs.chat(delta.tokens) if logprobs else None))
        for call in found:  # one chunk per call delta: header first, then argument fragments
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(tool_calls=[delta_tool_call(call)])))
        if finish is not None:
            out.append(ChatChunkChoice(index=delta.index, delta=DeltaMessage(), finish_reason=finish))
        return out


def _flatten_content(message: ChatMessage, i: int) -> str:
    """String or text parts -> one string (parts joined by newlines, as vLLM does)."""
    content = message.content
    if content is None:
        return ""  # e.g. an assistant turn that only carried tool calls
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in TEXT_PART_TYPES:
            raise invalid(f"content parts of type '{part.type}' are not supported; this model reads text only",
                          param=f"messages[{i}].content[{j}]")
        if part.text is None:
            raise invalid("a text part needs a 'text' string", param=f"messages[{i}].content[{j}].text")
        texts.append(part.text)
    return "\n".join(texts)
