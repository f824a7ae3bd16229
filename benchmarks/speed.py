"""`talaria bench [speed]`: plain HF transformers vs Talaria over HTTP on the same checkpoint.

Per model, in one run on one machine:
  1. HF `generate` in this process (batch 1 and 8; 1 and 2 torch threads; the better is the baseline);
  2. `talaria cloud` + `talaria proxy` subprocesses (one OpenMP thread each), driven through the
     OpenAI endpoint with 1 stream and 8 concurrent streams (`benchmarks.streams`);
  3. the in-process step profile against the same cloud (`benchmarks.breakdown`), then against
     variant clouds (float32 wire; 2 cloud threads) that price two of the optimisations directly;
  4. micro-measurements for the others (batched attention, a raw-socket transport floor, a new
     connection per call).
The report (`benchmarks.speed_report`) writes bench.md, bench.json and bench.png.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, make_prompts, model_dir, write_json

QUICK = {"models": ["tiny"], "prompt_len": 16, "new_tokens": 32, "repeats": 5, "profile_steps": 16}
FULL = {"models": ["tiny", "0.5b"], "prompt_len": 32, "new_tokens": 32, "repeats": 5, "profile_steps": 16}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _machine() -> dict:
    import os

    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.is_available()}


def _tokenizer_size(path: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(path))


def _decode(path: Path, tokens: list[int]) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).decode(tokens)


def _interleaved(hf, tal, repeats: int, hf_threads=(1, 2)) -> tuple[dict, dict]:
    """Alternate HF and Talaria samples so that both see the same (shared, varying) machine load."""
    from benchmarks.common import hf_metrics, median_of_runs

    hf_samples = {(t, b): [] for t in hf_threads for b in (1, 8)}
    tal_samples: dict[int, list] = {1: [], 8: []}
    loads = []
    for r in range(repeats):
        loads.append(load_average())
        for b in (1, 8):
            for t in hf_threads:
                hf_samples[t, b].append(hf.sample(t, b))
            tal_samples[b].append(tal.sample(b))
        _say(f"  round {r + 1}/{repeats}: HF b1 {hf_samples[hf_threads[0], 1][-1][1]:.2f}s, Talaria 1 stream "
             f"{tal_samples[1][-1]['total_s']:.2f}s, Talaria 8 streams {tal_samples[8][-1]['total_s']:.2f}s "
             f"(load {loads[-1]:.1f})")
    points = {}
    for (t, b), samples in hf_samples.items():
        m = median_of_runs([hf_metrics(first, total, b, hf.new_tokens) for first, total in samples])
        m.update(threads=t, batch=b, repeats=repeats)
        points[f"threads={t},batch={b}"] = m
    talaria = {f"streams={k}": {"metrics": {**median_of_runs(v), "streams": k, "repeats": repeats}}
               for k, v in tal_samples.items()}
    return {"points": points, "load_avg": loads}, talaria


def bench_model(size: str, cfg: dict, log_dir: Path, variants: bool) -> dict:
    import torch

    from benchmarks import breakdown, servers
    from benchmarks.hf_baseline import HFBaseline
    from benchmarks.streams import TalariaClient

    path = model_dir(size)
    prompts = make_prompts(8, cfg["prompt_len"], 3, _tokenizer_size(path), seed=0)
    n, reps = cfg["new_tokens"], cfg["repeats"]
    res: dict = {"size": size, "path": str(path)}
    torch.set_num_threads(1)  # this process is the client and, in the profile, the CVM (HF sets its own)
    _say(f"[{size}] starting talaria cloud (float64, 1 thread) and proxy (1 thread)")
    cloud = servers.start_cloud(path, log_dir).wait_ready()
    proxy = hf = tal = None
    try:
        proxy = servers.start_proxy(cloud.url, log_dir).wait_ready()
        hf = HFBaseline(path, prompts, n)
        tal = TalariaClient(proxy, cloud, prompts, n)
        _say(f"[{size}] warm-up, then {reps} interleaved rounds of HF (1, 2 threads) and Talaria (1, 8 streams)")
        hf.warm_up()
        tal.warm_up()
        res["hf"], res["talaria"] = _interleaved(hf, tal, reps)
        res["hf"]["tokens_prompt0"] = hf.tokens_prompt0
        res["talaria"]["streams=1"]["matches_hf_text"] = None
        tal.sample(1)  # texts of one stream, compared with HF's greedy text
        res["talaria"]["streams=1"]["matches_hf_text"] = tal.texts[0] == _decode(path, hf.tokens_prompt0)
        hf.close()
        hf = None
        proxy.stop()
        proxy = None
        _say(f"[{size}] in-process step profile")
        prof = breakdown.profile_engine(cloud.url, prompts, cfg["profile_steps"], repeats=reps, say=_say)
        res["profile"] = {"float64, cloud 1 thread": prof}
        arch = prof["arch"]
        d = arch["hidden_size"]
        res["micro"] = {
            "attention_b8": breakdown.attention_batching(arch, 8, cfg["prompt_len"] + cfg["profile_steps"] // 2),
            "connection": breakdown.connection_reuse(cloud.url, "0.o", d, torch.float64),
            # one hidden-size float64 row each way, plus ~100 bytes of safetensors header
            "raw_socket_ms": breakdown.raw_socket_round_trip(8 * d + 100, 8 * d + 100) * 1e3,
        }
        _say(f"  micro: {res['micro']}")
    finally:
        if tal is not None:
            tal.close()
        if hf is not None:
            hf.close()
        if proxy is not None:
            proxy.stop()
        cloud.stop()
    if variants:
        for label, threads, dtype in (("float32, cloud 1 thread", 1, "float32"), ("float64, cloud 2 threads", 2, "float64")):
            _say(f"[{size}] variant cloud: {label}")
            cloud = servers.start_cloud(path, log_dir, threads=threads, dtype=dtype).wait_ready()
            try:
                res["profile"][label] = breakdown.profile_engine(cloud.url, prompts, cfg["profile_steps"],
                                                                 repeats=reps, say=_say, label=f" [{label}]")
            finally:
                cloud.stop()
    return res


def run(args) -> int:
    from benchmarks import speed_report

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("models", "prompt_len", "new_tokens", "repeats"):
        value = getattr(args, key, None)
        if value:
            cfg[key] = value.split(",") if key == "models" else value
    out = Path(args.out or ("results/bench/quick" if args.quick else "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="talaria-bench-"))  # server logs, kept for post-mortems
    started = time.time()
    report = {"mode": "quick" if args.quick else "full", "config": cfg, "machine": _machine(),
              "threads": {"cloud": 1, "proxy": 1, "bench_process_as_client_and_cvm": 1, "hf": [1, 2]},
              "load_avg_start": load_average(), "models": {}}
    for size in cfg["models"]:
        report["models"][size] = bench_model(size, cfg, log_dir, variants=not args.no_variants)
    report["load_avg_end"] = load_average()
    report["elapsed_s"] = time.time() - started
    write_json(out / "bench.json", report)
    md = speed_report.markdown(report)
    (out / "bench.md").write_text(md)
    speed_report.plot(report, out / "bench.png")
    print(md)
    _say(f"wrote {out}/bench.md, bench.json, bench.png in {report['elapsed_s']:.0f}s (server logs: {log_dir})")
    return 0
