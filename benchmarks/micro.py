"""Micro-measurements that price optimisations the step profile cannot try directly.

    attention_batching     the per-sequence decode attention loop vs one batched SDPA call
    raw_socket_round_trip  a length-prefixed request/reply on one loopback TCP connection between
                           two Python processes: the floor of a lean binary transport
    connection_reuse       an HTTP linear call on a kept-alive connection vs a new one per call
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from talaria_wire import encode_tensors
from talaria_wire.tensors import MEDIA_TYPE

from benchmarks.common import median


def _timeit(fn, n: int, stat=median) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return stat(ts)


def attention_batching(arch: dict, batch: int, seq_len: int, reps: int = 20) -> dict[str, float]:
    """Per decode step (all layers): the per-sequence attention loop vs one batched SDPA call."""
    import torch
    import torch.nn.functional as F

    from talaria_proxy.layers import attention

    H, Hkv, D, L = arch["num_heads"], arch["num_kv_heads"], arch["head_dim"], arch["num_layers"]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 1, H, D, generator=g)  # [B, T=1, H, D]
    k = torch.randn(batch, seq_len, Hkv, D, generator=g)  # [B, S, Hkv, D]
    v = torch.randn(batch, seq_len, Hkv, D, generator=g)

    def loop():
        return [attention(q[i], k[i], v[i], seq_len - 1, None) for i in range(batch)]

    def batched():  # [B, H, 1, D] x [B, H, S, D]: GQA by expanding kv heads
        kh = k.transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        vh = v.transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        return F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, scale=D**-0.5)

    return {"loop_ms_per_step": _timeit(loop, reps) * L * 1e3, "batched_ms_per_step": _timeit(batched, reps) * L * 1e3}


_ECHO_SERVER = r"""
import socket, struct, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def read(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk: sys.exit(0)
        buf += chunk
    return bytes(buf)
while True:
    n, reply = struct.unpack("<QQ", read(16)); read(n); conn.sendall(b"\0" * reply)
"""


def raw_socket_round_trip(request_bytes: int, reply_bytes: int, reps: int = 300) -> float:
    """Mean seconds per round trip of a length-prefixed request/reply over one loopback TCP connection
    to another Python process: the floor of a lean binary protocol (no HTTP, no parsing, no GEMM)."""
    import struct

    proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = struct.pack("<QQ", request_bytes, reply_bytes) + b"\0" * request_bytes

            def once():
                s.sendall(payload)
                got = 0
                while got < reply_bytes:
                    got += len(s.recv(reply_bytes - got))

            return _timeit(once, reps, stat=lambda ts: sum(ts) / len(ts))  # mean: keeps the hiccups
    finally:
        proc.kill()
        proc.wait()


def connection_reuse(cloud_url: str, op: str, d_in: int, dtype, reps: int = 100) -> dict[str, float]:
    """Median ms per one-row call to `op` on a kept-alive connection (what the proxy does) and with
    `connection: close` (a new TCP connection per call), same httpx client otherwise."""
    import httpx
    import torch

    body = encode_tensors({"x": torch.zeros(1, d_in, dtype=dtype)})
    with httpx.Client(base_url=cloud_url) as client:
        def call(close: bool):
            headers = {"content-type": MEDIA_TYPE, **({"connection": "close"} if close else {})}
            client.post(f"/v1/linear/{op}", content=body, headers=headers).raise_for_status()

        kept = _timeit(lambda: call(False), reps)
        fresh = _timeit(lambda: call(True), reps)
    return {"kept_alive_ms": kept * 1e3, "new_connection_ms": fresh * 1e3}
