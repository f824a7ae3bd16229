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
import struct

import torch

MAGIC = b"TLF1"
HEADER = struct.Struct("<4sBBHII")
HELLO, CALL, REPLY, ERROR = 1, 2, 3, 4
BYTES = 0
DTYPE_CODES = {torch.float32: 1, torch.float64: 2}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
MAX_PAYLOAD = 1 << 31  # 2 GiB: anything larger is a corrupt header, not a call


class FrameError(ValueError):
    """A frame that breaks the format; the connection cannot be trusted afterwards."""


class PeerClosed(ConnectionError):
    """The other side closed the connection (at a frame boundary or inside one)."""


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise PeerClosed("connection closed by peer")
        got += k
    return buf


def send_frame(sock: socket.socket, kind: int, op: int = 0, tensor: torch.Tensor | None = None,
               payload: bytes = b"") -> None:
    """Send one frame: a 2-D tensor (CALL, REPLY) or raw bytes (HELLO, ERROR)."""
    if tensor is not None:
        t = tensor.detach().to("cpu").contiguous()
        if t.dim() != 2 or t.dtype not in DTYPE_CODES:
            raise FrameError(f"frames carry 2-D float32/float64 tensors, got {t.dtype} {list(t.shape)}")
        header = HEADER.pack(MAGIC, kind, DTYPE_CODES[t.dtype], op, t.shape[0], t.shape[1])
        body = memoryview(t.numpy()).cast("B") if t.numel() else memoryview(b"")
    else:
        header = HEADER.pack(MAGIC, kind, BYTES, op, len(payload), 1)
        body = memoryview(payload)
    if len(body) <= 65536:  # one segment for small frames
        sock.sendall(header + body.tobytes())
    else:
        sock.sendall(header)
        sock.sendall(body)


def recv_frame(sock: socket.socket) -> tuple[int, int, torch.Tensor | bytes]:
    """Read one frame -> (kind, op, tensor or bytes). Raises FrameError or PeerClosed."""
    magic, kind, dtype_code, op, rows, cols = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {bytes(magic)!r}; is this a talaria frame socket?")
    if dtype_code == BYTES:
        if rows > MAX_PAYLOAD:
            raise FrameError(f"frame payload of {rows} bytes is over the limit")
        return kind, op, bytes(_recv_exact(sock, rows))
    dtype = CODE_DTYPES.get(dtype_code)
    if dtype is None:
        raise FrameError(f"unknown frame dtype code {dtype_code}")
    size = rows * cols * (8 if dtype == torch.float64 else 4)
    if size > MAX_PAYLOAD:
        raise FrameError(f"frame of {rows} x {cols} is over the limit")
    if size == 0:
        return kind, op, torch.empty(rows, cols, dtype=dtype)
    return kind, op, torch.frombuffer(_recv_exact(sock, size), dtype=dtype).view(rows, cols)


def send_json(sock: socket.socket, kind: int, obj: dict, op: int = 0) -> None:
    send_frame(sock, kind, op, payload=json.dumps(obj).encode())


def configure(sock: socket.socket) -> None:
    """No Nagle delay: every frame is a complete message that the peer is waiting for."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
