"""Where a Talaria step spends its time: the proxy's engine run in this process against the real cloud.

`build_runtime` over a timing `HttpLinearBackend` (same code path as the proxy) runs prefill and
greedy decode steps for 1 and 8 sequences; the step wall time splits into

    cloud GEMM   x-talaria-gemm-ms of every call (threadpool hop + checks + x~ W on the cloud)
    transport    round trip minus cloud GEMM: encode/decode on both sides, HTTP, FastAPI, loopback
    masking      MaskedLinearClient.stats.mask_seconds (x + M_pvt M_pub, y~ - M_pvt R_pub)
    attention    the per-sequence attention loop incl. KV-cache writes (timed by wrapping them)
    sampling     the engine's greedy Sampler on each sequence's logits (runs between steps)
    other CVM    the rest of forward: embedding, norms, RoPE, SiLU, residuals, Python

plus micro-measurements that price the obvious optimisations (batched attention, a lean transport,
connection reuse). Run with one torch thread, like the proxy process.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields

from talaria_proxy.linear_backend import HttpLinearBackend
from talaria_wire import decode_tensors, encode_tensors
from talaria_wire.tensors import MEDIA_TYPE

from benchmarks.common import load_average, median, median_of_runs


@dataclass
class Counters:
    calls: int = 0
    encode_s: float = 0.0  # client-side serialisation of x~
    decode_s: float = 0.0  # client-side parsing of y~
    request_s: float = 0.0  # HTTP request until the body is read
    gemm_s: float = 0.0  # sum of x-talaria-gemm-ms
    body_bytes: int = 0
    header_bytes: int = 0  # HTTP request + response head (approx.: header lines)
    attention_s: float = 0.0
    sampling_s: float = 0.0


class TimedHttpBackend(HttpLinearBackend):
    """HttpLinearBackend that also records the cloud's GEMM time and the exact bytes per call."""

    def __init__(self, base_url: str):
        super().__init__(base_url, timeout=600.0)
        self.counters = Counters()

    def linear(self, op, x):
        c = self.counters
        t0 = time.perf_counter()
        body = encode_tensors({"x": x})
        t1 = time.perf_counter()
        resp = self._request("POST", f"/v1/linear/{op}", content=body, headers={"content-type": MEDIA_TYPE})
        t2 = time.perf_counter()
        y = decode_tensors(resp.content)["y"]
        t3 = time.perf_counter()
        c.calls += 1
        c.encode_s += t1 - t0
        c.request_s += t2 - t1
        c.decode_s += t3 - t2
        c.gemm_s += float(resp.headers.get("x-talaria-gemm-ms", "nan")) / 1e3
        c.body_bytes += len(body) + len(resp.content)
        heads = list(resp.request.headers.raw) + list(resp.headers.raw)
        c.header_bytes += 64 + sum(len(k) + len(v) + 4 for k, v in heads)  # + request/status lines
        return y


@contextlib.contextmanager
def attention_timer(counters: Counters):
    """Time the model's attention calls and KV-cache writes by wrapping them (restored on exit)."""
    import talaria_proxy.model as model_mod
    from talaria_proxy.kv_cache import KVCache

    orig_attn, orig_write = model_mod.attention, KVCache.write

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                counters.attention_s += time.perf_counter() - t0
        return wrapper

    model_mod.attention, KVCache.write = timed(orig_attn), timed(orig_write)
    try:
        yield
    finally:
        model_mod.attention, KVCache.write = orig_attn, orig_write


def split_step(wall_s: float, c: Counters, cloud_s: float, mask_s: float, steps: int) -> dict[str, float]:
    """Per-step milliseconds of each component; `wall_s` covers forward + sampling."""
    n = max(steps, 1)
    transport = cloud_s - c.gemm_s
    other = wall_s - cloud_s - mask_s - c.attention_s - c.sampling_s
    return {
        "total_ms": wall_s / n * 1e3,
        "cloud_gemm_ms": c.gemm_s / n * 1e3,
        "transport_ms": transport / n * 1e3,
        "client_serialise_ms": (c.encode_s + c.decode_s) / n * 1e3,
        "masking_ms": mask_s / n * 1e3,
        "attention_ms": c.attention_s / n * 1e3,
        "sampling_ms": c.sampling_s / n * 1e3,
        "other_cvm_ms": other / n * 1e3,
        "calls_per_step": c.calls / n,
        "transport_ms_per_call": transport / max(c.calls, 1) * 1e3,
        "gemm_ms_per_call": c.gemm_s / max(c.calls, 1) * 1e3,
        "wire_bytes_per_step": (c.body_bytes + c.header_bytes) / n,
        "payload_bytes_per_step": c.body_bytes / n,
    }


def _reset(rt, backend) -> None:
    rt.linear.stats.reset()
    for f in fields(Counters):
        setattr(backend.counters, f.name, 0 if f.type == "int" else 0.0)


def _steps(rt, backend, prompts, decode_steps: int) -> tuple[dict, list[dict]]:
    """One prefill step, then `decode_steps` greedy decode steps; the split of each step."""
    from talaria_proxy.model import SeqChunk
    from talaria_proxy.sampling import Sampler, SamplingParams

    model, c, s = rt.model, backend.counters, rt.linear.stats
    caches = [model.new_cache() for _ in prompts]
    samplers = [Sampler(SamplingParams(max_tokens=10**6, temperature=0), model.arch.vocab_size) for _ in prompts]

    def step(chunks) -> tuple[list[int], dict]:
        _reset(rt, backend)
        t0 = time.perf_counter()
        logits = model.forward(chunks)  # [B, V]
        t1 = time.perf_counter()
        toks = [sm.sample(row).token_id for sm, row in zip(samplers, logits)]
        t2 = time.perf_counter()
        c.sampling_s += t2 - t1
        return toks, split_step(t2 - t0, c, s.cloud_seconds, s.mask_seconds, 1)

    tokens, prefill = step([SeqChunk(cache, p, 0, True) for cache, p in zip(caches, prompts)])
    decode = []
    for i in range(decode_steps):
        tokens, split = step([SeqChunk(cache, [t], len(p) + i, True) for cache, p, t in zip(caches, prompts, tokens)])
        decode.append(split)
    return prefill, decode


def profile_engine(cloud_url: str, prompts: list[list[int]], decode_steps: int, batches=(1, 8), repeats: int = 3,
                   say=print, label: str = "") -> dict:
    """{'batch=B': {'prefill': split, 'decode': split}}: component-wise medians over all steps of all
    repeats (robust to load spikes of other jobs; the medians need not add up to the median total)."""
    from talaria_proxy.runtime import build_runtime

    backend = TimedHttpBackend(cloud_url)
    out: dict = {}
    try:
        rt = build_runtime(backend, "remo")
        out["wire_dtype"] = rt.manifest.wire_dtype
        with attention_timer(backend.counters):
            for b in batches:
                _steps(rt, backend, prompts[:b], 2)  # warm-up
                prefills, decodes = [], []
                for _ in range(repeats):
                    prefill, decode = _steps(rt, backend, prompts[:b], decode_steps)
                    prefills.append(prefill)
                    decodes += decode
                d = median_of_runs(decodes)
                d.update(load_avg=load_average(), steps=len(decodes))
                out[f"batch={b}"] = {"prefill": median_of_runs(prefills), "decode": d}
                say(f"  profile{label} batch={b}: {d['total_ms']:.1f} ms/step = GEMM {d['cloud_gemm_ms']:.1f}"
                    f" + transport {d['transport_ms']:.1f} + mask {d['masking_ms']:.1f}"
                    f" + attention {d['attention_ms']:.1f} + sampling {d['sampling_ms']:.1f}"
                    f" + other {d['other_cvm_ms']:.1f} (medians; load {d['load_avg']:.1f})")
        out["arch"] = rt.manifest.arch.model_dump()
    finally:
        backend.close()
    return out


# -- pricing the optimisations ------------------------------------------------------------------
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
