"""The proxy's end of the framed linear-call socket (format: talaria_wire/frames.py).

`FrameLink` holds one TCP connection, opened on first use and after any fault. It asks the
cloud's /health for the frame port each time it connects, so a cloud that restarted on another
port is found again, and it checks the HELLO fingerprint against the manifest the proxy loaded.
`send` and `receive` are separate so the CVM can compute while the cloud does the GEMM.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable

import torch

from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_wire.frames import CALL, ERROR, HELLO, REPLY, FrameError, PeerClosed, configure, recv_frame, send_frame, send_json


class FrameLink:
    def __init__(self, locate: Callable[[], tuple[str, int]], api_key: str | None,
                 check_fingerprint: Callable[[str | None], None], *, connect_timeout: float, timeout: float,
                 tls: ssl.SSLContext | None = None):
        self._locate = locate  # -> (host, port) of the frame socket
        self._tls = tls  # client context (the cloud's base URL is https): frames travel inside TLS
        self._api_key = api_key
        self._check_fingerprint = check_fingerprint
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._where = "cloud frame socket"

    def _connect(self) -> socket.socket:
        host, port = self._locate()
        self._where = f"cloud frame socket {host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=self._connect_timeout)
        except OSError as exc:
            raise CloudUnavailable(f"{self._where} is unreachable: {exc}") from exc
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise CloudRejected(f"{self._where}: the cloud's TLS certificate is not trusted: {exc.verify_message}; "
                                    "set cloud_ca_file to the CA that signed it") from exc
            except OSError as exc:  # ssl.SSLError included
                sock.close()
                raise CloudUnavailable(f"{self._where}: TLS handshake failed ({exc}); does the cloud serve TLS "
                                       "(ssl_certfile) on its frame port?") from exc
        try:
            configure(sock)
            send_json(sock, HELLO, {"api_key": self._api_key or ""})
            kind, status, payload = recv_frame(sock)
        except (OSError, FrameError) as exc:
            sock.close()
            raise CloudUnavailable(f"{self._where} failed the handshake: {exc}") from exc
        if kind == ERROR:
            sock.close()
            message = payload.decode(errors="replace") if isinstance(payload, bytes) else ""
            error = CloudRejected if status < 500 else CloudUnavailable
            raise error(f"cloud backend refused the frame socket ({status}): {message}; check the cloud API key")
        if kind != HELLO or not isinstance(payload, bytes):
            sock.close()
            raise CloudUnavailable(f"{self._where} answered the handshake with frame kind {kind}")
        try:
            self._check_fingerprint(json.loads(payload).get("fingerprint"))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self._timeout)
        return sock

    def send(self, op_index: int, x: torch.Tensor) -> None:
        if self._sock is None:
            self._sock = self._connect()
        try:
            send_frame(self._sock, CALL, op_index, tensor=x)
        except OSError as exc:
            self.drop()
            raise CloudUnavailable(f"{self._where} is unreachable: {exc}") from exc

    def receive(self, op: str) -> torch.Tensor:
        """The answer to the call just sent. A timeout or fault drops the connection, so a late
        answer can never be read as the next call's."""
        if self._sock is None:
            raise CloudUnavailable(f"{self._where}: no call in flight for {op}")
        try:
            kind, status, payload = recv_frame(self._sock)
        except TimeoutError as exc:
            self.drop()
            raise CloudUnavailable(f"{self._where} timed out on {op}") from exc
        except (OSError, PeerClosed) as exc:
            self.drop()
            raise CloudUnavailable(f"{self._where} is unreachable: {exc}") from exc
        except FrameError as exc:
            self.drop()
            raise CloudRejected(f"cloud sent a malformed answer for {op}: {exc}") from exc
        if kind == ERROR:
            message = payload.decode(errors="replace") if isinstance(payload, bytes) else ""
            raise (CloudRejected if status < 500 else CloudUnavailable)(
                f"cloud backend rejected {op} ({status}): {message}")
        if kind != REPLY or isinstance(payload, bytes):
            self.drop()
            raise CloudRejected(f"cloud sent frame kind {kind} instead of the answer for {op}")
        return payload

    def drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
