"""`talaria bench [speed]`: plain HF transformers vs Talaria over HTTP on the same checkpoint.

Per model, in one run on one machine:
  1. `talaria cloud` + `talaria proxy` subprocesses (one OpenMP thread each), driven through the
     OpenAI endpoint with 1 stream and 8 concurrent streams (`benchmarks.streams`), in rounds that
     alternate with HF `generate` in this process (batch 1 and 8; 1 and 2 torch threads; the better
     thread count is the baseline);
  2. micro-measurements (batched decode attention; GEMMs on one compute thread vs a second one);
  3. the in-process step profile (`benchmarks.breakdown`) of the default setup, then of variants that
     each change one thing (other transport, 2 cloud threads, other precision modes), which price
     optimisations directly.
The report (`benchmarks.speed_report`) writes bench.md, bench.json and bench.png.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, machine, make_prompts, model_dir, write_report

ROWS = (1, 4, 8)  # rows per call in the GEMM tables: decode of 1 and 8 sequences, and half of 8
# repeats: interleaved HF/Talaria rounds per model size (the 0.5b rounds take minutes each)
QUICK = {"models": ["tiny"], "prompt_len": 16, "new_tokens": 32, "repeats": {"tiny": 5}, "profile_steps": 16}
FULL = {"models": ["tiny", "0.5b"], "prompt_len": 32, "new_tokens": 32, "repeats": {"tiny": 5, "0.5b": 3},
        "profile_steps": 16}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _tokenizer_size(path: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(path))


def _decode(path: Path, tokens: list[int]) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).decode(tokens)


def talaria_key(streams: int, cloud_threads: int) -> str:
    """Key of a Talaria point in the report: the default cloud (1 thread) keeps the short key."""
    return f"streams={streams}" + (f",cloud_threads={cloud_threads}" if cloud_threads != 1 else "")


def _interleaved(hf, tals: dict, repeats: int, hf_threads=(1, 2)) -> tuple[dict, dict]:
    """Alternate HF and Talaria samples so that all see the same (shared, varying) machine load.
    `tals`: cloud threads -> TalariaClient of a cloud with that many threads (proxy: 1 thread)."""
    from benchmarks.common import hf_metrics, median_of_runs

    hf_samples = {(t, b): [] for t in hf_threads for b in (1, 8)}
    tal_samples: dict[tuple[int, int], list] = {(c, k): [] for c in tals for k in (1, 8)}
    loads = []
    for r in range(repeats):
        loads.append(load_average())
        for b in (1, 8):
            for t in hf_threads:
                hf_samples[t, b].append(hf.sample(t, b))
            for c, tal in tals.items():
                tal_samples[c, b].append(tal.sample(b))
        _say(f"  round {r + 1}/{repeats}: HF b1 {hf_samples[hf_threads[0], 1][-1][1]:.2f}s; Talaria 1 / 8 streams: "
             + ", ".join(f"cloud {c} thr {tal_samples[c, 1][-1]['total_s']:.2f}s / {tal_samples[c, 8][-1]['total_s']:.2f}s"
                         for c in tals) + f" (load {loads[-1]:.1f})")
    points = {}
    for (t, b), samples in hf_samples.items():
        m = median_of_runs([hf_metrics(first, total, b, hf.new_tokens) for first, total in samples])
        m.update(threads=t, batch=b, repeats=repeats)
        points[f"threads={t},batch={b}"] = m
    talaria = {talaria_key(k, c): {"metrics": {**median_of_runs(v), "streams": k, "cloud_threads": c,
                                               "repeats": repeats}}
               for (c, k), v in tal_samples.items()}
    return {"points": points, "load_avg": loads}, talaria


def _profiles(path: Path, cfg: dict, prompts, log_dir: Path, main: dict, variants: bool, cloud) -> dict:
    """Step profiles of the default setup and of variants that each change one thing, run in two
    passes (forward, then reverse order) so that slow drifts of the shared machine's load cancel."""
    from benchmarks import breakdown, servers

    mode, transport = main["compute_dtype"], main["transport"]
    runs = [(mode, transport, 1)]
    if variants:  # each changes one thing: transport, cloud threads, answer kind, precision
        runs += [(mode, t, 1) for t in ("tcp", "websocket", "http") if t != transport]
        runs += [(mode, transport, 2)]
        if main.get("reply") == "projected":
            runs += [(f"{mode}/full", transport, 1)]
        runs += [(m, transport, 1) for m in ("float64", "mixed", "float32") if m != mode]
    # GEMM tables with one thread only: timing a 2-thread OpenMP team on a shared 2-core machine
    # measures the other jobs' scheduling, not the GEMM (the 2-thread variant keeps its total only)
    tables = {(m, threads): {} for m, _, threads in runs}
    for m in dict.fromkeys(m for m, _, threads in runs if threads == 1):
        _say(f"  GEMM table: {m}, 1 thread")
        tables[m, 1] = breakdown.gemm_table(path, m, 1, ROWS)
    raws: dict = {r: [] for r in runs}
    per_pass = max(1, cfg["repeats"] // 2)
    for order in (runs, runs[::-1]):
        for m, trans, threads in order:
            own = (m, threads) != (mode, 1)
            srv = servers.start_cloud(path, log_dir, m, threads).wait_ready() if own else cloud
            try:
                raws[m, trans, threads].append(breakdown.profile_engine(
                    srv, tables[m, threads], prompts, cfg["profile_steps"], transport=trans, repeats=per_pass))
            finally:
                if own:
                    srv.stop()
    out = {}
    for (m, trans, threads), raw in raws.items():
        label = f"{m}, {trans}, cloud {threads} thread{'s' if threads > 1 else ''}"
        out[label] = {**breakdown.summarise(raw), "compute_dtype": m, "transport": trans, "cloud_threads": threads,
                      "gemm_ms_by_rows": {r: 1e3 * sum(v["gemm_s"] for (_, rows), v in tables[m, threads].items()
                                                       if rows == r) for r in ROWS if tables[m, threads]}}
        for b in (1, 8):
            d = out[label][f"batch={b}"]["decode"]
            _say(f"  {label}, batch {b}: {d['total_ms']:.1f} ms/step = GEMM {d['cloud_gemm_ms']:.1f} + transport "
                 f"{d['transport_ms']:.1f} + mask {d['masking_ms']:.1f} + attention {d['attention_ms']:.1f} + sampling "
                 f"{d['sampling_ms']:.1f} + other {d['other_cvm_ms']:.1f} (medians)")
    return out


def bench_model(size: str, cfg: dict, log_dir: Path, variants: bool, pad: bool = True,
                cloud2_wanted: bool = True) -> dict:
    import torch

    from benchmarks import micro, ring_micro, servers
    from benchmarks.hf_baseline import HFBaseline
    from benchmarks.streams import TalariaClient

    path = model_dir(size)
    prompts = make_prompts(8, cfg["prompt_len"], 3, _tokenizer_size(path), seed=0)
    n, reps = cfg["new_tokens"], cfg["repeats"]
    main = servers.defaults()
    res: dict = {"size": size, "path": str(path), "setup": main, "rounds": reps}
    torch.set_num_threads(1)  # this process is the client and, in the profile, the CVM (HF sets its own)
    _say(f"[{size}] starting talaria cloud ({main['compute_dtype']}, 1 thread) and proxy "
         f"({main['transport']}, 1 thread)")
    cloud = servers.start_cloud(path, log_dir, main["compute_dtype"]).wait_ready()
    proxy = hf = tal = None
    extra = []  # the cloud with all (2) cores and its proxy, for the whole-machine comparison
    try:
        proxy = servers.start_proxy(cloud.url, log_dir, main["transport"]).wait_ready()
        tals = {}
        if cloud2_wanted:
            cloud2 = servers.start_cloud(path, log_dir, main["compute_dtype"], threads=2)
            extra.append(cloud2)  # stopped in `finally` even if it never gets ready
            cloud2.wait_ready()
            extra.append(servers.start_proxy(cloud2.url, log_dir, main["transport"]))
            extra[1].wait_ready()
        hf = HFBaseline(path, prompts, n)
        tal = TalariaClient(proxy, cloud, prompts, n)
        tals[1] = tal
        if cloud2_wanted:
            tals[2] = TalariaClient(extra[1], cloud2, prompts, n)
        _say(f"[{size}] warm-up, then {reps} interleaved rounds of HF (1, 2 threads) and Talaria (cloud "
             f"{' and '.join(map(str, tals))} thread(s); 1, 8 streams)")
        hf.warm_up()
        for t in tals.values():
            t.warm_up()
        res["hf"], res["talaria"] = _interleaved(hf, tals, reps)
        res["hf"]["tokens_prompt0"] = hf.tokens_prompt0
        tal.sample(1)  # texts of one stream, compared with HF's greedy text
        res["talaria"]["streams=1"]["matches_hf_text"] = tal.texts[0] == _decode(path, hf.tokens_prompt0)
        if 2 in tals:
            tals[2].close()
        for srv in extra[::-1]:
            srv.stop()
        extra = []
        tal.close()
        tal = None
        proxy.stop()
        proxy = None
        arch = _arch(path)
        _say(f"[{size}] micro-measurements")
        res["micro"] = {
            "attention_b8": micro.attention_batching(arch, 8, cfg["prompt_len"] + cfg["profile_steps"] // 2),
            "openmp_teams": micro.openmp_teams(path, main["compute_dtype"], threads=2),
        }
        _say(f"  {res['micro']}")
        _say(f"[{size}] in-process step profiles")
        res["profile"] = _profiles(path, cfg, prompts, log_dir, main, variants, cloud=cloud)
        _say(f"[{size}] micro: ring kernel vs float GEMMs of the op shapes")
        res["micro"]["ring"] = _guarded(ring_micro.run_fresh, arch)
        if pad:
            from benchmarks import pad_bench

            cloud.stop()  # the pad clouds need the memory
            _say(f"[{size}] scheme pad, pad source dealer")
            res["pad"] = _guarded(pad_bench.pad_phase, path, cfg, prompts, log_dir, hf, main["transport"], size=size)
        hf.close()
        hf = None
    finally:
        for thing in (tal, hf, proxy, *extra[::-1]):
            if thing is not None:
                getattr(thing, "close", getattr(thing, "stop", None))()
        cloud.stop()
    return res


def _guarded(fn, *args, **kwargs) -> dict:
    """fn's result, or {'error': ...}: a late part that fails must not lose the run's other figures."""
    import traceback

    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # reported in bench.md and bench.json, with the traceback on stderr
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _arch(path: Path) -> dict:
    from transformers import AutoConfig

    from cloud_backend.checkpoint import arch_from_config

    return arch_from_config(AutoConfig.from_pretrained(path)).model_dump()


def run(args) -> int:
    from benchmarks import speed_report

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("models", "prompt_len", "new_tokens", "repeats"):
        value = getattr(args, key, None)
        if value:
            cfg[key] = value.split(",") if key == "models" else value
    if isinstance(cfg["repeats"], int):
        cfg["repeats"] = {size: cfg["repeats"] for size in cfg["models"]}
    out = Path(args.out or ("results/bench/quick" if args.quick else "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="talaria-bench-"))  # server logs, kept for post-mortems
    started = time.time()
    cfg["variants"], cfg["cloud2"] = not args.no_variants, not getattr(args, "no_cloud2", False)
    report = {"mode": "quick" if args.quick else "full", "config": cfg, "machine": machine(),
              "threads": {"cloud": 1, "proxy": 1, "bench_process_as_client_and_cvm": 1, "hf": [1, 2]},
              "load_avg_start": load_average(), "models": {}}
    for size in cfg["models"]:
        report["models"][size] = bench_model(size, {**cfg, "repeats": cfg["repeats"].get(size, 3)}, log_dir,
                                             variants=not args.no_variants, pad=not getattr(args, "no_pad", False),
                                             cloud2_wanted=not getattr(args, "no_cloud2", False))
        _say(f"[{size}] done after {time.time() - started:.0f}s")
    report["load_avg_end"] = load_average()
    report["elapsed_s"] = time.time() - started
    write_report(out, "bench", report, speed_report.markdown, speed_report.plot)
    _say(f"wrote {out}/bench.md, bench.json, bench.png in {report['elapsed_s']:.0f}s (server logs: {log_dir})")
    return 0
