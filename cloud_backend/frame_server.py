"""The cloud's framed linear-call socket (see talaria_wire/frames.py for the format).

A connection's own thread does the TLS and HELLO handshakes, within one total deadline and with
a HELLO of a few KiB at most (nothing larger is read before the key is checked), then hands the
socket to the process's compute thread (cloud_backend/compute.py) as a `FrameConnection`. The
compute thread never waits on it: it takes the bytes that have arrived, runs the GEMM inline once
a CALL is complete and writes what the socket accepts. No event loop and no thread hop between
the socket and the GEMM, so a call costs its bytes plus a round trip, and all GEMMs share one
OpenMP team; a peer that stalls mid-frame only holds what it sent, until its deadline.

Limits, checked on the 16-byte header before any payload buffer exists: a CALL has at most
`max_rows` rows and at most the widest op's d_in columns (413 beyond, then the connection
closes: its payload is never read). Runs beside the REST app in the same process and shares
its service.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import socketserver
import ssl
import threading
import time

from cloud_backend.compute import ComputeThread
from cloud_backend.limits import CallLimits
from cloud_backend.service import LinearCallError, MaskedLinearService
from talaria_wire.frames import (BYTES, CALL, ERROR, HELLO, HELLO_MAX_BYTES, REPLY, FrameError, FrameHeader,
                                 FrameReader, PeerClosed, configure, encode_frame, recv_frame, send_frame, send_json)

log = logging.getLogger(__name__)

# a frame (CALL in, REPLY out) must be complete within this time of its first byte: a deadline
# for the whole frame, not for each byte
CALL_READ_TIMEOUT_S = 30.0
HANDSHAKE_TIMEOUT_S = 10.0  # TLS and HELLO together, in the connection's own thread
MAX_HANDSHAKES = 64  # connections in their handshake at once; more are closed at once


class CallTooLarge(FrameError):
    """A CALL header over the limits: answered 413, then the connection closes unread."""


def _try_error(sock: socket.socket, status: int, message: str) -> None:
    try:
        send_frame(sock, ERROR, status, payload=message.encode())
    except OSError:
        pass


def _check_hello(header: FrameHeader) -> None:
    if header.kind != HELLO or header.dtype_code != BYTES:
        raise FrameError("the first frame must be HELLO")
    if header.rows > HELLO_MAX_BYTES:
        raise FrameError(f"a HELLO payload is at most {HELLO_MAX_BYTES} bytes, this one claims {header.rows}")


def _tls_handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """do_handshake with one deadline for the whole exchange, not one per message."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the TLS handshake did not finish in time")
        sock.settimeout(remaining)
        try:
            sock.do_handshake()
            return
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue


class _Handler(socketserver.BaseRequestHandler):
    server: "FrameServer"

    def handle(self) -> None:
        if not self.server.handshakes.acquire(blocking=False):
            log.warning("frame socket: %d handshakes in progress; refusing %s", MAX_HANDSHAKES, self.client_address)
            return  # socketserver closes the request
        try:
            sock = self._handshake()
        finally:
            self.server.handshakes.release()
        if sock is None:
            return
        self.server.adopted(self.request)
        self.server.compute.adopt(FrameConnection(self.server, sock))

    def _handshake(self) -> socket.socket | None:
        sock: socket.socket = self.request
        configure(sock)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        ready = False
        try:
            if self.server.tls is not None:  # handshake here, in the connection's thread, not in accept()
                sock = self.server.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                _tls_handshake(sock, deadline)
            ready = self._hello(sock, deadline)
        except PeerClosed:
            pass
        except FrameError as exc:
            log.warning("frame socket %s: %s; closing", self.client_address, exc)
            _try_error(sock, 400, str(exc))
        except OSError as exc:  # ssl.SSLError and timeouts included: a client that does not speak TLS
            log.info("frame socket %s: %s", self.client_address, exc)
        if not ready:
            sock.close()
            return None
        return sock

    def _hello(self, sock: socket.socket, deadline: float) -> bool:
        kind, _, payload = recv_frame(sock, _check_hello, deadline)
        try:
            hello = json.loads(payload or b"{}")
        except ValueError:
            hello = None
        if not isinstance(hello, dict):
            _try_error(sock, 400, "HELLO payload must be a JSON object")
            return False
        key = hello.get("api_key") or ""
        if not isinstance(key, str):
            _try_error(sock, 400, "HELLO api_key must be a string")
            return False
        expected = self.server.api_key
        if expected and not hmac.compare_digest(key.encode(), expected.encode()):
            _try_error(sock, 401, "missing or invalid api key")
            return False
        send_json(sock, HELLO, {"fingerprint": self.server.service.manifest.fingerprint})
        return True


class FrameConnection:
    """One adopted connection, served on the compute thread without ever blocking on its socket
    (the `Connection` protocol of compute.py): read a CALL as it arrives, answer it, write the
    answer as the socket accepts it. One call at a time: nothing is read while an answer is out."""

    def __init__(self, server: "FrameServer", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.reader = FrameReader(server.check_call, grow=True)
        self._out: list[memoryview] = []  # the answer's unsent parts
        self._out_started: float | None = None
        self._close_after_write = False
        self._draining_since: float | None = None  # refused: discard what still arrives, then close

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    @property
    def deadline(self) -> float | None:
        if self._draining_since is not None:
            return self._draining_since + CALL_READ_TIMEOUT_S
        started = self._out_started if self._out else self.reader.started
        return None if started is None else started + CALL_READ_TIMEOUT_S

    def buffered(self) -> bool:
        pending = getattr(self.sock, "pending", None)
        return pending is not None and self.sock.fileno() >= 0 and pending() > 0

    def readable(self) -> bool:
        if self._draining_since is not None:
            return self._drain()
        try:
            frame = self.reader.read(self.sock)
        except PeerClosed:
            return False
        except CallTooLarge as exc:
            log.warning("frame socket: %s; closing", exc)
            return self._answer(ERROR, 413, payload=str(exc).encode(), close=True)
        except FrameError as exc:
            log.warning("frame socket: %s; closing", exc)
            return self._answer(ERROR, 400, payload=str(exc).encode(), close=True)
        except OSError as exc:  # a reset, a TLS error
            log.info("frame socket: %s; closing", exc)
            return False
        if frame is None:
            return True  # the rest of the frame has not arrived yet
        kind, op, x = frame
        if kind != CALL or isinstance(x, bytes):
            return self._answer(ERROR, 400, payload=f"expected a CALL frame with a tensor, got kind {kind}".encode(),
                                close=True)
        return self._call(op, x)

    def _call(self, op: int, x) -> bool:
        names = self.server.op_names
        if op >= len(names):
            return self._answer(ERROR, 404, payload=f"unknown op index {op} (the manifest has {len(names)})".encode())
        try:
            y = self.server.service.linear(names[op], x)
        except LinearCallError as exc:
            return self._answer(ERROR, exc.status, payload=str(exc).encode())
        except Exception as exc:  # a bug or device fault: answer, keep serving
            log.exception("frame call %s failed", names[op])
            return self._answer(ERROR, 500, payload=f"internal error: {type(exc).__name__}".encode())
        return self._answer(REPLY, op, tensor=y)

    def _answer(self, kind: int, op: int, *, tensor=None, payload: bytes = b"", close: bool = False) -> bool:
        header, body = encode_frame(kind, op, tensor, payload)
        self._out = [memoryview(header), body] if len(body) else [memoryview(header)]
        self._out_started = time.monotonic()
        self._close_after_write = close
        return self.writable()

    def writable(self) -> bool:
        """Send what the socket takes now; False once the connection should end."""
        try:
            while self._out:
                part = self._out[0]
                try:
                    sent = self.sock.send(part)
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    return True  # the compute thread calls again when the socket is writable
                if sent < len(part):
                    self._out[0] = part[sent:]
                else:
                    self._out.pop(0)
        except OSError as exc:  # the peer went away while we answered
            log.info("frame socket: %s; closing", exc)
            return False
        if self._close_after_write:
            return self._start_draining()
        return True

    def _start_draining(self) -> bool:
        # Closing over unread bytes makes the kernel send a reset, which can destroy the error
        # frame before the peer reads it: end our side, then discard its rest until it closes.
        self._close_after_write = False
        self._draining_since = time.monotonic()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):  # already gone; a TLS socket mid-record
            return False
        return self._drain()

    def _drain(self) -> bool:
        try:
            for _ in range(16):  # at most 1 MiB per wake-up: others are served in between
                if not self.sock.recv(1 << 16):
                    return False
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        return True


class FrameServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: MaskedLinearService, host: str, port: int, api_key: str | None = None,
                 tls: ssl.SSLContext | None = None, compute: ComputeThread | None = None, max_rows: int | None = None):
        self.service = service
        self._own_compute = compute is None
        self.compute = compute or ComputeThread().start()
        self._adopted: set[int] = set()  # ids of accepted sockets now served by the compute thread
        self._adopted_lock = threading.Lock()
        self.handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self.api_key = api_key
        self.tls = tls  # server-side context: frames travel inside TLS
        self.op_names = [op.name for op in service.manifest.ops]
        limits = CallLimits.of(service, max_rows)  # max_rows: the service's unless given
        self.max_rows, self.max_cols, self.max_call_bytes = limits.max_rows, limits.max_cols, limits.payload_bytes()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    def check_call(self, header: FrameHeader) -> None:
        """Before a CALL's payload is read: kind and size within what the manifest's ops allow."""
        if header.kind != CALL or header.dtype_code == BYTES:
            raise FrameError(f"expected a CALL frame with a tensor, got kind {header.kind}")
        if header.rows > self.max_rows:
            raise CallTooLarge(f"a call has at most {self.max_rows} rows (max_rows), this one {header.rows}")
        if header.cols > self.max_cols or header.payload_size > self.max_call_bytes:
            raise CallTooLarge(f"a call of {header.rows} x {header.cols} is wider than any op (d_in <= {self.max_cols})")

    def adopted(self, request: socket.socket) -> None:
        with self._adopted_lock:
            self._adopted.add(id(request))

    def shutdown_request(self, request) -> None:
        with self._adopted_lock:
            if id(request) in self._adopted:  # the compute thread owns it now
                self._adopted.discard(id(request))
                return
        super().shutdown_request(request)

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
