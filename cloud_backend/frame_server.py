"""The cloud's framed linear-call socket (see talaria_wire/frames.py for the format).

A connection's own thread does the TLS and HELLO handshakes, then hands the socket to the
process's compute thread (cloud_backend/compute.py), which reads each CALL, runs the GEMM and
writes the REPLY inline: no event loop and no thread hop between the socket and the GEMM, so a
call costs its bytes plus a loopback or network round trip, and all GEMMs share one OpenMP team.
Runs beside the REST app in the same process and shares its service.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import socketserver
import ssl
import threading

from cloud_backend.compute import ComputeThread
from cloud_backend.service import LinearCallError, MaskedLinearService
from talaria_wire.frames import CALL, ERROR, HELLO, REPLY, FrameError, PeerClosed, configure, recv_frame, send_frame, send_json

log = logging.getLogger(__name__)

# once a call's first bytes are readable, the rest must follow within this time: the compute
# thread serves every connection, so a peer that stalls mid-frame is cut off
CALL_READ_TIMEOUT_S = 30.0
HANDSHAKE_TIMEOUT_S = 10.0  # TLS and HELLO, in the connection's own thread


def _try_error(sock: socket.socket, status: int, message: str) -> None:
    try:
        send_frame(sock, ERROR, status, payload=message.encode())
    except OSError:
        pass


class _Handler(socketserver.BaseRequestHandler):
    server: "FrameServer"

    def handle(self) -> None:
        sock: socket.socket = self.request
        configure(sock)
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        ready = False
        try:
            if self.server.tls is not None:  # handshake here, in the connection's thread, not in accept()
                sock = self.server.tls.wrap_socket(sock, server_side=True)  # detaches the raw socket
            ready = self._hello(sock)
        except PeerClosed:
            pass
        except FrameError as exc:
            log.warning("frame socket %s: %s; closing", self.client_address, exc)
            _try_error(sock, 400, str(exc))
        except OSError as exc:  # ssl.SSLError included: a client that does not speak TLS
            log.info("frame socket %s: %s", self.client_address, exc)
        if not ready:
            sock.close()
            return
        sock.settimeout(CALL_READ_TIMEOUT_S)
        self.server.adopted(self.request)
        self.server.compute.adopt(sock, self.server.serve_call)

    def _hello(self, sock: socket.socket) -> bool:
        kind, _, payload = recv_frame(sock)
        if kind != HELLO or not isinstance(payload, bytes):
            _try_error(sock, 400, "the first frame must be HELLO")
            return False
        try:
            key = json.loads(payload or b"{}").get("api_key") or ""
        except (ValueError, AttributeError):
            _try_error(sock, 400, "HELLO payload must be a JSON object")
            return False
        expected = self.server.api_key
        if expected and not hmac.compare_digest(key.encode(), expected.encode()):
            _try_error(sock, 401, "missing or invalid api key")
            return False
        send_json(sock, HELLO, {"fingerprint": self.server.service.manifest.fingerprint})
        return True



class FrameServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: MaskedLinearService, host: str, port: int, api_key: str | None = None,
                 tls: ssl.SSLContext | None = None, compute: ComputeThread | None = None):
        self.service = service
        self._own_compute = compute is None
        self.compute = compute or ComputeThread().start()
        self._adopted: set[int] = set()  # ids of accepted sockets now served by the compute thread
        self._adopted_lock = threading.Lock()
        self.api_key = api_key
        self.tls = tls  # server-side context: frames travel inside TLS
        self.op_names = [op.name for op in service.manifest.ops]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    def adopted(self, request: socket.socket) -> None:
        with self._adopted_lock:
            self._adopted.add(id(request))

    def shutdown_request(self, request) -> None:
        with self._adopted_lock:
            if id(request) in self._adopted:  # the compute thread owns it now
                self._adopted.discard(id(request))
                return
        super().shutdown_request(request)

    def serve_call(self, sock: socket.socket) -> bool:
        """Answer the CALL waiting on sock (on the compute thread); False: close the connection."""
        try:
            kind, op, x = recv_frame(sock)
        except PeerClosed:
            return False
        except FrameError as exc:
            log.warning("frame socket: %s; closing", exc)
            _try_error(sock, 400, str(exc))
            return False
        except OSError as exc:  # a timeout mid-frame, a reset, a TLS error
            log.info("frame socket: %s; closing", exc)
            return False
        try:
            if kind != CALL or isinstance(x, bytes):
                _try_error(sock, 400, f"expected a CALL frame with a tensor, got kind {kind}")
                return False
            if op >= len(self.op_names):
                send_frame(sock, ERROR, 404, payload=f"unknown op index {op} (the manifest has {len(self.op_names)})".encode())
                return True
            try:
                y = self.service.linear(self.op_names[op], x)
            except LinearCallError as exc:
                send_frame(sock, ERROR, exc.status, payload=str(exc).encode())
                return True
            except Exception as exc:  # a bug or device fault: answer, keep serving
                log.exception("frame call %s failed", self.op_names[op])
                send_frame(sock, ERROR, 500, payload=f"internal error: {type(exc).__name__}".encode())
                return True
            send_frame(sock, REPLY, op, tensor=y)
            return True
        except OSError as exc:  # the peer went away while we answered
            log.info("frame socket: %s; closing", exc)
            return False

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
        if self._own_compute:
            self.compute.stop()
