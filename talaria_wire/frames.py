"""Framed linear calls on a plain TCP socket: the lowest-overhead transport of protocol talaria/1.

A step of the decode loop makes 4L+1 strictly sequential calls, so per-call latency, not
bandwidth, decides its speed. A frame is a 16-byte header and raw little-endian bytes; the
header says everything the receiver needs, so neither side parses anything per call:

    magic 'TLF1' | kind u8 | dtype u8 | op u16 | rows u32 | cols u32 | payload

    HELLO  client -> cloud   payload JSON {"api_key"}; first frame on a connection
    HELLO  cloud -> client   payload JSON {"fingerprint"}                       (accepted)
    CALL   client -> cloud   x~ [rows, cols]; op = index of the op in the manifest's `ops`
    REPLY  cloud -> client   y~ [rows, cols] in the manifest's answer dtype
    ERROR  cloud -> client   payload UTF-8 message; op = HTTP-like status (400, 401, 404, 500)

Bytes-payload frames (HELLO, ERROR) use dtype BYTES with rows = byte length, cols = 1.
One call is in flight per connection; an ERROR for a CALL leaves the connection usable, an
ERROR for a HELLO or a malformed frame is followed by the cloud closing it.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

MAGIC = b"TLF1"
HEADER = struct.Struct("<4sBBHII")
HELLO, CALL, REPLY, ERROR = 1, 2, 3, 4
BYTES = 0
DTYPE_CODES = {torch.float32: 1, torch.float64: 2, torch.int64: 3}  # int64: residues of the pad scheme's ring
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
MAX_PAYLOAD = 1 << 31  # 2 GiB: anything larger is a corrupt header, not a call
HELLO_MAX_BYTES = 4096  # a HELLO carries one small JSON object: anything larger is refused unread
# bytes per element of each tensor dtype code, from torch itself (new codes need no edit here)
ITEMSIZE = {code: torch.empty((), dtype=dtype).element_size() for code, dtype in CODE_DTYPES.items()}


class FrameError(ValueError):
    """A frame that breaks the format; the connection cannot be trusted afterwards."""


class PeerClosed(ConnectionError):
    """The other side closed the connection (at a frame boundary or inside one)."""


def send_frame(sock: socket.socket, kind: int, op: int = 0, tensor: torch.Tensor | None = None,
               payload: bytes = b"") -> None:
    """Send one frame: a 2-D tensor (CALL, REPLY) or raw bytes (HELLO, ERROR)."""
    header, body = encode_frame(kind, op, tensor, payload)
    if len(body) <= 65536:  # one segment for small frames
        sock.sendall(header + body.tobytes())
    else:
        sock.sendall(header)
        sock.sendall(body)


def encode_frame(kind: int, op: int = 0, tensor: torch.Tensor | None = None,
                 payload: bytes = b"") -> tuple[bytes, memoryview]:
    """One frame as (header, body) without sending it: for writers on non-blocking sockets.
    The body views the tensor's memory, so it stays valid while the view is held."""
    if tensor is not None:
        t = tensor.detach().to("cpu").contiguous()
        if t.dim() != 2 or t.dtype not in DTYPE_CODES:
            raise FrameError(f"frames carry 2-D float32/float64/int64 tensors, got {t.dtype} {list(t.shape)}")
        header = HEADER.pack(MAGIC, kind, DTYPE_CODES[t.dtype], op, t.shape[0], t.shape[1])
        body = memoryview(t.numpy()).cast("B") if t.numel() else memoryview(b"")
    else:
        header = HEADER.pack(MAGIC, kind, BYTES, op, len(payload), 1)
        body = memoryview(payload)
    return header, body


@dataclass(frozen=True)
class FrameHeader:
    kind: int
    dtype_code: int  # BYTES or a key of CODE_DTYPES (checked by decode_header)
    op: int
    rows: int
    cols: int

    @property
    def dtype(self) -> torch.dtype | None:
        return CODE_DTYPES.get(self.dtype_code)

    @property
    def payload_size(self) -> int:
        if self.dtype_code == BYTES:
            return self.rows
        return self.rows * self.cols * ITEMSIZE[self.dtype_code]


def decode_header(raw: bytes | bytearray) -> FrameHeader:
    """16 header bytes -> FrameHeader; FrameError for a wrong magic or an unknown dtype code."""
    magic, kind, dtype_code, op, rows, cols = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {bytes(magic)!r}; is this a talaria frame socket?")
    if dtype_code != BYTES and dtype_code not in CODE_DTYPES:
        raise FrameError(f"unknown frame dtype code {dtype_code}")
    return FrameHeader(kind, dtype_code, op, rows, cols)


def max_payload_check(limit: int = MAX_PAYLOAD) -> Callable[[FrameHeader], None]:
    """The default header check: any frame whose payload fits in `limit` bytes."""
    def check(header: FrameHeader) -> None:
        if header.payload_size > limit:
            raise FrameError(f"frame payload of {header.payload_size} bytes ({header.rows} x {header.cols}) "
                             f"is over the limit of {limit}")
    return check


class FrameReader:
    """Reads frames from a socket as their bytes arrive; one reader per connection.

    `read(sock)` returns a complete frame, or None when a non-blocking socket has no more bytes
    for now (call again when it is readable; what arrived is kept). On a blocking socket it
    returns only once the frame is complete, and `deadline` (time.monotonic()) bounds the whole
    frame, not each recv. `check(header)` runs before any payload buffer exists and raises
    FrameError for a frame the reader must not accept (size limits, kinds).

    grow: allocate the payload buffer as bytes arrive (at most twice what arrived, or 64 KiB),
    so a peer that claims a large frame and then stalls holds only what it sent. Off: one
    buffer of the checked size at once (a peer we trust: the proxy reading the cloud's replies).
    """

    INITIAL_BUFFER = 1 << 16

    def __init__(self, check: Callable[[FrameHeader], None] | None = None, grow: bool = False):
        self.check = check or max_payload_check()
        self.grow = grow
        self.started: float | None = None  # time.monotonic() at the current frame's first byte
        self._reset()

    def _reset(self) -> None:
        self._head = bytearray(HEADER.size)
        self._got = 0  # bytes of the header, then of the payload, read so far
        self._header: FrameHeader | None = None
        self._buf = bytearray()
        self.started = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def read(self, sock: socket.socket, deadline: float | None = None) -> tuple[int, int, torch.Tensor | bytes] | None:
        while True:
            if self._header is None:
                view, want = memoryview(self._head)[self._got:], HEADER.size - self._got
            else:
                size = self._header.payload_size
                if self._got == size:
                    return self._finish()
                if self._got == len(self._buf):  # full: grow towards the frame's size
                    self._buf = self._grown(size)
                view, want = memoryview(self._buf)[self._got:], len(self._buf) - self._got
            k = self._recv(sock, view, want, deadline)
            if k is None:
                return None
            if self.started is None:
                self.started = time.monotonic()
            self._got += k
            if self._header is None and self._got == HEADER.size:
                header = decode_header(self._head)
                self.check(header)
                self._header, self._got = header, 0
                if not self.grow:
                    self._buf = bytearray(header.payload_size)

    def _grown(self, size: int) -> bytearray:
        new = bytearray(min(size, max(self.INITIAL_BUFFER, 2 * len(self._buf))))
        new[:self._got] = self._buf[:self._got]
        return new

    @staticmethod
    def _recv(sock: socket.socket, view: memoryview, want: int, deadline: float | None) -> int | None:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the frame did not arrive in time")
            sock.settimeout(remaining)
        try:
            k = sock.recv_into(view, want)
        except (BlockingIOError, ssl.SSLWantReadError):
            return None
        except socket.timeout:  # a blocking socket whose (total) time ran out
            raise TimeoutError("the frame did not arrive in time") from None
        if k == 0:
            raise PeerClosed("connection closed by peer")
        return k

    def _finish(self) -> tuple[int, int, torch.Tensor | bytes]:
        header, buf = self._header, self._buf
        self._reset()
        if header.dtype_code == BYTES:
            return header.kind, header.op, bytes(buf)
        if header.payload_size == 0:
            return header.kind, header.op, torch.empty(header.rows, header.cols, dtype=header.dtype)
        return header.kind, header.op, torch.frombuffer(buf, dtype=header.dtype).view(header.rows, header.cols)


def recv_frame(sock: socket.socket, check: Callable[[FrameHeader], None] | None = None,
               deadline: float | None = None) -> tuple[int, int, torch.Tensor | bytes]:
    """Read one frame from a blocking socket -> (kind, op, tensor or bytes).

    Raises FrameError, PeerClosed, or TimeoutError when `deadline` (time.monotonic()) passes."""
    frame = FrameReader(check).read(sock, deadline)
    if frame is None:
        raise BlockingIOError("recv_frame needs a blocking socket; use FrameReader")
    return frame


def send_json(sock: socket.socket, kind: int, obj: dict, op: int = 0) -> None:
    send_frame(sock, kind, op, payload=json.dumps(obj).encode())


def configure(sock: socket.socket) -> None:
    """No Nagle delay: every frame is a complete message that the peer is waiting for."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
