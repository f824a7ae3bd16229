"""The proxy's OpenAI-compatible HTTP app.

    POST /v1/chat/completions     chat, streamed (SSE) or not            API key when configured
    POST /v1/completions          legacy text completions                 API key when configured
    POST /v1/responses            the Responses API, text in and out      API key when configured
    POST /tokenize, /detokenize   the CVM's tokenizer (vLLM's shapes)     API key when configured
    GET  /v1/models[/{id}]        the served model                        API key when configured
    GET  /health                  200 ready / 503 cloud unreachable, starting or stopping (public)
    GET  /metrics                 Prometheus text format (counts and timings; API key when configured)

Every POST body is bounded (`max_body_bytes`, 413) and checked for lone surrogates before it is
parsed (api/limits.py).

`build_app(runtime, settings)` wires a built (not started) `ProxyRuntime` to the routes; the
lifespan starts the engine and, on shutdown, stops it after uvicorn has let in-flight requests
finish (uvicorn closes the listening socket first, so new connections are refused).
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from talaria_proxy.api.errors import (APIError, handle_api_error, handle_http_error, handle_unexpected,
                                      handle_validation_error)
from talaria_proxy.api.health import CloudHealth
from talaria_proxy.api.limits import RequestLimitsMiddleware
from talaria_proxy.api.metrics import CONTENT_TYPE, ProxyMetrics
from talaria_proxy.api.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from talaria_proxy.api.serving_base import ServingConfig
from talaria_proxy.api.serving_chat import OpenAIServingChat
from talaria_proxy.api.serving_completions import OpenAIServingCompletion
from talaria_proxy.api.serving_responses import OpenAIServingResponses, ResponsesRequest
from talaria_proxy.api.serving_tokenize import DetokenizeRequest, OpenAIServingTokenize, TokenizeRequest
from talaria_proxy.runtime import ProxyRuntime
from talaria_proxy.settings import ProxySettings

log = logging.getLogger("talaria_proxy.api")


class APIKeyMiddleware:
    """Requires `Authorization: Bearer <key>` on /v1/*, the tokenizer routes and /metrics (its counts
    and lengths describe other users' requests); plain ASGI so streaming is untouched.

    CORS preflights (OPTIONS) pass: browsers send them without credentials.
    """

    def __init__(self, app, keys: list[str], prefixes: tuple[str, ...] = ("/v1", "/tokenize", "/detokenize", "/metrics")):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.prefixes = prefixes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes) and scope["method"] != "OPTIONS":
            if not self._authorized(scope):
                error = APIError(401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                                 code="invalid_api_key", headers={"www-authenticate": "Bearer"})
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        # Compare against every key (constant time each) so timing does not reveal which matched.
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        return scheme.lower() == b"bearer" and any(matches)


def build_app(runtime: ProxyRuntime, settings: ProxySettings, *, health_interval: float = 1.0) -> FastAPI:
    # sse-starlette logs every event body at DEBUG: completion text must never reach a log.
    logging.getLogger("sse_starlette").setLevel(max(logging.INFO, logging.getLogger("sse_starlette").level))
    engine = runtime.engine
    served = settings.served_model_name or runtime.manifest.model_name
    config = ServingConfig(
        served_model_name=served,
        model_aliases=frozenset({runtime.manifest.model_name} - {served}),
        max_n=settings.max_n,
        request_timeout=settings.request_timeout,
        shutdown_grace=settings.shutdown_drain,
        system_fingerprint=f"talaria-{runtime.manifest.fingerprint[:16]}",
    )
    metrics = ProxyMetrics(runtime)
    if settings.chat_template and runtime.tokenizer is not None:  # --chat-template FILE replaces the checkpoint's
        runtime.tokenizer.chat_template = Path(settings.chat_template).read_text(encoding="utf-8")
    chat = OpenAIServingChat(engine, runtime.tokenizer, config, metrics)
    completions = OpenAIServingCompletion(engine, runtime.tokenizer, config, metrics)
    responses = OpenAIServingResponses(engine, runtime.tokenizer, config, metrics)
    tokenize = OpenAIServingTokenize(runtime.tokenizer, engine.max_model_len, chat.check_model)
    ping = getattr(runtime.backend, "ping", None) or (lambda: True)  # in-process backends are always up
    health = CloudHealth(ping, min_interval=health_interval)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        app.state.ready = True
        log.info("serving model '%s' (max context %d tokens, api keys %s)", served, engine.max_model_len,
                 "on" if settings.api_keys else "off")
        try:
            yield
        finally:
            app.state.ready = False
            log.info("shutting down: draining the engine (up to %.0fs)", settings.shutdown_drain)
            await engine.stop(settings.shutdown_drain)

    app = FastAPI(title="Talaria proxy (OpenAI-compatible)", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ready = False
    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)
    # Middleware added last runs first: CORS wraps auth so that 401s carry CORS headers too.
    # inside the key check: an unauthenticated client gets its 401 before any body is read
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(APIKeyMiddleware, keys=settings.api_keys)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["x-request-id"])

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: ChatCompletionRequest, raw: Request) -> Response:
        return await chat.create(request, raw)

    @app.post("/v1/completions")
    async def create_completion(request: CompletionRequest, raw: Request) -> Response:
        return await completions.create(request, raw)

    @app.post("/v1/responses")
    async def create_response(request: ResponsesRequest, raw: Request) -> Response:
        return await responses.create(request, raw)

    @app.post("/tokenize")
    async def tokenize_text(request: TokenizeRequest) -> JSONResponse:
        return JSONResponse(await tokenize.handle(tokenize.tokenize, request))

    @app.post("/detokenize")
    async def detokenize_ids(request: DetokenizeRequest) -> JSONResponse:
        return JSONResponse(await tokenize.handle(tokenize.detokenize, request))

    card = ModelCard(id=served, created=created, max_model_len=engine.max_model_len)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse(ModelList(data=[card]).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        chat.check_model(model_id)
        return JSONResponse(card.model_dump())

    @app.get("/health")
    async def health_check() -> JSONResponse:
        if not app.state.ready:
            return JSONResponse({"status": "unavailable", "reason": "starting or shutting down"}, status_code=503)
        if not await health.cloud_up():
            return JSONResponse({"status": "unavailable", "reason": "cloud backend unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "model": served})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
