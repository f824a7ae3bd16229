"""The cloud's framed linear-call socket (see talaria_wire/frames.py for the format).

One thread per connection reads a CALL, runs the GEMM and writes the REPLY: no event loop and
no thread hop between the socket and the GEMM, so a call costs its bytes plus a loopback or
network round trip. Runs beside the REST app in the same process and shares its service.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import socketserver
import ssl
import threading

from cloud_backend.service import LinearCallError, MaskedLinearService
from talaria_wire.frames import CALL, ERROR, HELLO, REPLY, FrameError, PeerClosed, configure, recv_frame, send_frame, send_json

log = logging.getLogger(__name__)


class _Handler(socketserver.BaseRequestHandler):
    server: "FrameServer"

    def handle(self) -> None:
        sock: socket.socket = self.request
        configure(sock)
        self._tls_sock: ssl.SSLSocket | None = None
        try:
            self._session(sock)
        finally:
            if self._tls_sock is not None:  # the raw socket was detached into it
                self._tls_sock.close()

    def _session(self, sock: socket.socket) -> None:
        try:
            if self.server.tls is not None:  # handshake here, in the connection's thread, not in accept()
                sock.settimeout(10.0)
                sock = self._tls_sock = self.server.tls.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
            if not self._hello(sock):
                return
            self._serve(sock)
        except PeerClosed:
            pass
        except FrameError as exc:
            log.warning("frame socket %s: %s; closing", self.client_address, exc)
            self._try_error(sock, 400, str(exc))
        except OSError as exc:  # ssl.SSLError included: a client that does not speak TLS
            log.info("frame socket %s: %s", self.client_address, exc)

    def _hello(self, sock: socket.socket) -> bool:
        kind, _, payload = recv_frame(sock)
        if kind != HELLO or not isinstance(payload, bytes):
            self._try_error(sock, 400, "the first frame must be HELLO")
            return False
        try:
            key = json.loads(payload or b"{}").get("api_key") or ""
        except (ValueError, AttributeError):
            self._try_error(sock, 400, "HELLO payload must be a JSON object")
            return False
        expected = self.server.api_key
        if expected and not hmac.compare_digest(key.encode(), expected.encode()):
            self._try_error(sock, 401, "missing or invalid api key")
            return False
        send_json(sock, HELLO, {"fingerprint": self.server.service.manifest.fingerprint})
        return True

    def _serve(self, sock: socket.socket) -> None:
        service, names = self.server.service, self.server.op_names
        while True:
            kind, op, x = recv_frame(sock)
            if kind != CALL or isinstance(x, bytes):
                raise FrameError(f"expected a CALL frame with a tensor, got kind {kind}")
            if op >= len(names):
                send_frame(sock, ERROR, 404, payload=f"unknown op index {op} (the manifest has {len(names)})".encode())
                continue
            try:
                y = service.linear(names[op], x)
            except LinearCallError as exc:
                send_frame(sock, ERROR, exc.status, payload=str(exc).encode())
                continue
            except Exception as exc:  # a bug or device fault: answer, keep serving
                log.exception("frame call %s failed", names[op])
                send_frame(sock, ERROR, 500, payload=f"internal error: {type(exc).__name__}".encode())
                continue
            send_frame(sock, REPLY, op, tensor=y)

    @staticmethod
    def _try_error(sock: socket.socket, status: int, message: str) -> None:
        try:
            send_frame(sock, ERROR, status, payload=message.encode())
        except OSError:
            pass


class FrameServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: MaskedLinearService, host: str, port: int, api_key: str | None = None,
                 tls: ssl.SSLContext | None = None):
        self.service = service
        self.api_key = api_key
        self.tls = tls  # server-side context: frames travel inside TLS
        self.op_names = [op.name for op in service.manifest.ops]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> "FrameServer":
        self._thread = threading.Thread(target=self.serve_forever, name="talaria-frames", daemon=True)
        self._thread.start()
        log.info("framed linear-call socket on port %d", self.port)
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
