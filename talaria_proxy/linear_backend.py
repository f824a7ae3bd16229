"""The linear-backend seam: how the CVM reaches the cloud's weights.

`LinearBackend` is everything the engine needs from the cloud: the manifest, the public ReMO
tensors of an op, the CVM parameters, the tokenizer files and `linear(op, x~) -> y~`.
`HttpLinearBackend` is production: setup over REST (httpx), and the linear calls as raw frames on
one TCP socket (`tcp`, default: a call costs its bytes plus a round trip), as binary messages on
one WebSocket (`websocket`), or as POSTs with safetensors bodies (`http`);
`InProcessLinearBackend` calls a service object directly, for tests and benchmarks without a network.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import torch
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_proxy.frame_client import FrameLink
from talaria_wire import Manifest, WireFormatError, decode_tensors, encode_tensors
from talaria_wire.tensors import MEDIA_TYPE, decode_metadata

log = logging.getLogger(__name__)

FINGERPRINT_HEADER = "x-talaria-fingerprint"
TRANSPORTS = ("tcp", "websocket", "http")


class PendingCall:
    """A linear call on its way: `result()` waits for y~; `abandon()` gives it up (on an error in
    the CVM's own work meanwhile). Exactly one of the two must be called."""

    def __init__(self, finish: Callable[[], torch.Tensor], release: Callable[[bool], None] | None = None):
        self._finish = finish
        self._release = release
        self._open = True

    def result(self) -> torch.Tensor:
        ok = False
        try:
            y = self._finish()
            ok = True
            return y
        finally:
            self._close(ok)

    def abandon(self) -> None:
        self._close(False)

    def _close(self, ok: bool) -> None:
        if self._open:
            self._open = False
            if self._release is not None:
                self._release(ok)


class LinearBackend(ABC):
    @abstractmethod
    def manifest(self) -> Manifest: ...

    @abstractmethod
    def public_tensors(self, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(M_pub [m, d_in], R_pub [m, d_out]) of `op`."""

    @abstractmethod
    def cvm_params(self) -> tuple[dict[str, torch.Tensor], float]:
        """(embedding, rope inv_freq, q/k-norm gains; RoPE attention scaling)."""

    @abstractmethod
    def tokenizer_files(self) -> dict[str, str]: ...

    @abstractmethod
    def linear(self, op: str, x: torch.Tensor) -> torch.Tensor:
        """y~ = x~ W (+ b) computed by the cloud; x: [N, d_in] in the wire dtype."""

    def begin(self, op: str, x: torch.Tensor) -> PendingCall:
        """Start `linear(op, x)`; the CVM may compute until it calls `.result()`. This default
        computes at once; backends with a socket send here and receive in `result()`."""
        y = self.linear(op, x)
        return PendingCall(lambda: y)

    def close(self) -> None:
        pass


class InProcessLinearBackend(LinearBackend):
    """Wraps a cloud_backend MaskedLinearService in the same process (duck-typed: no import of it)."""

    def __init__(self, service):
        self.service = service

    def manifest(self) -> Manifest:
        return Manifest.model_validate(self.service.manifest.model_dump())

    def public_tensors(self, op):
        return self.service.bases[op], self.service.recovery[op]

    def cvm_params(self):
        return dict(self.service.model.cvm_params), float(self.service.model.attention_scaling)

    def tokenizer_files(self):
        return dict(self.service.model.tokenizer_files)

    def linear(self, op, x):
        return self.service.linear(op, x)


class HttpLinearBackend(LinearBackend):
    """Talks protocol talaria/1 to `base_url` (e.g. http://cloud:8100) over one kept-alive connection."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 connect_timeout: float = 3.0, http_transport: httpx.BaseTransport | None = None,
                 transport: str = "tcp", ca_file: str | None = None):
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown cloud transport {transport!r}; expected one of {', '.join(TRANSPORTS)}")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        # https: REST, WebSocket and frames all verify the cloud's certificate (system CAs or ca_file)
        self._tls = ssl.create_default_context(cafile=ca_file) if self.base_url.startswith("https://") else None
        self._headers = headers
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        # a mocked httpx transport (tests) has no sockets behind it: POSTs only
        self.transport = "http" if http_transport is not None else transport
        self._ws: ClientConnection | None = None
        self._call_lock = threading.Lock()  # one call in flight per connection (frames or WebSocket)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=http_transport,
            verify=self._tls or True,
        )
        self._fingerprint: str | None = None
        self._op_index: dict[str, int] = {}
        self._frames = FrameLink(self._frame_address, api_key, self._check_fingerprint,
                                 connect_timeout=connect_timeout, timeout=timeout, tls=self._tls)

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            resp = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CloudUnavailable(f"cloud backend at {self.base_url} timed out on {path}") from exc
        except httpx.TransportError as exc:
            raise CloudUnavailable(f"cloud backend at {self.base_url} is unreachable: {exc}") from exc
        self._check_fingerprint(resp.headers.get(FINGERPRINT_HEADER))
        if resp.status_code >= 500:
            raise CloudUnavailable(f"cloud backend error {resp.status_code} on {path}: {_message(resp)}")
        if resp.status_code >= 400:
            raise CloudRejected(f"cloud backend rejected {path} ({resp.status_code}): {_message(resp)}")
        return resp

    def _check_fingerprint(self, fp: str | None) -> None:
        if self._fingerprint is not None and fp is not None and fp != self._fingerprint:
            raise CloudUnavailable(
                f"cloud backend restarted with different weights or masking bases "
                f"(fingerprint {fp} != {self._fingerprint}); restart the proxy"
            )

    def _tensors(self, path: str) -> tuple[dict[str, torch.Tensor], httpx.Response]:
        resp = self._request("GET", path)
        try:
            return decode_tensors(resp.content), resp
        except WireFormatError as exc:
            raise CloudRejected(f"cloud sent a malformed body for {path}: {exc}") from exc

    # -- LinearBackend ----------------------------------------------------------------------
    def manifest(self) -> Manifest:
        resp = self._request("GET", "/v1/manifest")
        manifest = Manifest.model_validate(resp.json())
        self._fingerprint = manifest.fingerprint
        self._op_index = {op.name: i for i, op in enumerate(manifest.ops)}
        return manifest

    def public_tensors(self, op):
        tensors, _ = self._tensors(f"/v1/recovery/{op}")
        return tensors["basis"], tensors["recovery"]

    def cvm_params(self):
        resp = self._request("GET", "/v1/cvm-params")
        tensors = decode_tensors(resp.content)
        return tensors, float(decode_metadata(resp.content).get("attention_scaling", 1.0))

    def tokenizer_files(self):
        return self._request("GET", "/v1/tokenizer").json()

    def linear(self, op, x):
        if self.transport != "http":
            return self.begin(op, x).result()
        resp = self._request("POST", f"/v1/linear/{op}", content=encode_tensors({"x": x}),
                             headers={"content-type": MEDIA_TYPE})
        try:
            return decode_tensors(resp.content)["y"]
        except (WireFormatError, KeyError) as exc:
            raise CloudRejected(f"cloud sent a malformed answer for {op}: {exc}") from exc

    def begin(self, op, x):
        if self.transport == "http":
            return super().begin(op, x)
        self._call_lock.acquire()  # released by the PendingCall: one call in flight per socket
        try:
            if self.transport == "tcp":
                if not self._op_index:
                    self.manifest()  # op names -> frame op indices
                index = self._op_index.get(op)
                if index is None:
                    raise CloudRejected(f"unknown op {op!r}: not in the cloud's manifest")
                self._frames.send(index, x)
                finish = lambda: self._frames.receive(op)  # noqa: E731
            else:
                self._ws_send(op, x)
                finish = lambda: self._ws_receive(op)  # noqa: E731
        except BaseException:
            self._call_lock.release()
            raise
        return PendingCall(finish, self._end_call)

    def _end_call(self, ok: bool) -> None:
        try:
            if not ok:  # abandoned or failed: an answer may still come, so never reuse the socket
                self._frames.drop()
                self._drop_socket()
        finally:
            self._call_lock.release()

    def _frame_address(self) -> tuple[str, int]:
        """(host, port) of the cloud's frame socket, asked of /health at every (re)connect."""
        resp = self._request("GET", "/health")
        port = resp.json().get("frame_port")
        if not port:
            raise CloudRejected("the cloud backend has no frame socket (its frame_port is off); "
                                "set cloud_transport to websocket or http, or enable it on the cloud")
        return urlsplit(self.base_url).hostname or "127.0.0.1", int(port)

    def _socket(self) -> ClientConnection:
        if self._ws is None:
            url = "ws" + self.base_url[len("http"):] + "/v1/linear-ws"
            try:
                ws = connect(url, additional_headers=self._headers, open_timeout=self._connect_timeout,
                             max_size=None, compression=None, legacy=True, ssl=self._tls,
                             close_timeout=0.5)  # a hung cloud must not hold up the error
            except InvalidStatus as exc:
                status = exc.response.status_code
                raise (CloudRejected if status < 500 else CloudUnavailable)(
                    f"cloud backend refused the linear socket ({status}); check the cloud API key") from exc
            except (OSError, TimeoutError, WebSocketException) as exc:
                raise CloudUnavailable(f"cloud backend at {self.base_url} is unreachable: {exc}") from exc
            self._check_fingerprint(ws.response.headers.get(FINGERPRINT_HEADER))
            self._ws = ws
        return self._ws

    def _drop_socket(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def _ws_send(self, op: str, x: torch.Tensor) -> None:
        ws = self._socket()
        try:
            ws.send(encode_tensors({"x": x}, metadata={"op": op}))
        except (OSError, WebSocketException) as exc:
            self._drop_socket()
            raise CloudUnavailable(f"cloud backend at {self.base_url} is unreachable: {exc}") from exc

    def _ws_receive(self, op: str) -> torch.Tensor:
        if self._ws is None:
            raise CloudUnavailable(f"cloud backend at {self.base_url}: no call in flight for {op}")
        try:
            reply = self._ws.recv(timeout=self._timeout)
        except TimeoutError as exc:
            self._drop_socket()  # a late answer must not be read as the next call's
            raise CloudUnavailable(f"cloud backend at {self.base_url} timed out on {op}") from exc
        except (OSError, WebSocketException) as exc:
            self._drop_socket()
            raise CloudUnavailable(f"cloud backend at {self.base_url} is unreachable: {exc}") from exc
        if isinstance(reply, str):
            import json

            err = json.loads(reply).get("error", {})
            raise CloudRejected(f"cloud backend rejected {op} ({err.get('status')}): {err.get('message')}")
        try:
            return decode_tensors(reply)["y"]
        except (WireFormatError, KeyError) as exc:
            raise CloudRejected(f"cloud sent a malformed answer for {op}: {exc}") from exc

    def ping(self) -> bool:
        """True when the cloud is up and still the one whose manifest we loaded."""
        try:
            resp = self._client.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        fp = resp.headers.get(FINGERPRINT_HEADER)
        return resp.status_code == 200 and (self._fingerprint is None or fp == self._fingerprint)

    def close(self) -> None:
        with self._call_lock:
            self._drop_socket()
            self._frames.drop()
        self._client.close()


def _message(resp: httpx.Response) -> str:
    try:
        return resp.json()["error"]["message"]
    except Exception:
        return resp.text[:200]


def wait_for_cloud(backend: HttpLinearBackend, timeout: float = 120.0) -> None:
    """Block until the cloud answers /health (it may still be loading the checkpoint)."""
    deadline = time.monotonic() + timeout
    while not backend.ping():
        if time.monotonic() > deadline:
            raise CloudUnavailable(f"cloud backend at {backend.base_url} not ready after {timeout:.0f}s")
        time.sleep(0.25)
