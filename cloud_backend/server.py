"""REST API of the cloud backend (protocol talaria/1).

    GET  /health                      200 when ready; JSON with the frame socket's port (or null)
    GET  /v1/manifest                 JSON Manifest
    GET  /v1/public/{op}              safetensors: the scheme's public tensors of op (remo: 'basis' M_pub
                                      [m, d_in], 'recovery' R_pub [m, d_out]; pad: 'col_exp' g [d_out])
    POST /v1/pads                     pad clouds, as dealer: seeds -> r W_bar mod t (see pads() below)
    POST /v1/he/{op}                  pad clouds, `he` source: RLWE ciphertexts of pad rows -> W_bar products
    GET  /v1/cvm-params               safetensors: embedding table, RoPE inv_freq, q/k-norm gains
    GET  /v1/tokenizer                JSON {filename: text}
    POST /v1/linear/{op}              body safetensors {'x': [N, d_in]} -> {'y': [N, d_out]}
    WS   /v1/linear-ws                the same call as binary frames on one socket: safetensors
                                      {'x'} with metadata {'op'} -> {'y'}, or a JSON error text frame
                                      (a step's 4L+1 calls then cost no HTTP request overhead)
    TCP  frame_port                   the same call as raw frames (talaria_wire/frames.py; fastest)

{op} is '3.qkv', '3.o', '3.gate_up', '3.down' or 'lm_head'. Every response carries
`x-talaria-fingerprint` so the proxy notices a cloud that came back with other weights or bases.
Errors are JSON {"error": {"message", "type", "code"}} with a 4xx status for the caller's mistakes.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time

import torch
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from cloud_backend import he_kernel
from cloud_backend.compute import ComputeThread
from cloud_backend.limits import CallLimits
from cloud_backend.service import LinearCallError, MaskedLinearService
from talaria_wire import WireFormatError, decode_tensors, encode_tensors
from talaria_wire.tensors import MEDIA_TYPE, decode_metadata

log = logging.getLogger(__name__)

FINGERPRINT_HEADER = "x-talaria-fingerprint"
MAX_PAD_REQUESTS = 1024  # pad blocks per dealer request
MAX_PAD_BODY = 64 * MAX_PAD_REQUESTS + (64 << 10)  # seeds and the [[op, rows], ...] metadata


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is over `limit` bytes (declared or received): never
    more than `limit` bytes are held."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def build_app(service: MaskedLinearService, api_key: str | None = None, frame_port: int | None = None,
              compute: ComputeThread | None = None) -> FastAPI:
    """The REST app over `service`. Tensor work (GEMMs, encoding tensors) runs on `compute`, the
    process's one compute thread (see compute.py); without one, the app starts and stops its own."""
    own_compute = compute is None
    compute = compute or ComputeThread().start()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if own_compute:
            compute.stop()

    app = FastAPI(title="Talaria cloud backend", version=service.manifest.protocol, lifespan=lifespan)
    fingerprint = service.manifest.fingerprint
    limits = CallLimits.of(service)  # rows and bytes of one call (limits.py); 413 beyond
    cvm_blob = compute.call(
        encode_tensors, service.model.cvm_params,
        metadata={"attention_scaling": repr(service.model.attention_scaling)},
    )

    def authorized(headers) -> bool:
        if not api_key:
            return True
        return hmac.compare_digest(headers.get("authorization", "").encode(), f"Bearer {api_key}".encode())

    @app.middleware("http")
    async def auth_and_fingerprint(request: Request, call_next):
        if request.url.path != "/health" and not authorized(request.headers):
            return _error(401, "missing or invalid bearer token", "invalid_api_key")
        response = await call_next(request)
        response.headers[FINGERPRINT_HEADER] = fingerprint
        return response

    @app.get("/health")
    def health():
        return {"status": "ok", "model": service.manifest.model_name, "fingerprint": fingerprint,
                "frame_port": frame_port}

    @app.get("/v1/manifest")
    def manifest():
        return service.manifest.model_dump()

    @app.get("/v1/public/{op}")
    async def public(op: str):
        try:
            tensors = service.public(op)
        except LinearCallError as exc:
            return _error(exc.status, str(exc), "unknown_op")
        return Response(await compute.run(encode_tensors, tensors), media_type=MEDIA_TYPE)

    @app.post("/v1/pads")
    async def pads(request: Request):
        """The dealer: body {'seeds': [B, 32] uint8}, metadata requests = JSON [[op, rows], ...]
        -> {'0': r W_bar mod t [rows_0, d_out], ...} for the pad each seed stands for."""
        body = await _bounded_body(request, MAX_PAD_BODY)
        if body is None:
            return _error(413, f"a pad request is at most {MAX_PAD_BODY} bytes", "too_large")
        try:
            tensors = decode_tensors(body)
            requests = json.loads(decode_metadata(body).get("requests", "null"))
            seeds = tensors.get("seeds")
            if (not isinstance(requests, list) or seeds is None or seeds.dtype != torch.uint8 or seeds.dim() != 2
                    or seeds.shape[0] != len(requests) or not all(isinstance(r, list) and len(r) == 2 for r in requests)):
                raise WireFormatError("expected tensor 'seeds' [B, 32] uint8 and metadata requests = [[op, rows], ...] of length B")
            if len(requests) > MAX_PAD_REQUESTS:
                raise LinearCallError(f"at most {MAX_PAD_REQUESTS} pad blocks per request, got {len(requests)}", 413)
            if not all(isinstance(op, str) and type(rows) is int for op, rows in requests):
                raise WireFormatError("each request is [op name, rows]")

            def deal():
                out = {str(i): service.dealer_pads(op, bytes(seeds[i].tolist()), rows) for i, (op, rows) in enumerate(requests)}
                return encode_tensors(out)

            blob = await compute.run(deal)
        except (WireFormatError, ValueError) as exc:
            if isinstance(exc, LinearCallError):
                return _error(exc.status, str(exc), "unknown_op" if exc.status == 404 else "bad_request")
            return _error(400, str(exc), "bad_body")
        return Response(blob, media_type=MEDIA_TYPE)

    @app.post("/v1/he/{op}")
    async def he_pads(op: str, request: Request):
        """The `he` pad source: RLWE ciphertexts of pad rows -> re-randomised W_bar products (he_kernel.py)."""
        try:
            cap = he_kernel.body_cap(service, op)
        except LinearCallError as exc:
            return _error(exc.status, str(exc), "unknown_op")
        body = await _bounded_body(request, cap)
        if body is None:
            return _error(413, f"an he request for {op} is at most {cap} bytes (one batch of ciphertexts)", "too_large")
        try:
            blob = await he_kernel.serve(compute, service, op, body)
        except WireFormatError as exc:
            return _error(400, str(exc), "bad_body")
        except LinearCallError as exc:
            return _error(exc.status, str(exc), "unknown_op" if exc.status == 404 else "bad_request")
        return Response(blob, media_type=MEDIA_TYPE)

    @app.get("/v1/cvm-params")
    def cvm_params():
        return Response(cvm_blob, media_type=MEDIA_TYPE)

    @app.get("/v1/tokenizer")
    def tokenizer():
        return service.model.tokenizer_files

    @app.websocket("/v1/linear-ws")
    async def linear_ws(ws: WebSocket):
        if not authorized(ws.headers):
            await ws.close(code=1008, reason="missing or invalid bearer token")
            return
        await ws.accept(headers=[(FINGERPRINT_HEADER.encode(), fingerprint.encode())])
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                blob = message.get("bytes")
                if blob is None or len(blob) > limits.body_bytes():
                    status, reason = (400, "calls are binary messages") if blob is None else (
                        413, f"a call message is at most {limits.body_bytes()} bytes ({limits.max_rows} rows)")
                    await ws.send_json({"error": {"message": reason, "status": status}})
                    continue
                try:
                    tensors = decode_tensors(blob)
                    op = decode_metadata(blob).get("op", "")
                    if set(tensors) != {"x"}:
                        raise WireFormatError(f"expected exactly one tensor named 'x', got {sorted(tensors)}")
                    y = await compute.run(service.linear, op, tensors["x"])
                except (WireFormatError, LinearCallError) as exc:
                    status = getattr(exc, "status", 400)
                    await ws.send_json({"error": {"message": str(exc), "status": status}})
                    continue
                await ws.send_bytes(encode_tensors({"y": y}))
        except WebSocketDisconnect:
            pass

    @app.post("/v1/linear/{op}")
    async def linear(op: str, request: Request):
        if op not in limits.widths:
            return _error(404, f"unknown op {op!r}; expected '<layer>.<qkv|o|gate_up|down>' or 'lm_head'", "unknown_op")
        body = await _bounded_body(request, limits.body_bytes(op))
        if body is None:
            return _error(413, f"a call to {op} is at most {limits.body_bytes(op)} bytes ({limits.max_rows} rows of "
                               f"{limits.widths[op]} columns); split it", "too_large")
        try:
            tensors = decode_tensors(body)
            if set(tensors) != {"x"}:
                raise WireFormatError(f"expected exactly one tensor named 'x', got {sorted(tensors)}")
            t0 = time.perf_counter()
            y = await compute.run(service.linear, op, tensors["x"])
            elapsed_ms = (time.perf_counter() - t0) * 1e3
        except WireFormatError as exc:
            return _error(400, str(exc), "bad_body")
        except LinearCallError as exc:
            return _error(exc.status, str(exc), "unknown_op" if exc.status == 404 else "bad_tensor")
        return Response(encode_tensors({"y": y}), media_type=MEDIA_TYPE, headers={"x-talaria-gemm-ms": f"{elapsed_ms:.3f}"})

    return app
