"""bench.md and bench.png from the speed benchmark's JSON-able report (see `benchmarks.speed`).

Every ratio is against the HF baseline measured in the same run; the better of 1 and 2 torch
threads is the baseline. Predictions combine the measured step profile with measured variants
(other transports, full answers, other precisions, 2 cloud threads) and micro-measurements; their
basis is named in each row.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import pad_report
from benchmarks.common import fmt, markdown_table, ratio
from benchmarks.hf_baseline import best_point

SINGLE_TARGET = 1.5  # Talaria 1-stream ms/token <= 1.5x HF batch-1
MULTI_TARGET = 0.8  # Talaria 8-stream tokens/s >= 0.8x HF batch-8
COMPONENTS = ("cloud_gemm_ms", "transport_ms", "masking_ms", "attention_ms", "sampling_ms", "other_cvm_ms")


def summary(m: dict) -> dict:
    """Targets, best against best: HF's better thread count against Talaria's better cloud thread
    count (both use the whole machine). Also at equal GEMM threads: HF 1 thread vs the cloud's 1."""
    hf1, hf8 = best_point(m["hf"]["points"], 1), best_point(m["hf"]["points"], 8)
    tal = m["talaria"]
    ones = [v["metrics"] for k, v in tal.items() if k.split(",")[0] == "streams=1"]
    eights = [v["metrics"] for k, v in tal.items() if k.split(",")[0] == "streams=8"]
    t1 = min(ones, key=lambda t: t["ms_per_token"])
    t8 = max(eights, key=lambda t: t["tokens_per_s"])
    single = ratio(t1["ms_per_token"], hf1["ms_per_token"])
    multi = ratio(t8["tokens_per_s"], hf8["tokens_per_s"])
    out = {"hf_b1": hf1, "hf_b8": hf8, "tal_1": t1, "tal_8": t8, "single_ratio": single,
           "single_ok": single <= SINGLE_TARGET, "multi_ratio": multi, "multi_ok": multi >= MULTI_TARGET}
    hf_points = m["hf"]["points"]
    if "threads=1,batch=1" in hf_points and "threads=1,batch=8" in hf_points:  # equal GEMM threads
        out["equal_single_ratio"] = ratio(tal["streams=1"]["metrics"]["ms_per_token"],
                                          hf_points["threads=1,batch=1"]["ms_per_token"])
        out["equal_multi_ratio"] = ratio(tal["streams=8"]["metrics"]["tokens_per_s"],
                                         hf_points["threads=1,batch=8"]["tokens_per_s"])
    return out


def base_profile(m: dict) -> dict:
    """The profile of the default setup (the first one run)."""
    return next(iter(m["profile"].values()))


def find_profile(m: dict, compute_dtype: str, transport: str, threads: int) -> dict | None:
    for p in m["profile"].values():
        if (p["compute_dtype"], p["transport"], p["cloud_threads"]) == (compute_dtype, transport, threads):
            return p
    return None


BATCHED = "(done) batched decode attention: one SDPA call for all decoding sequences"
TEAMS = "(done) 2-thread cloud: every GEMM on one compute thread (one OpenMP team), not on a thread per connection"


def predictions(m: dict) -> list[dict]:
    """Per decode batch: what each change did (measured against a variant that lacks it, or priced
    by a micro-measurement) or is predicted to do, with its basis."""
    rows = []
    micro, base_p = m["micro"], base_profile(m)
    mode, transport = base_p["compute_dtype"], base_p["transport"]
    for b in (1, 8):
        key = f"batch={b}"
        base = base_p[key]["decode"]
        total = base["total_ms"]

        def row(name, now, predicted, basis):
            rows.append({"batch": b, "optimisation": name, "now_ms": now, "predicted_ms": predicted,
                         "saving_ms": now - predicted, "basis": basis})

        def variant(compute, trans, threads):
            p = find_profile(m, compute, trans, threads)
            return None if p is None else p[key]["decode"]

        if transport == "tcp":
            for other, what in (("websocket", "WebSocket messages"), ("http", "HTTP POSTs")):
                if v := variant(mode, other, 1):
                    row(f"(done) raw frames on one TCP socket instead of {what}", v["total_ms"], total,
                        f"measured: {other} transport")
        if v := variant(f"{mode}/full", transport, 1):
            row("(done) projected answers (float32, CVM share computed during the call) instead of full",
                v["total_ms"], total, "measured: cloud with reply 'full'")
        if (v := variant("float64", transport, 1)) and mode != "float64":
            row(f"(done) {mode} precision instead of float64", v["total_ms"], total, "measured: float64 cloud")
        if (v32 := variant("float32", transport, 1)) and mode != "float32":
            # component-based: GEMM (tables) and masking; the rest is per-call latency, which a
            # variant measured minutes later only adds noise to
            gain = base["cloud_gemm_ms"] - v32["cloud_gemm_ms"] + base["masking_ms"] - v32["masking_ms"]
            row("float32 wire + float32 GEMM (lossy with large masks)", total, total - gain,
                f"GEMM and masking of the float32 cloud (its measured step: {v32['total_ms']:.4g})")
        if v := variant(mode, transport, 2):
            row("2 torch threads on the cloud", total, v["total_ms"], "measured: cloud with 2 threads")
            teams = micro.get("openmp_teams", {}).get(f"rows={b}")
            if teams:
                gain = max(0.0, teams["second_thread_ms"] - teams["compute_thread_ms"])
                row(TEAMS, v["total_ms"] + gain, v["total_ms"],
                    f"micro: decode sweep of the 2-thread service on a second thread {teams['second_thread_ms']:.1f} ms "
                    f"vs on its compute thread {teams['compute_thread_ms']:.1f} ms")
        if b > 1:
            a = micro["attention_b8"]
            gain = max(0.0, a["loop_ms_per_step"] - a["batched_ms_per_step"])
            row(BATCHED, total + gain, total,
                f"micro: per-sequence loop {a['loop_ms_per_step']:.2f} ms vs batched {a['batched_ms_per_step']:.2f} ms per step")
    return rows


def _kib(x):
    return None if x is None else x / 1024  # None: NaN that went through JSON


def _pct(x) -> str:
    return "-" if x is None or x != x else fmt(100 * x, 2) + "%"


def markdown(report: dict) -> str:
    mach, cfg = report["machine"], report["config"]
    setup = next(iter(report["models"].values()))["setup"]
    lines = [f"# Talaria vs plain HF transformers ({report['mode']} run)", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, CUDA {mach['cuda']}. "
             f"Load average {fmt(report['load_avg_start'])} at start, {fmt(report['load_avg_end'])} at end "
             "(other jobs share the machine; every figure is a median of repeats).",
             f"Prompts: 8 x {cfg['prompt_len']} random token ids; {cfg['new_tokens']} greedy new tokens, EOS "
             "ignored; per model, interleaved rounds (HF and Talaria samples alternate, so both see the same load) "
             "after a warm-up, the median reported. Threads: proxy 1 OpenMP thread; cloud 1 thread (the "
             f"profiled default){' and 2 threads' if cfg.get('cloud2', True) else ' only (--no-cloud2)'}; HF 1 and 2 "
             "torch threads (the better one is the baseline)"
             f"{'' if cfg.get('variants', True) else '; no variant profiles (--no-variants)'}. Talaria as shipped by "
             f"default: cloud precision '{setup['compute_dtype']}', linear calls over {setup['transport']}, ReMO mask "
             f"scale {setup['mask_scale']}, rank {setup['mask_rank']}; 1 and 8 concurrent streams through "
             "/v1/completions (openai AsyncOpenAI, stream=True). ms/token: decode time per token of one stream "
             "(HF: per batch step); TTFT: request to first text chunk (Talaria; server-side TTFT in bench.json) "
             "or generate(max_new_tokens=1) (HF).", ""]
    for size, m in report["models"].items():
        s = summary(m)
        arch = base_profile(m)["arch"]
        lines += [f"## Model {size} ({arch['num_layers']} layers, hidden {arch['hidden_size']}, "
                  f"vocab {arch['vocab_size']}; {m.get('rounds', '?')} rounds)", ""]
        rows = []
        for p in m["hf"]["points"].values():
            base1 = p["batch"] == 1
            rows.append([f"HF generate, batch {p['batch']}", p["threads"], p["ms_per_token"],
                         ratio(p["ms_per_token"], s["hf_b1"]["ms_per_token"]) if base1 else None, p["ttft_ms"],
                         p["tokens_per_s"], None if base1 else ratio(p["tokens_per_s"], s["hf_b8"]["tokens_per_s"]),
                         None, None, None])
        for key, point in m["talaria"].items():
            t = point["metrics"]
            k, c = t.get("streams", int(key.split(",")[0].split("=")[1])), t.get("cloud_threads", 1)
            rows.append([f"Talaria, {k} stream{'s' if k > 1 else ''}, cloud {c} thread{'s' if c > 1 else ''}",
                         f"{c}+1", t["ms_per_token"],
                         ratio(t["ms_per_token"], s["hf_b1"]["ms_per_token"]) if k == 1 else None, t["ttft_ms"],
                         t["tokens_per_s"], ratio(t["tokens_per_s"], s["hf_b8"]["tokens_per_s"]) if k > 1 else None,
                         t["calls_per_token"], _kib(t["bytes_per_token"]), _pct(t["mask_share_of_proxy_cpu"])])
        lines += [markdown_table(["configuration", "threads", "ms/token", "x HF b1", "TTFT ms", "tokens/s",
                                  "x HF b8", "cloud calls/token", "KiB/token", "masking % of proxy CPU"], rows), ""]
        same = m["talaria"]["streams=1"].get("matches_hf_text")
        lines += [f"Targets, best against best (HF {s['hf_b1']['threads']} / {s['hf_b8']['threads']} threads vs "
                  f"Talaria cloud {s['tal_1'].get('cloud_threads', 1)} / {s['tal_8'].get('cloud_threads', 1)} threads, "
                  f"each the better setting on this machine): 1 stream {fmt(s['single_ratio'])}x HF batch-1 time per "
                  f"token (target <= {SINGLE_TARGET}: {'met' if s['single_ok'] else 'NOT met'}); 8 streams "
                  f"{fmt(s['multi_ratio'])}x HF batch-8 throughput (target >= {MULTI_TARGET}: "
                  f"{'met' if s['multi_ok'] else 'NOT met'}). Text of stream 1 equals HF's greedy text: {same}.", ""]
        if "equal_single_ratio" in s:
            es, em = s["equal_single_ratio"], s["equal_multi_ratio"]
            lines += [f"At equal GEMM threads (HF 1 thread vs the cloud's 1 thread; the proxy has its own core, as a "
                      f"CVM would): 1 stream {fmt(es)}x ({'met' if es <= SINGLE_TARGET else 'NOT met'}), 8 streams "
                      f"{fmt(em)}x ({'met' if em >= MULTI_TARGET else 'NOT met'}).", ""]
        lines += _breakdown(m) + _prediction_lines(m, s) + pad_report.ring_lines(m) + pad_report.pad_lines(m)
    return "\n".join(lines) + "\n"


def _breakdown(m: dict) -> list[str]:
    rows = []
    for label, prof in m["profile"].items():
        for b in (1, 8):
            d = prof[f"batch={b}"]["decode"]
            rows.append([label, b, d["total_ms"], *[d[c] for c in COMPONENTS], d.get("cvm_share_ms"),
                         d["serialise_ms"] if prof["transport"] != "tcp" else None,
                         _pct(ratio(d["cloud_cpu_ms_mean"], d["wall_ms_mean"])), d["transport_ms_per_call"],
                         _kib(d["payload_bytes_per_step"])])
    head = ["cloud mode, transport, cloud threads", "batch", "step ms", "cloud GEMM", "transport", "masking",
            "attention", "sampling", "other CVM", "(CVM share)", "(serialise)", "cloud busy", "transport ms/call",
            "payload KiB/step"]
    calls = base_profile(m)["batch=1"]["decode"]["calls_per_step"]
    return [f"Where a decode step goes: the proxy's engine in the benchmark process against the cloud process, "
            f"{calls:g} calls per step; ms per step, per-component medians over all profiled steps (they need not add "
            "up to the median step). cloud GEMM: each call charged the time of its (op, rows) on an identical "
            "in-process service, timed in model-order sweeps; transport: round trip minus GEMM (serialisation, "
            "framing, the cloud's event loop, loopback, wake-ups); masking: CVM masking work on the critical path; "
            "(CVM share): the CVM's (x B^T) R_pub of projected answers, computed while the call is in flight (inside "
            "the round trip, so transport is an upper bound where it outlasts the GEMM); (serialise): safetensors "
            "encode/decode share of transport (WebSocket and HTTP only; TCP frames send raw bytes); cloud mode "
            "'mixed/full': full answers x~ W + b instead of projected ones; "
            "cloud busy: CPU time of the cloud process / wall time, over all profiled steps incl. prefills (/proc "
            "ticks are too coarse per step). With 2 cloud threads the GEMM is not split out: "
            "timing a 2-thread team on a shared 2-core machine measures the other jobs.", "",
            markdown_table(head, rows), "",
            f"Profiled step vs the OpenAI endpoint: {fmt(base_profile(m)['batch=1']['decode']['total_ms'])} ms/step vs "
            f"{fmt(m['talaria']['streams=1']['metrics']['ms_per_token'])} ms/token (1 stream), "
            f"{fmt(base_profile(m)['batch=8']['decode']['total_ms'])} vs "
            f"{fmt(m['talaria']['streams=8']['metrics']['ms_per_token'])} (8 streams); the difference is the proxy's "
            "event loop, thread hop, SSE and detokenisation, plus the load of the moment.", ""]


def _prediction_lines(m: dict, s: dict) -> list[str]:
    preds = predictions(m)
    rows = [[p["batch"], p["optimisation"], p["now_ms"], p["predicted_ms"], p["saving_ms"], p["basis"]] for p in preds]
    return ["What each change did to the decode step ((done): the step without it vs as shipped) and what the "
            "options left would do:", "",
            markdown_table(["batch", "change", "step ms without / now", "with", "saving", "basis"], rows), ""]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    xs = range(len(models))
    sums = [summary(report["models"][k]) for k in models]
    ax1.bar([x - 0.2 for x in xs], [s["single_ratio"] for s in sums], 0.4, label="1 stream: ms/token / HF b1")
    ax1.bar([x + 0.2 for x in xs], [s["multi_ratio"] for s in sums], 0.4, label="8 streams: tokens/s / HF b8")
    pads = [(x, report["models"][k]["pad"]) for x, k in zip(xs, models)
            if report["models"][k].get("pad") and "error" not in report["models"][k]["pad"]]
    if pads:
        from benchmarks.pad_bench import PAD_SINGLE_TARGET, summary as pad_summary

        ax1.bar([x + 0.45 for x, _ in pads], [pad_summary(p)["single_ratio"] for _, p in pads], 0.25, color="C3",
                label=f"pad, 1 stream: ms/token / HF b1 1 thread (target {PAD_SINGLE_TARGET:g})")
    ax1.axhline(SINGLE_TARGET, ls="--", c="C0", lw=1)
    ax1.axhline(MULTI_TARGET, ls="--", c="C1", lw=1)
    ax1.set_yscale("log")
    ax1.set_xticks(list(xs), models)
    ax1.set_title("Talaria relative to HF (dashed: targets)")
    ax1.legend(fontsize=8)
    labels, lefts = [], None
    bars = {c: [] for c in COMPONENTS}
    for k in models:
        for b in (1, 8):
            d = base_profile(report["models"][k])[f"batch={b}"]["decode"]
            labels.append(f"{k} batch {b}")
            for c in COMPONENTS:
                bars[c].append(100 * max(d[c], 0) / d["total_ms"])
    lefts = [0.0] * len(labels)
    for c in COMPONENTS:
        ax2.barh(labels, bars[c], left=lefts, label=c.replace("_ms", "").replace("_", " "))
        lefts = [a + b for a, b in zip(lefts, bars[c])]
    ax2.set_xlabel("% of decode step wall time")
    ax2.set_title("Where a Talaria decode step goes (default setup)")
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(COMPONENTS))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
