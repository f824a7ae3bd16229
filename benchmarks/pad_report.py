"""bench.md sections of the pad scheme (`benchmarks.pad_bench`) and of the ring-kernel micro-measurement."""

from __future__ import annotations

from benchmarks.common import fmt, markdown_table, ratio
from benchmarks.pad_bench import PAD_SINGLE_TARGET, summary

COLD_NOTE = "a fresh proxy, its pool empty, the run started as soon as it answered (its first requests)"
PAD_COMPONENTS = ("cloud_gemm_ms", "transport_ms", "masking_ms", "pad_wait_ms", "attention_ms", "sampling_ms",
                  "other_cvm_ms")


def _kib(x):
    return None if x is None else x / 1024


def pad_lines(m: dict) -> list[str]:
    pad = m.get("pad")
    if not pad:
        return []
    if "error" in pad:
        return [f"Scheme pad: the pad part of this run failed ({pad['error']}).", ""]
    s = summary(pad)
    hf1, hf8 = pad["hf"]["threads=1,batch=1"], pad["hf"]["threads=1,batch=8"]
    rows = [[f"HF generate, batch {b}, 1 thread", h["ms_per_token"], h["ttft_ms"], h["tokens_per_s"], None, None]
            for b, h in ((1, hf1), (8, hf8))]
    for label, runs in (("warm pool", pad["talaria"]), ("cold pool", pad["cold"])):
        for key, t in runs.items():
            k = int(key.split("=")[1])
            rows.append([f"Talaria pad, {k} stream{'s' if k > 1 else ''}, {label}", t["ms_per_token"], t["ttft_ms"],
                         t["tokens_per_s"], _kib(t.get("bytes_sent_per_token")), _kib(t.get("bytes_received_per_token"))])
    dealer = pad["dealer"]
    kinds = [[k, v["op"], v["block_rows"], v["block_s"] * 1e3, v["rows_per_s"]] for k, v in dealer["per_kind"].items()]
    per_row = dealer["bytes_per_row"]
    comp = dealer["compute_bytes_per_row"]
    lines = [f"### Scheme pad, pad source dealer ({pad['transport']} frames; compute cloud, dealer cloud and proxy 1 "
             f"thread each; pool {pad['pool_mb']} MiB, dealer blocks of {pad['block_rows']} rows)", "",
             "Rounds that alternate HF (1 thread) with Talaria `--scheme pad --pad-source dealer`, measured after "
             "the ReMO rows with their clouds stopped. Warm: each sample starts once the dealer has been idle "
             f"(the proxy's pool is at its target); cold: {pad.get('cold_note', COLD_NOTE)}. "
             "KiB/token: payloads between proxy and compute cloud per generated token (u and v, int64; proxy "
             "/metrics), prompt rows included.", "",
             markdown_table(["configuration", "ms/token", "TTFT ms", "tokens/s", "KiB/token to cloud",
                             "KiB/token from cloud"], rows), "",
             f"Targets, both measured in this run (equal GEMM threads: HF 1 thread vs a 1-thread compute cloud): 1 "
             f"stream {fmt(s['single_ratio'])}x HF's time per token (target <= {PAD_SINGLE_TARGET:g}: "
             f"{'met' if s['single_ok'] else 'NOT met'}); 8 streams {fmt(s['multi_ratio'])}x HF's throughput; the "
             f"dealer makes {fmt(s['made_sets_per_s'])} complete pad sets/s (one row of every op) against "
             f"{fmt(pad['talaria']['streams=8']['tokens_per_s'])} tokens/s that 8 streams consume: "
             f"{fmt(s['production_ratio'])}x (target > 1: {'met' if s['production_ok'] else 'NOT met'}); counting "
             f"the prompt rows too (each op consumes {fmt(s['consumed_rows_per_s'])} rows/s in an 8-stream run): "
             f"{fmt(s['production_vs_all_rows'])}x. Text of stream 1 equals HF's greedy text: "
             f"{pad.get('matches_hf_text')}.", "",
             "Pad production of the dealer alone (POST /v1/pads, one block per request as the pool asks, 1 "
             f"thread): rows/s per op kind; the slowest kind is {dealer['slowest_op']} at "
             f"{fmt(dealer['slowest_op_rows_per_s'])} rows/s; a complete set for one token needs one row of every "
             f"op: {fmt(dealer['complete_sets_per_s'])} sets/s.", "",
             markdown_table(["op kind", "op", "rows/block", "ms/block", "rows/s"], kinds), "",
             f"Bytes per token of one stream (per row of every op, payloads): compute cloud {fmt(_kib(comp['sent']))} "
             f"KiB up (u), {fmt(_kib(comp['received']))} KiB down (v); dealer {fmt(per_row['sent'])} B up (seeds), "
             f"{fmt(_kib(per_row['received']))} KiB down (r W_bar).", ""]
    return lines + _profile_lines(pad) + he_lines(pad.get("he"))


def he_lines(he: dict | None) -> list[str]:
    """The `he` source's figures (benchmarks.he_pads), next to the dealer's."""
    if not he:
        return []
    if "error" in he:
        return [f"Pad source he: benchmarks.he_pads did not run ({he['error'][:300]}).", ""]
    rows = [[k, f"{v['d']}x{v['o']}", v["pad_rows_per_s_sequential"], v["pad_rows_per_s_pipelined"],
             v["pad_rows_per_s_cpu"], _kib(v["bytes_up_per_row"]), _kib(v["bytes_down_per_row"])]
            for k, v in he["ops"].items()]
    return [f"Pad source he (the compute cloud under RLWE; benchmarks.he_pads, N = {he['N']}, {he['timed']}; "
            f"load average {fmt(he.get('load_average'))}): complete pad sets/s {fmt(he['tokens_per_s_sequential'])} "
            f"with CVM and cloud sharing this machine, {fmt(he['tokens_per_s_pipelined'])} each on its own "
            f"(the slower sets the rate), {fmt(he['tokens_per_s_cpu'])} per CPU-second; the dealer above: "
            "one process, sets/s.", "",
            markdown_table(["op kind", "d x o", "rows/s shared", "rows/s pipelined", "rows/s per CPU-s",
                            "KiB/row up", "KiB/row down"], rows), ""]


def _profile_lines(pad: dict) -> list[str]:
    prof = pad["profile"]
    rows = []
    for b in (1, 8):
        d = prof[f"batch={b}"]["decode"]
        rows.append([b, d["total_ms"], *[d.get(c) for c in PAD_COMPONENTS], d.get("encode_ms"), d.get("decode_ms"),
                     f"{fmt(100 * ratio(d['cloud_cpu_ms_mean'], d['wall_ms_mean']), 2)}%",
                     f"{fmt(100 * ratio(d.get('dealer_cpu_ms_mean') or float('nan'), d['wall_ms_mean']), 2)}%",
                     d["transport_ms_per_call"], _kib(d["payload_bytes_per_step"])])
    gemm = pad.get("gemm_ms_by_rows", {})
    return ["Where a pad decode step goes (the proxy's engine in the benchmark process against the two cloud "
            "processes; medians over the profiled steps, pool warmed with PadPool.wait_warm before each timed "
            "prefill): ring GEMM: each call charged the compute cloud's exact ring kernel time for its (op, rows), "
            "timed in-process; transport: round trip minus ring GEMM; pad work: the CVM's encode_rows, u = x_bar - "
            "r, taking pads, v + r W_bar, lift and decode_rows (encode and decode also on their own); pool waits: "
            "takes that waited for the dealer; dealer busy: the dealer's CPU / wall time (it refills the pool "
            "meanwhile).", "",
            markdown_table(["batch", "step ms", "ring GEMM", "transport", "pad work", "pool waits", "attention",
                            "sampling", "other CVM", "(encode)", "(decode)", "cloud busy", "dealer busy",
                            "transport ms/call", "payload KiB/step"], rows), "",
            "Ring GEMM of one model sweep by rows per call (ms): "
            + ", ".join(f"{r} rows {fmt(v)}" for r, v in gemm.items()) + ".", ""]


def ring_lines(m: dict) -> list[str]:
    ring = m.get("micro", {}).get("ring")
    if not ring:
        return []
    if "error" in ring:
        return [f"Ring kernel micro-measurement failed ({ring['error']}).", ""]
    rows = []
    for kind, v in ring["shapes"].items():
        for key in (k for k in v if k.startswith("rows=")):
            r = v[key]
            rows.append([kind, f"{v['d']}x{v['o']}", int(key.split("=")[1]), r["float32_ms"], r["float64_ms"],
                         r.get("ring_ref_ms"), r.get("ring_blas_ms"), r["ring_ms"], r["ring_over_float32"], r["ring_over_float64"],
                         ratio(r.get("ring_ref_ms"), r["ring_ms"]) if r.get("ring_ref_ms") else None])
    return ["Ring kernel micro-measurement (exact v = u W_bar mod t against float GEMMs of the op shapes, d counting "
            f"the folded-bias row; one thread; weights swept from memory). Prediction, written before measuring: "
            f"{ring['prediction']}. Kernel: {ring.get('kernel')}; 'ring (ref)' is the first formulation (unsigned "
            "limbs, torch GEMM), 'ring (BLAS)' signed limbs on a float64 W_bar with OpenBLAS (the kernel without a C "
            "compiler, and on CUDA), 'ring' the one the cloud runs; all exact, checked equal here and against Python "
            "integers in tests.", "",
            markdown_table(["op", "d x o", "rows", "float32 ms", "float64 ms", "ring (ref) ms", "ring (BLAS) ms", "ring ms",
                            "ring / float32", "ring / float64", "speed-up over ref"], rows), ""]
