"""Micro-measurements that price optimisations the step profile cannot try directly.

    attention_batching     the per-sequence decode attention loop vs the engine's batched one
    openmp_teams           the cloud's decode GEMM sweep on its compute thread vs on a second
                           thread (what a per-connection thread used to cost; see compute.py)
(Transports are compared as measured variants of the step profile, not as micro-measurements.)
"""

from __future__ import annotations

import os
import time

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
    """Per decode step (all layers): `attention` once per sequence (what the engine did before)
    vs `decode_attention` over all of them (what it does now), caches of different lengths."""
    import torch

    from talaria_proxy.layers import attention, decode_attention

    H, Hkv, D, L = arch["num_heads"], arch["num_kv_heads"], arch["head_dim"], arch["num_layers"]
    g = torch.Generator().manual_seed(0)
    lengths = [max(1, seq_len - 2 * i) for i in range(batch)]  # sequences of a batch differ in length
    q = torch.randn(batch, H, D, generator=g)  # [B, H, D]: one new token each
    ks = [torch.randn(n, Hkv, D, generator=g) for n in lengths]
    vs = [torch.randn(n, Hkv, D, generator=g) for n in lengths]
    positions = [n - 1 for n in lengths]

    def loop():
        return torch.cat([attention(q[i : i + 1], ks[i], vs[i], positions[i], None) for i in range(batch)])

    def batched():
        return decode_attention(q, ks, vs, positions, None)

    torch.testing.assert_close(batched(), loop(), rtol=1e-4, atol=1e-5)  # the same numbers, or no price
    return {"loop_ms_per_step": _timeit(loop, reps) * L * 1e3, "batched_ms_per_step": _timeit(batched, reps) * L * 1e3}


def openmp_teams(model_path, compute_dtype: str, threads: int = 2) -> dict:
    """`_openmp_teams` in a fresh process, as in a cloud process: the benchmark's own process
    already holds OpenMP teams (HF, GEMM tables), which would slow both sides alike."""
    import json
    import subprocess
    import sys

    from benchmarks.common import thread_env

    out = subprocess.run([sys.executable, "-m", "benchmarks.micro", "openmp-teams", str(model_path), compute_dtype,
                          str(threads)], env={**os.environ, **thread_env(threads)}, capture_output=True, text=True,
                         check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _openmp_teams(model_path, compute_dtype: str, threads: int = 2, row_counts=(1, 8), reps: int = 3) -> dict:
    """Model-order sweeps of the service's calls (decode shapes) with `threads` torch threads, run
    on the compute thread that loaded the model vs on a second thread while the first one's
    OpenMP team lives on: the second team makes idle workers sleep instead of spin."""
    import threading

    import torch

    from benchmarks.breakdown import call_input
    from benchmarks.servers import cloud_mode
    from cloud_backend.cli import build_service
    from cloud_backend.compute import ComputeThread
    from cloud_backend.settings import CloudSettings

    compute = ComputeThread(threads).start()
    try:
        service = compute.call(build_service, CloudSettings(model=str(model_path), threads=threads, **cloud_mode(compute_dtype)))
        out = {}
        for rows in row_counts:
            g = torch.Generator().manual_seed(0)
            xs = [(op.name, call_input(service, op.name, rows, g)) for op in service.manifest.ops]

            def sweep():
                for name, x in xs:
                    service.linear(name, x)

            def second_thread() -> float:
                box = {}

                def body():
                    torch.set_num_threads(threads)
                    box["s"] = _timeit(sweep, reps)

                t = threading.Thread(target=body, name="second-team")
                t.start()
                t.join()
                return box["s"]

            out[f"rows={rows}"] = {"compute_thread_ms": compute.call(_timeit, sweep, reps) * 1e3,
                                   "second_thread_ms": second_thread() * 1e3}
        return {"threads": threads, **out}
    finally:
        compute.stop()


if __name__ == "__main__":  # python -m benchmarks.micro openmp-teams MODEL COMPUTE_DTYPE THREADS
    import json
    import sys

    if len(sys.argv) != 5 or sys.argv[1] != "openmp-teams":
        sys.exit("usage: python -m benchmarks.micro openmp-teams MODEL COMPUTE_DTYPE THREADS")
    print(json.dumps(_openmp_teams(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
