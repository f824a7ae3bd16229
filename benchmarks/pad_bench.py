"""The `pad` scheme in `talaria bench`: a compute pad cloud and a dealer pad cloud as real processes.

In the same run as HF and ReMO (`benchmarks.speed`), after the ReMO clouds have stopped (two pad
clouds of the 0.5B-shaped model hold ~5 GB each):
  1. rounds that alternate HF `generate` (1 thread, batch 1 and 8) with Talaria `--scheme pad
     --pad-source dealer` (cloud, dealer and proxy 1 thread each) through the OpenAI endpoint,
     1 and 8 streams, each Talaria sample with a warm pool: it starts once the dealer has been
     idle for a while, i.e. the proxy's refill thread has every op at its target;
  2. a cold sample of each: a fresh proxy, its pool empty, the run started as soon as it answers;
  3. the dealer's pad production: POST /v1/pads blocks of each op kind against the dealer alone
     (rows/s per op kind; complete pad sets/s = one row of every op of the model);
  4. the in-process step profile (`benchmarks.breakdown`, scheme pad, the pool warmed with
     PadPool.wait_warm before each timed prefill): ring GEMM, transport, CVM pad work, pool waits.
"""

from __future__ import annotations

import secrets
import sys
import time

from benchmarks.common import median

POOL_MB = 1024  # the proxy's pad pool in the bench: ~200 rows of every op of the 0.5B-shaped model


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wait_idle(server, idle_s: float = 1.5, timeout: float = 900.0, busy_cpu_s: float = 0.05) -> float:
    """Block until `server` (the dealer) used < busy_cpu_s of CPU over idle_s: with nothing else
    asking it, the proxy's pool is then full. Returns the seconds waited."""
    t0 = time.monotonic()
    last = server.cpu_seconds()
    while time.monotonic() - t0 < timeout:
        time.sleep(idle_s)
        now = server.cpu_seconds()
        if now - last < busy_cpu_s:
            return time.monotonic() - t0
        last = now
    return time.monotonic() - t0


def dealer_bytes_per_row(manifest, block_rows: int) -> dict:
    """Bytes between CVM and dealer per pad row of every op (= per token of one stream): the
    request's seed (32 bytes per block of block_rows rows) and the answer r W_bar (int64 [rows, o])."""
    ops = manifest.ops
    return {"sent": sum(32 / block_rows for _ in ops), "received": sum(8 * op.d_out for op in ops)}


def compute_bytes_per_row(manifest) -> dict:
    """Payload bytes between CVM and compute cloud per row of every op: u (int64 [1, d]) and v (int64 [1, o])."""
    return {"sent": sum(8 * (op.pad_dim or op.d_in) for op in manifest.ops),
            "received": sum(8 * op.d_out for op in manifest.ops)}


def dealer_throughput(dealer_url: str, block_rows: int, reps: int = 3) -> dict:
    """Rows/s of r W_bar mod t the dealer makes, per op kind (layer 0's op and lm_head), POSTing one
    block at a time over REST as the proxy's pool does; complete pad sets/s over the whole model."""
    from talaria_proxy.cloud_session import CloudSession
    from talaria_wire.ring import SEED_BYTES

    from benchmarks.precision import op_kind

    session = CloudSession(dealer_url, timeout=600.0, role="pad dealer")
    try:
        manifest = session.manifest()
        kinds: dict[str, str] = {}
        for op in manifest.ops:
            kinds.setdefault(op_kind(op.name), op.name)
        per_kind = {}
        for kind, op in kinds.items():
            times = []
            for i in range(reps + 1):
                t0 = time.perf_counter()
                session.pads([(op, block_rows)], [secrets.token_bytes(SEED_BYTES)])
                if i:  # the first block warms up
                    times.append(time.perf_counter() - t0)
            per_kind[kind] = {"op": op, "block_rows": block_rows, "block_s": median(times),
                              "rows_per_s": block_rows / median(times)}
        seconds_per_set = sum(1 / per_kind[op_kind(op.name)]["rows_per_s"] for op in manifest.ops)
        slowest = min(per_kind.values(), key=lambda k: k["rows_per_s"])
        return {"per_kind": per_kind, "complete_sets_per_s": 1 / seconds_per_set,
                "slowest_op_rows_per_s": slowest["rows_per_s"], "slowest_op": slowest["op"],
                "bytes_per_row": dealer_bytes_per_row(manifest, block_rows),
                "compute_bytes_per_row": compute_bytes_per_row(manifest)}
    finally:
        session.close()


def he_figures(size: str, timeout: float = 1500.0) -> dict:
    """benchmarks.he_pads (the `he` source's costs, another helper's module) in a fresh one-thread
    process; {'error': ...} when it is missing or fails, so the dealer rows still get written."""
    import json
    import os
    import subprocess
    import tempfile

    from benchmarks.common import thread_env

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        try:
            subprocess.run([sys.executable, "-m", "benchmarks.he_pads", "--size", size, "--threads", "1",
                            "--out", out.name], env={**os.environ, **thread_env(1)}, capture_output=True,
                           text=True, check=True, timeout=timeout)
            return json.loads(open(out.name).read())
        except (subprocess.SubprocessError, OSError, ValueError) as exc:
            tail = getattr(exc, "stderr", "") or ""
            return {"error": f"{type(exc).__name__}: {str(exc)[:200]} {tail[-300:]}"}


def pad_phase(path, cfg: dict, prompts, log_dir, hf, transport: str, size: str = "tiny", he: bool = True) -> dict:
    """Everything the report's pad rows need, for one model; `hf` is the loaded HF baseline."""
    from benchmarks import breakdown, servers
    from benchmarks.common import hf_metrics, median_of_runs
    from benchmarks.streams import TalariaClient
    from talaria_proxy.settings import ProxySettings

    from benchmarks.speed import ROWS

    # at most 2 rounds: a 0.5B-shaped pad round (refills included) takes several minutes here
    reps, n = min(2, cfg["repeats"]), cfg["new_tokens"]
    block_rows = ProxySettings.model_fields["pad_block_rows"].default
    res: dict = {"pool_mb": POOL_MB, "block_rows": block_rows, "transport": transport, "threads": 1,
                 "prompt_len": cfg["prompt_len"], "new_tokens": n}
    _say("  GEMM table: pad (ring kernel), 1 thread")
    table = breakdown.gemm_table(path, "pad", 1, ROWS)
    res["gemm_ms_by_rows"] = {r: 1e3 * sum(v["gemm_s"] for (_, rows), v in table.items() if rows == r) for r in ROWS}
    _say("  starting the compute pad cloud and the dealer pad cloud (1 thread each)")
    compute = servers.start_cloud(path, log_dir, "pad")
    dealer = servers.start_cloud(path, log_dir, "pad")
    proxy = None
    try:
        compute.wait_ready()
        dealer.wait_ready()
        proxy = servers.start_proxy(compute.url, log_dir, transport, dealer_url=dealer.url, pad_pool_mb=POOL_MB)
        proxy.wait_ready()
        tal = TalariaClient(proxy, compute, prompts, n)
        try:
            tal.warm_up()
            hf_samples = {b: [] for b in (1, 8)}
            warm = {b: [] for b in (1, 8)}
            waited = []
            for r in range(reps):
                for b in (1, 8):
                    hf_samples[b].append(hf.sample(1, b))
                    waited.append(wait_idle(dealer))
                    warm[b].append(tal.sample(b))
                _say(f"  pad round {r + 1}/{reps}: HF b1 {hf_samples[1][-1][1]:.2f}s, b8 {hf_samples[8][-1][1]:.2f}s; "
                     f"pad 1 / 8 streams {warm[1][-1]['total_s']:.2f}s / {warm[8][-1]['total_s']:.2f}s "
                     f"(pool refill waited {waited[-2]:.0f}s, {waited[-1]:.0f}s)")
            tal.sample(1)
            res["matches_hf_text"] = tal.texts[0] == hf_text(path, hf)
        finally:
            tal.close()
        proxy.stop()
        proxy = None
        cold = {}
        for b in (8, 1):  # a fresh proxy each: its pool starts empty and fills while this run goes on
            proxy = servers.start_proxy(compute.url, log_dir, transport, dealer_url=dealer.url, pad_pool_mb=POOL_MB)
            proxy.wait_ready()
            fresh = TalariaClient(proxy, compute, prompts, n)
            try:
                cold[f"streams={b}"] = fresh.sample(b)
            finally:
                fresh.close()
                proxy.stop()
                proxy = None
            wait_idle(dealer)
        res["hf"] = {f"threads=1,batch={b}": {**median_of_runs([hf_metrics(f, t, b, hf.new_tokens) for f, t in s]),
                                              "threads": 1, "batch": b} for b, s in hf_samples.items()}
        res["talaria"] = {f"streams={b}": {**median_of_runs(v), "streams": b, "repeats": reps} for b, v in warm.items()}
        res["cold"] = cold
        res["cold_note"] = "a fresh proxy, its pool empty, the run started as soon as it answered (its first requests)"
        res["refill_wait_s"] = waited
        _say("  dealer throughput (the dealer alone)")
        res["dealer"] = dealer_throughput(dealer.url, block_rows)
        _say(f"  {res['dealer']['complete_sets_per_s']:.2f} complete pad sets/s; per kind "
             + ", ".join(f"{k} {v['rows_per_s']:.0f} rows/s" for k, v in res["dealer"]["per_kind"].items()))
        _say("  in-process step profile, scheme pad")
        raws = [breakdown.profile_engine(compute, table, prompts, cfg["profile_steps"], transport=transport,
                                         scheme="pad", dealer=dealer, pad_pool_bytes=POOL_MB << 20,
                                         repeats=max(1, reps // 2))]
        res["profile"] = breakdown.summarise(raws)
        for b in (1, 8):
            d = res["profile"][f"batch={b}"]["decode"]
            _say(f"  pad, batch {b}: {d['total_ms']:.1f} ms/step = ring GEMM {d['cloud_gemm_ms']:.1f} + transport "
                 f"{d['transport_ms']:.1f} + pad work {d['masking_ms']:.1f} + pool waits {d['pad_wait_ms']:.1f} + "
                 f"attention {d['attention_ms']:.1f} + other {d['other_cvm_ms']:.1f} (medians)")
    finally:
        if proxy is not None:
            proxy.stop()
        dealer.stop()
        compute.stop()
    if he:  # with the pad clouds stopped: it needs the cores and the memory
        _say("  the he pad source's figures (benchmarks.he_pads, fresh process)")
        res["he"] = he_figures(size)
        _say(f"  he: {res['he'].get('tokens_per_s_sequential', res['he'].get('error'))} complete pad sets/s")
    return res


def hf_text(path, hf) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).decode(hf.tokens_prompt0)


def summary(pad: dict) -> dict:
    """The issue's two targets, both from this run: 1-stream ms/token vs HF 1 thread (<= 3x) and
    pad production vs 8-stream consumption (> 1)."""
    hf1, hf8 = pad["hf"]["threads=1,batch=1"], pad["hf"]["threads=1,batch=8"]
    t1, t8 = pad["talaria"]["streams=1"], pad["talaria"]["streams=8"]
    single = t1["ms_per_token"] / hf1["ms_per_token"]
    made = pad["dealer"]["complete_sets_per_s"]
    # rows every op consumes per second in an 8-stream run: its prompt rows and its generated tokens
    consumed = t8["tokens"] * (1 + pad.get("prompt_len", 0) / max(1, pad.get("new_tokens", 1))) / t8["total_s"]
    return {"single_ratio": single, "single_ok": single <= PAD_SINGLE_TARGET,
            "multi_ratio": t8["tokens_per_s"] / hf8["tokens_per_s"],
            "production_ratio": made / t8["tokens_per_s"], "production_ok": made > t8["tokens_per_s"],
            "production_vs_all_rows": made / consumed, "consumed_rows_per_s": consumed, "made_sets_per_s": made}


PAD_SINGLE_TARGET = 3.0
