"""Small pure helpers shared by the benchmarks: prompts, statistics, metric arithmetic, tables.

Everything here is cheap to import (no torch at module level) and is what tests/benchmarks checks.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

# One intra-op thread per server process: on a 2-core machine two processes that spin OpenMP
# threads make every small op ~10x slower.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def thread_env(threads: int) -> dict[str, str]:
    return {**ONE_THREAD_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def median(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def make_prompts(batch: int, length: int, low: int, high: int, seed: int = 0) -> list[list[int]]:
    """`batch` prompts of exactly `length` token ids drawn from [low, high) (equal lengths: no padding)."""
    if not 0 <= low < high:
        raise ValueError("need 0 <= low < high")
    rng = random.Random(seed)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(batch)]


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# -- Prometheus text -------------------------------------------------------------------------
def parse_prometheus(text: str) -> dict[str, float]:
    """{'name' or 'name{labels}': value} for every sample line of a text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "}" in line:
            name, _, rest = line.rpartition("}")
            name += "}"
        else:
            name, _, rest = line.partition(" ")
        parts = rest.split()
        if parts:
            out[name.strip()] = float(parts[0])
    return out


def metric_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


# -- the metrics we report -------------------------------------------------------------------
def hf_metrics(first_s: float, total_s: float, batch: int, new_tokens: int) -> dict[str, float]:
    """HF generate timed twice: max_new_tokens=1 (prefill + 1 token) and =new_tokens.

    ms/token is the decode step time (every sequence of the batch gets one token per step).
    """
    if new_tokens < 2:
        raise ValueError("need at least 2 new tokens to separate prefill from decode")
    return {
        "ttft_ms": first_s * 1e3,
        "ms_per_token": (total_s - first_s) / (new_tokens - 1) * 1e3,
        "tokens_per_s": batch * new_tokens / total_s,
        "total_s": total_s,
    }


@dataclass
class StreamRecord:
    """One streamed request, perf_counter seconds; t_first: first chunk carrying text."""

    t_start: float
    t_first: float | None
    t_end: float
    tokens: int


def stream_metrics(records: list[StreamRecord]) -> dict[str, float]:
    """Concurrent streams of one run -> median TTFT, median per-stream decode ms/token, tokens/s."""
    if not records:
        raise ValueError("no streams")
    ttft = [r.t_first - r.t_start for r in records if r.t_first is not None]
    itl = [(r.t_end - r.t_first) / (r.tokens - 1) for r in records if r.t_first is not None and r.tokens > 1]
    wall = max(r.t_end for r in records) - min(r.t_start for r in records)
    tokens = sum(r.tokens for r in records)
    return {
        "ttft_ms": median(ttft) * 1e3,
        "ms_per_token": median(itl) * 1e3,
        "tokens_per_s": tokens / wall if wall > 0 else float("nan"),
        "total_s": wall,
        "tokens": tokens,
    }


def per_token_from_metrics(delta: dict[str, float], proxy_cpu_s: float, cloud_cpu_s: float) -> dict[str, float]:
    """Proxy /metrics deltas of a run -> per-token wire and CPU figures."""
    tokens = delta.get("talaria_completion_tokens_total", 0.0)
    if tokens <= 0:
        return {}
    calls = delta.get("talaria_cloud_call_seconds_count", 0.0)
    sent = delta.get("talaria_cloud_bytes_sent_total", 0.0)
    received = delta.get("talaria_cloud_bytes_received_total", 0.0)
    mask_s = delta.get("talaria_mask_seconds_total", 0.0)
    step_s = delta.get("talaria_engine_step_seconds_total", 0.0)
    steps = delta.get("talaria_engine_steps_total", 0.0)
    return {
        "calls_per_token": calls / tokens,
        "bytes_per_token": (sent + received) / tokens,
        "bytes_sent_per_token": sent / tokens,
        "bytes_received_per_token": received / tokens,
        "ms_per_step_server": step_s / steps * 1e3 if steps else float("nan"),
        "mask_share_of_proxy_cpu": mask_s / proxy_cpu_s if proxy_cpu_s > 0 else float("nan"),
        "mask_share_of_step_time": mask_s / step_s if step_s > 0 else float("nan"),
        "proxy_cpu_ms_per_token": proxy_cpu_s / tokens * 1e3,
        "cloud_cpu_ms_per_token": cloud_cpu_s / tokens * 1e3,
    }


def median_of_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise median over repeated runs (keys of the first run)."""
    return {k: median(r.get(k) for r in runs) for k in runs[0]} if runs else {}


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


# -- output ------------------------------------------------------------------------------------
def fmt(x, digits: int = 3) -> str:
    """Compact number for tables: '-' for missing, 3 significant digits otherwise."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    if any(len(r) != len(headers) for r in rows):
        raise ValueError("every row needs one cell per header")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _plain(obj):
    if is_dataclass(obj):
        return asdict(obj)
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None  # strict JSON has no NaN
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(_plain(data), indent=2) + "\n")


def write_report(out: Path, name: str, report: dict, markdown, plot) -> None:
    """out/NAME.json, NAME.md (markdown(report), also printed) and NAME.png (plot(report, path))."""
    write_json(out / f"{name}.json", report)
    md = markdown(report)
    (out / f"{name}.md").write_text(md)
    plot(report, out / f"{name}.png")
    print(md)


def machine() -> dict:
    import platform

    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.is_available()}


def model_dir(size: str, arch: str = "qwen2") -> Path:
    """The generated random checkpoint of `size` (the cache `talaria up` uses), made on demand."""
    from talaria_cli.tiny_model import ensure_tiny_model, tiny_model_dir

    return ensure_tiny_model(tiny_model_dir(arch, size), arch, 0, size)
