"""OpenAI error objects, and the mapping from every failure to one of them.

    APIError                     an error answer: status, message, type, param, code, headers
    ├── built by api_error_from() for engine/cloud exceptions:
    │     ContextLengthExceeded  -> 400 context_length_exceeded
    │     ValueError             -> 400 invalid_request_error
    │     EngineOverloaded       -> 429 (retry-after)
    │     EngineStopped          -> 503 (retry-after)
    │     CloudUnavailable       -> 503 cloud_unavailable
    │     CloudRejected / other  -> 502 cloud_error
    └── RequestTimedOut          -> 504 request_timeout

Client mistakes are always 4xx: the official SDK retries 408/409/429/5xx on its own, so a 5xx for a
bad request would be sent again and again. Messages never contain prompt or completion text.
"""

from __future__ import annotations

import json
import logging
import traceback

from pathlib import Path

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from talaria_proxy.api.protocol import ErrorInfo, ErrorResponse
from talaria_proxy.engine import ContextLengthExceeded, EngineStopped
from talaria_proxy.errors import CloudError, CloudRejected, CloudUnavailable, EngineOverloaded

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"


class APIError(Exception):
    """An error that goes to the client as `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _default_type(status)
        self.headers = headers or {}

    def body(self) -> dict:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param,
                                             code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return _ErrorJSONResponse(self.body(), status_code=self.status, headers=self.headers)


class _ErrorJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        # ASCII with \u escapes: a message that quotes the client's input (a model name, a field)
        # may hold a lone surrogate, which UTF-8 cannot encode; the answer must still go out.
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class RequestTimedOut(APIError):
    def __init__(self, seconds: float):
        super().__init__(504, f"the request did not finish within {seconds:g} s and was aborted",
                         code="request_timeout", type="timeout_error")


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for a request the client must change."""
    return APIError(400, message, param=param, code=code)


def api_error_from(exc: BaseException, prompt_param: str = "messages") -> APIError:
    """Map an engine or cloud exception to the error the client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthExceeded):
        return APIError(400, str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, EngineOverloaded):
        return APIError(429, str(exc), code="too_many_requests", headers={"retry-after": RETRY_AFTER_S})
    if isinstance(exc, EngineStopped):
        return APIError(503, str(exc), code="shutting_down", headers={"retry-after": RETRY_AFTER_S})
    if isinstance(exc, CloudUnavailable):
        return APIError(503, f"the cloud backend is unavailable: {exc}", code="cloud_unavailable",
                        headers={"retry-after": RETRY_AFTER_S})
    if isinstance(exc, (CloudRejected, CloudError)):
        return APIError(502, f"the cloud backend failed: {exc}", code="cloud_error")
    if isinstance(exc, ValueError):  # SamplingParams / add_request checks
        return APIError(400, str(exc))
    return APIError(502, "generation failed in the engine", code="engine_error")


# -- FastAPI exception handlers ------------------------------------------------------------


async def handle_api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Pydantic's 422 becomes OpenAI's 400, naming the first offending parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [p for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return invalid("the request body is not valid JSON").response()
    if first.get("type") == "missing" and loc:
        return invalid(f"missing required parameter: {_param_path(loc)}", param=_param_path(loc)).response()
    param = _param_path(loc) if loc else None
    msg = str(first.get("msg", "invalid value"))
    return invalid(f"invalid {param}: {msg}" if param else f"invalid request body: {msg}", param=param).response()


async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and wrong methods keep their status but get an OpenAI error body."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {})).response()


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The exception's type and where it was raised, never its message or the request: either may
    # quote prompt text or other client strings.
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                        for f in reversed(traceback.extract_tb(exc.__traceback__)[-6:]))
    log.error("unhandled %s on %s %s at %s", type(exc).__name__, request.method, request.scope.get("route_path")
              or _route_of(request), where)
    return APIError(500, "internal server error", code="internal_error").response()


def _param_path(loc: list) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'; union-branch tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_union_tag(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_union_tag(part: str) -> bool:
    # pydantic names union branches in loc ('str', 'list[TextPart]', 'function-after[...]')
    return part in {"str", "int", "float", "bool", "none"} or "[" in part or part.startswith("function-")


def _route_of(request: Request) -> str:
    """The matched route's pattern ('/v1/models/{model_id:path}'), not the path the client sent."""
    route = request.scope.get("route")
    return getattr(route, "path", "(no route)")
