"""`websocket`: each linear call as one binary message on one WebSocket (/v1/linear-ws)."""

from __future__ import annotations

import json
import threading

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from talaria_proxy.cloud_session import FINGERPRINT_HEADER
from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_proxy.transports.base import LinearTransport, PendingCall, register
from talaria_wire import WireFormatError, decode_tensors, encode_tensors


@register
class WebSocketTransport(LinearTransport):
    name = "websocket"

    def __init__(self, session):
        self.session = session
        self._ws: ClientConnection | None = None
        self._lock = threading.Lock()  # one call in flight per socket

    def _socket(self) -> ClientConnection:
        s = self.session
        if self._ws is None:
            url = "ws" + s.base_url[len("http"):] + "/v1/linear-ws"
            try:
                ws = connect(url, additional_headers=s.headers, open_timeout=s.connect_timeout, max_size=None,
                             compression=None, legacy=True, ssl=s.tls,
                             close_timeout=0.5)  # a hung cloud must not hold up the error
            except InvalidStatus as exc:
                status = exc.response.status_code
                raise (CloudRejected if status < 500 else CloudUnavailable)(
                    f"cloud backend refused the linear socket ({status}); check the cloud API key") from exc
            except (OSError, TimeoutError, WebSocketException) as exc:
                raise CloudUnavailable(f"cloud backend at {s.base_url} is unreachable: {exc}") from exc
            s.check_fingerprint(ws.response.headers.get(FINGERPRINT_HEADER))
            self._ws = ws
        return self._ws

    def _drop(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def begin(self, op, tensor):
        self._lock.acquire()  # released by the PendingCall
        try:
            ws = self._socket()
            try:
                ws.send(encode_tensors({"x": tensor}, metadata={"op": op}))
            except (OSError, WebSocketException) as exc:
                self._drop()
                raise CloudUnavailable(f"cloud backend at {self.session.base_url} is unreachable: {exc}") from exc
        except BaseException:
            self._lock.release()
            raise
        return PendingCall(lambda: self._receive(op), self._end)

    def _end(self, ok: bool) -> None:
        try:
            if not ok:  # abandoned or failed: an answer may still come, so never reuse the socket
                self._drop()
        finally:
            self._lock.release()

    def _receive(self, op: str):
        where = self.session.base_url
        if self._ws is None:
            raise CloudUnavailable(f"cloud backend at {where}: no call in flight for {op}")
        try:
            reply = self._ws.recv(timeout=self.session.timeout)
        except TimeoutError as exc:
            raise CloudUnavailable(f"cloud backend at {where} timed out on {op}") from exc
        except (OSError, WebSocketException) as exc:
            raise CloudUnavailable(f"cloud backend at {where} is unreachable: {exc}") from exc
        if isinstance(reply, str):
            err = json.loads(reply).get("error", {})
            raise CloudRejected(f"cloud backend rejected {op} ({err.get('status')}): {err.get('message')}")
        try:
            return decode_tensors(reply)["y"]
        except (WireFormatError, KeyError) as exc:
            raise CloudRejected(f"cloud sent a malformed answer for {op}: {exc}") from exc

    def close(self):
        with self._lock:
            self._drop()
