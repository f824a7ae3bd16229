"""Where a Talaria step spends its time: the proxy's engine run in this process against the real cloud.

`build_runtime` over a `CloudSession` and the production transport (tcp frames, WebSocket or HTTP),
wrapped by `TimingTransport`, runs prefill and greedy decode steps for 1 and 8 sequences, for the
remo scheme or for pad (with its dealer cloud, the pool warmed before each timed prefill). A
step's wall time splits into

    cloud GEMM   sum over the step's calls of the service's time for that (op, rows), measured
                 beforehand on an identical in-process service (`cloud_backend.cli.build_service`,
                 same scheme, precision mode and thread count): GEMM time depends on shapes, not
                 values (pad: the exact ring GEMM). Decode shapes only (1 and 8 rows): prefill steps
                 get their total time, no split
    transport    round trip minus cloud GEMM: serialisation on both sides, framing, the cloud's
                 event loop, loopback TCP and the scheduler wake-ups between the two processes.
                 The round trip runs from sending x~ to holding the answer; the CVM's share of a
                 projected answer is computed in between, so when it outlasts the GEMM the
                 transport figure is an upper bound
    masking      CVM scheme work on the critical path. remo: x + M_pvt M_pub, and finishing the
                 answer (y~ - M_pvt R_pub, or z + share); `cvm share` is the work done while the
                 cloud computes ((x B^T) R_pub of projected answers), not part of the step's sum.
                 pad: encode_rows (fixed point), u = x_bar - r, v + r W_bar, lift, decode_rows
                 (encode and decode also reported on their own), taking pads from the pool
    pad wait     pad: time the pool's takes waited for the dealer (0 with a warm pool)
    attention    the per-sequence attention loop incl. KV-cache writes (timed by wrapping them)
    sampling     the engine's greedy Sampler on each sequence's logits (runs between steps)
    other CVM    the rest of forward: embedding, norms, RoPE, SiLU, residuals, Python

The cloud process's CPU time over all profiled steps (from /proc) separates the cloud's own
overhead from the wire. Run with one torch thread, like the proxy process.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, fields

from talaria_proxy.transports.base import LinearTransport, PendingCall
from talaria_wire import decode_tensors, encode_tensors

from benchmarks.common import load_average, median, median_of_runs

GemmTable = dict[tuple[str, int], dict[str, float]]  # (op, rows) -> gemm_s, serialise_s, bytes
UNTIMED = {"gemm_s": float("nan"), "serialise_s": float("nan"), "bytes": float("nan")}


@dataclass
class Counters:
    calls: int = 0
    round_trip_s: float = 0.0  # inner transport's begin() .. result(): serialise, send, cloud, receive, parse
    gemm_s: float = 0.0  # from the GEMM table
    serialise_s: float = 0.0  # from the GEMM table: encode(x~) + encode(y~) + decode(y~)
    payload_bytes: float = 0  # serialised x~ and y~ (safetensors blobs)
    attention_s: float = 0.0
    sampling_s: float = 0.0
    encode_s: float = 0.0  # pad scheme: encode_rows (fixed point) in the CVM
    decode_s: float = 0.0  # pad scheme: decode_rows (scaling the exact product back)
    pad_wait_s: float = 0.0  # pad scheme: time takes spent waiting for the pool (the dealer)


class TimingTransport(LinearTransport):
    """Delegates to `inner` (any LinearTransport: tcp, websocket, http or the in-process fake);
    times each linear call and charges it its GEMM-table entry."""

    def __init__(self, inner: LinearTransport, table: GemmTable):
        self.inner = inner
        self.table = table
        self.counters = Counters()
        self.name = f"timed {getattr(inner, 'name', '?')}"

    def close(self):
        self.inner.close()

    def begin(self, op, tensor):
        t0 = time.perf_counter()
        pending = self.inner.begin(op, tensor)

        def finish():
            y = pending.result()
            self._charge(op, tensor.shape[0], time.perf_counter() - t0)
            return y

        return PendingCall(finish, lambda ok: ok or pending.abandon())

    def _charge(self, op: str, rows: int, round_trip_s: float) -> None:
        c = self.counters
        c.round_trip_s += round_trip_s
        c.calls += 1
        entry = self.table.get((op, rows), UNTIMED)  # prefill shapes are not in the table: NaN
        c.gemm_s += entry["gemm_s"]
        c.serialise_s += entry["serialise_s"]
        c.payload_bytes += entry["bytes"]


def call_input(service, name: str, rows: int, generator):
    """A call's tensor for op `name` as the cloud receives it: mask-sized float rows (remo) or
    uniform residues in Z_t (pad: what u = x_bar - r looks like)."""
    import torch

    d = service.kernel.input_dim(name)
    if service.scheme == "pad":
        from talaria_wire.ring import T

        return torch.randint(0, 2**62, (rows, d), generator=generator, dtype=torch.int64) % T
    return torch.randn(rows, d, generator=generator, dtype=service.kernel.input_dtype) * 10


def gemm_table(model_path, mode: str, threads: int, row_counts, reps: int = 3) -> GemmTable:
    """Median service.linear time (and serialisation cost, payload bytes) per (op, rows), on the
    cloud's service built in this process exactly as `talaria cloud` builds it."""
    import gc

    import torch

    from benchmarks.servers import cloud_mode
    from cloud_backend.cli import build_service
    from cloud_backend.settings import CloudSettings

    before = torch.get_num_threads()
    service = build_service(CloudSettings(model=str(model_path), threads=threads, **cloud_mode(mode)))
    table: GemmTable = {}
    try:
        g = torch.Generator().manual_seed(0)
        for rows in row_counts:
            xs = {op.name: call_input(service, op.name, rows, g) for op in service.manifest.ops}
            times: dict = {name: [] for name in xs}
            codec: dict = {name: [] for name in xs}
            # whole sweeps in model order, as in a step: each op's weights come cold from memory
            # (timing one op repeatedly would read them from cache and flatter the GEMM ~1.5x)
            for sweep in range(reps + 1):
                for name, x in xs.items():
                    t0 = time.perf_counter()
                    y = service.linear(name, x)
                    t1 = time.perf_counter()
                    blob_x, blob_y = encode_tensors({"x": x}, metadata={"op": name}), encode_tensors({"y": y})
                    decode_tensors(blob_y)
                    if sweep:  # the first sweep warms up
                        times[name].append(t1 - t0)
                        codec[name].append(time.perf_counter() - t1)
                    table[name, rows] = {"bytes": len(blob_x) + len(blob_y)}
            for name in xs:
                table[name, rows].update(gemm_s=median(times[name]), serialise_s=median(codec[name]))
    finally:
        torch.set_num_threads(before)
        del service
        gc.collect()
    return table


@contextlib.contextmanager
def attention_timer(counters: Counters):
    """Time the model's attention calls and KV-cache writes by wrapping them (restored on exit)."""
    import talaria_proxy.model as model_mod
    from talaria_proxy.kv_cache import KVCache

    orig_attn, orig_batched, orig_write = model_mod.attention, model_mod.decode_attention, KVCache.write

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                counters.attention_s += time.perf_counter() - t0
        return wrapper

    model_mod.attention, model_mod.decode_attention, KVCache.write = timed(orig_attn), timed(orig_batched), timed(orig_write)
    try:
        yield
    finally:
        model_mod.attention, model_mod.decode_attention, KVCache.write = orig_attn, orig_batched, orig_write


@contextlib.contextmanager
def pad_timer(counters: Counters):
    """Time the pad scheme's fixed-point encode and decode in the CVM (restored on exit)."""
    import talaria_proxy.schemes.pad as pad_mod

    orig_encode, orig_decode = pad_mod.encode_rows, pad_mod.decode_rows

    def timed(fn, field):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(counters, field, getattr(counters, field) + time.perf_counter() - t0)
        return wrapper

    pad_mod.encode_rows, pad_mod.decode_rows = timed(orig_encode, "encode_s"), timed(orig_decode, "decode_s")
    try:
        yield
    finally:
        pad_mod.encode_rows, pad_mod.decode_rows = orig_encode, orig_decode


def split_step(wall_s: float, c: Counters, mask_s: float, overlap_s: float = 0.0) -> dict[str, float]:
    """Milliseconds of each component of one step; `wall_s` covers forward + sampling.
    `mask_s` is all CVM masking work, `overlap_s` the part of it done inside round trips; the pad
    pool's waits (inside the scheme's mask) are their own component."""
    transport = c.round_trip_s - c.gemm_s
    mask_s -= overlap_s + c.pad_wait_s
    other = wall_s - c.round_trip_s - mask_s - c.pad_wait_s - c.attention_s - c.sampling_s
    calls = max(c.calls, 1)
    return {
        "total_ms": wall_s * 1e3,
        "cloud_gemm_ms": c.gemm_s * 1e3,
        "transport_ms": transport * 1e3,
        "serialise_ms": c.serialise_s * 1e3,
        "masking_ms": mask_s * 1e3,
        "pad_wait_ms": c.pad_wait_s * 1e3,
        "encode_ms": c.encode_s * 1e3,
        "decode_ms": c.decode_s * 1e3,
        "cvm_share_ms": overlap_s * 1e3,
        "attention_ms": c.attention_s * 1e3,
        "sampling_ms": c.sampling_s * 1e3,
        "other_cvm_ms": other * 1e3,
        "calls_per_step": c.calls,
        "round_trip_ms_per_call": c.round_trip_s / calls * 1e3,
        "transport_ms_per_call": transport / calls * 1e3,
        "payload_bytes_per_step": c.payload_bytes,
    }


def _reset(rt, timing: TimingTransport) -> None:
    rt.linear.stats.reset()
    for f in fields(Counters):
        setattr(timing.counters, f.name, 0 if f.type in ("int", int) else 0.0)


def _steps(rt, timing: TimingTransport, prompts, decode_steps: int) -> tuple[dict, list[dict]]:
    """One prefill step, then `decode_steps` greedy decode steps; the split of each step."""
    from talaria_proxy.model import SeqChunk
    from talaria_proxy.sampling import Sampler, SamplingParams

    model, c = rt.model, timing.counters
    caches = [model.new_cache() for _ in prompts]
    samplers = [Sampler(SamplingParams(max_tokens=10**6, temperature=0), model.arch.vocab_size) for _ in prompts]

    def step(chunks) -> tuple[list[int], dict]:
        _reset(rt, timing)
        waited = rt.pads.stats.wait_seconds if rt.pads is not None else 0.0
        t0 = time.perf_counter()
        logits = model.forward(chunks)  # [B, V]
        t1 = time.perf_counter()
        toks = [sm.sample(row).token_id for sm, row in zip(samplers, logits)]
        t2 = time.perf_counter()
        c.sampling_s += t2 - t1
        if rt.pads is not None:
            c.pad_wait_s = rt.pads.stats.wait_seconds - waited
        stats = rt.linear.stats
        return toks, split_step(t2 - t0, c, stats.mask_seconds, stats.overlap_seconds)

    tokens, prefill = step([SeqChunk(cache, p, 0, True) for cache, p in zip(caches, prompts)])
    decode = []
    for i in range(decode_steps):
        tokens, split = step([SeqChunk(cache, [t], len(p) + i, True) for cache, p, t in zip(caches, prompts, tokens)])
        decode.append(split)
    return prefill, decode


def profile_engine(cloud, table: GemmTable, prompts: list[list[int]], decode_steps: int, *,
                   transport: str = "tcp", batches=(1, 8), repeats: int = 1, scheme: str = "remo",
                   dealer=None, pad_pool_bytes: int = 256 << 20, warm_timeout: float = 900.0) -> dict:
    """Raw per-step splits: {'batch=B': {'prefill': [...], 'decode': [...], 'cloud_cpu_s', 'wall_s'}}.
    scheme 'pad': `dealer` is the dealer cloud process; the pool is warmed before every timed prefill."""
    from talaria_proxy.cloud_session import CloudSession
    from talaria_proxy.runtime import build_runtime
    from talaria_proxy.transports import build_transport

    session = CloudSession(cloud.url, timeout=600.0)
    timing = TimingTransport(build_transport(transport, session), table)
    dealer_session = CloudSession(dealer.url, timeout=600.0, role="pad dealer") if dealer is not None else None
    out: dict = {}
    rt = None
    try:
        rt = build_runtime(session, scheme, transport=timing, dealer=dealer_session, pad_source="dealer",
                           pad_pool_bytes=pad_pool_bytes, pad_timeout=600.0)
        timers = [attention_timer(timing.counters)] + ([pad_timer(timing.counters)] if rt.pads is not None else [])
        with contextlib.ExitStack() as stack:
            for t in timers:
                stack.enter_context(t)
            for b in batches:
                _steps(rt, timing, prompts[:b], 2)  # warm-up
                raw = {"prefill": [], "decode": [], "cloud_cpu_s": 0.0, "wall_s": 0.0, "load_avg": load_average(),
                       "dealer_cpu_s": 0.0, "pad_rows_produced": 0, "pad_warm": None}
                for _ in range(repeats):
                    if rt.pads is not None:
                        raw["pad_warm"] = rt.pads.wait_warm(warm_timeout)
                    cpu0, t0 = cloud.cpu_seconds(), time.perf_counter()
                    d_cpu0 = dealer.cpu_seconds() if dealer is not None else 0.0
                    made0 = sum(rt.pads.stats.produced_rows.values()) if rt.pads is not None else 0
                    prefill, decode = _steps(rt, timing, prompts[:b], decode_steps)
                    raw["prefill"].append(prefill)
                    raw["decode"] += decode
                    raw["cloud_cpu_s"] += cloud.cpu_seconds() - cpu0
                    raw["wall_s"] += time.perf_counter() - t0
                    if dealer is not None:
                        raw["dealer_cpu_s"] += dealer.cpu_seconds() - d_cpu0
                        raw["pad_rows_produced"] += sum(rt.pads.stats.produced_rows.values()) - made0
                out[f"batch={b}"] = raw
        out["arch"] = rt.manifest.arch.model_dump()
        if rt.pads is not None:
            out["pad_pool"] = {"target_rows": rt.pads.target_rows, "capacity_bytes": rt.pads.capacity_bytes}
    finally:
        if rt is not None:
            rt.close()
        else:
            timing.close()
            session.close()
            if dealer_session is not None:
                dealer_session.close()
    return out


def summarise(raws: list[dict]) -> dict:
    """Merge raw profiles of one setup (several passes) into per-component medians per batch size.
    The medians are robust to other jobs' load spikes; they need not add up to the median step."""
    out = {"arch": raws[0]["arch"], **({"pad_pool": raws[0]["pad_pool"]} if "pad_pool" in raws[0] else {})}
    for key in [k for k in raws[0] if k.startswith("batch=")]:
        parts = [r[key] for r in raws]
        prefill = [s for p in parts for s in p["prefill"]]
        decode = [s for p in parts for s in p["decode"]]
        steps = len(prefill) + len(decode)
        d = median_of_runs(decode)
        # /proc CPU ticks are 10 ms: only the mean over all steps (prefills included) is meaningful
        d["cloud_cpu_ms_mean"] = sum(p["cloud_cpu_s"] for p in parts) / steps * 1e3
        d["wall_ms_mean"] = sum(p["wall_s"] for p in parts) / steps * 1e3
        d["steps"] = len(decode)
        if "dealer_cpu_s" in parts[0]:
            d["dealer_cpu_ms_mean"] = sum(p["dealer_cpu_s"] for p in parts) / steps * 1e3
            d["pad_warm"] = all(p.get("pad_warm") is not False for p in parts)
        d["load_avg"] = median(p["load_avg"] for p in parts)
        out[key] = {"prefill": median_of_runs(prefill), "decode": d}
    return out
