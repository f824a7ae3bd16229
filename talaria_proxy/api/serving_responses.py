"""POST /v1/responses: the Responses API for text, on the same engine as chat completions.

`instructions` become a system turn and `input` (a string, or messages with text parts) the rest
of the conversation, rendered through the checkpoint's chat template exactly as
/v1/chat/completions renders messages. The answer is one `message` output item with one
`output_text` part; `status` is `incomplete` (reason `max_output_tokens`) when the token cap or
the context ended it.

Streaming sends the SDK's typed events, each `event: <type>` with `data: {"type", "sequence_number", ...}`:

    response.created  response.in_progress                           (response: status in_progress)
    response.output_item.added  response.content_part.added          (the empty message and part)
    response.output_text.delta ...                                    (text as it is decoded)
    response.output_text.done  response.content_part.done  response.output_item.done
    response.completed | response.incomplete                          (the whole response, with usage)

An error after the stream started is one `{"error": {...}}` event (the SDK raises it), as on the
other endpoints. Nothing is stored: `store`, `previous_response_id` and `conversation` are 400s.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from talaria_proxy.api.errors import invalid
from talaria_proxy.api.generation import GenerationBatch
from talaria_proxy.api.protocol import SamplingFields
from talaria_proxy.api.protocol_responses import (INPUT_TEXT_TYPES, IncompleteDetails, InputMessage, OutputMessage,
                                                  OutputText, ResponseObject, ResponsesRequest, ResponseUsage)
from talaria_proxy.api.serving_base import OpenAIServing, RequestContext
from talaria_proxy.api.serving_tokenize import render_chat

# SamplingFields that mean something else here, or nothing: refused when sent as extras
_NOT_FOR_RESPONSES = {"max_tokens": "use max_output_tokens", "n": "one output per response"}


class OpenAIServingResponses(OpenAIServing):
    endpoint = "responses"
    id_prefix = "resp"
    prompt_param = "input"

    async def create(self, request: ResponsesRequest, raw: Request) -> Response:
        ctx = RequestContext(f"resp_{uuid.uuid4().hex}", time.monotonic())
        item_id = f"msg_{uuid.uuid4().hex}"

        def submit() -> GenerationBatch:
            unsupported = request.check_supported()
            if unsupported is not None:
                raise invalid(unsupported[1], param=unsupported[0])
            sampling = self._sampling_fields(request)
            self.check_common(sampling)
            text = render_chat(self.tokenizer, self._conversation(request))
            # as apply_chat_template(tokenize=True): the rendered template already holds the specials
            prompt = self.tokenizer.encode(text, add_special_tokens=False)
            return self.start_batch(ctx, sampling, [prompt], request.max_output_tokens, None)

        return await self.respond(raw, ctx, submit, request.stream,
                                  lambda batch: self._collect(ctx, request, batch, item_id),
                                  lambda batch: self._events(ctx, request, batch, item_id))

    # -- request -> prompt --------------------------------------------------------------------
    def _sampling_fields(self, request: ResponsesRequest) -> SamplingFields:
        """The request as the sampling fields the other endpoints share (extensions included)."""
        extras = dict(request.model_extra or {})
        for name, reason in _NOT_FOR_RESPONSES.items():
            if extras.get(name) is not None and not (name == "n" and extras[name] == 1):
                raise invalid(f"{name} is not a /v1/responses parameter: {reason}", param=name)
        extras.pop("n", None)
        extras.pop("stream_options", None)  # the Responses API's own (include_obfuscation): no effect here
        try:
            return SamplingFields.model_validate({**extras, "model": request.model, "temperature": request.temperature,
                                                  "top_p": request.top_p, "stream": request.stream})
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise invalid(f"invalid {param}: {first['msg']}", param=param) from None

    def _conversation(self, request: ResponsesRequest) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": request.instructions}] if request.instructions else []
        if isinstance(request.input, str):
            return turns + [{"role": "user", "content": request.input}]
        if not request.input:
            raise invalid("input must not be empty", param="input")
        for i, item in enumerate(request.input):
            kind = item.get("type", "message")
            if kind != "message":
                raise invalid(f"input items of type '{kind}' are not supported; only text messages",
                              param=f"input[{i}]")
            try:
                message = InputMessage.model_validate(item)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise invalid(f"invalid input[{i}].{where}: {first['msg']}", param=f"input[{i}].{where}") from None
            turns.append({"role": message.role, "content": _text_of(message, i)})
        return turns

    # -- answers ------------------------------------------------------------------------------
    def _response(self, ctx: RequestContext, request: ResponsesRequest, **fields) -> ResponseObject:
        user = (request.model_extra or {}).get("user")
        return ResponseObject(id=ctx.request_id, model=self.config.served_model_name, instructions=request.instructions,
                              max_output_tokens=request.max_output_tokens, temperature=request.temperature,
                              top_p=request.top_p, metadata=request.metadata or {},
                              user=user if isinstance(user, str) else None, **fields)

    def _finished(self, ctx: RequestContext, request: ResponsesRequest, batch: GenerationBatch, item_id: str,
                  text: str, finish_reason: str | None) -> ResponseObject:
        status = "incomplete" if finish_reason == "length" else "completed"
        message = OutputMessage(id=item_id, status=status, content=[OutputText(text=text)])
        return self._response(ctx, request, status=status, output=[message],
                              incomplete_details=IncompleteDetails() if status == "incomplete" else None,
                              usage=ResponseUsage.of(ctx.prompt_tokens, batch.completion_tokens))

    async def _collect(self, ctx: RequestContext, request: ResponsesRequest, batch: GenerationBatch,
                       item_id: str) -> ResponseObject:
        result = (await self.gather(ctx, batch))[0]
        return self._finished(ctx, request, batch, item_id, result.text, result.finish_reason)

    async def _events(self, ctx: RequestContext, request: ResponsesRequest, batch: GenerationBatch, item_id: str):
        sequence = 0

        def event(kind: str, **fields: Any) -> dict[str, str]:
            nonlocal sequence
            body = {"type": kind, "sequence_number": sequence,
                    **{k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in fields.items()}}
            sequence += 1
            return {"event": kind, "data": json.dumps(body)}

        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        started = self._response(ctx, request, status="in_progress")
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        yield event("response.output_item.added", output_index=0, item=OutputMessage(id=item_id))
        yield event("response.content_part.added", part=OutputText(), **where)
        text, finish_reason = "", None
        async for delta in batch.deltas():
            if delta.text:
                text += delta.text
                yield event("response.output_text.delta", delta=delta.text, logprobs=[], **where)
            if delta.finish_reason is not None:
                finish_reason = ctx.finish_reasons[0] = delta.finish_reason
        done = self._finished(ctx, request, batch, item_id, text, finish_reason)
        yield event("response.output_text.done", text=text, logprobs=[], **where)
        yield event("response.content_part.done", part=done.output[0].content[0], **where)
        yield event("response.output_item.done", output_index=0, item=done.output[0])
        yield event("response.incomplete" if done.status == "incomplete" else "response.completed", response=done)


def _text_of(message: InputMessage, i: int) -> str:
    """A message's text: the string, or its text parts joined by newlines (as the chat endpoint)."""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if part.get("type") not in INPUT_TEXT_TYPES:
            raise invalid(f"content parts of type '{part.get('type')}' are not supported; this model reads text only",
                          param=f"input[{i}].content[{j}]")
        if not isinstance(part.get("text"), str):
            raise invalid("a text part needs a 'text' string", param=f"input[{i}].content[{j}].text")
        texts.append(part["text"])
    return "\n".join(texts)
