"""Micro-measurement of the pad scheme's ring kernel against float GEMMs of the same shapes.

For every op kind of the model (its real shapes: d_in plus the folded-bias row where the op has a
bias, d_out), at 1, 8 and 64 rows, one thread:
    float32   x @ W (float32), what a float32 cloud computes
    float64   x @ W (float64)
    ring      cloud_backend.ring_kernel.ring_matmul(u, W_bar): v = u W_bar mod t, exact
    ring_ref  the exact float64-limb reference formulation (ring_kernel.ring_matmul_limbs), when
              ring_matmul is a faster one
Each timing sweeps over enough copies of the weights to exceed the last-level cache, so the
weights come from memory as in a model step. Runs in a fresh process (`python -m
benchmarks.ring_micro`), away from the benchmark's OpenMP teams.

Prediction written before measuring (the report repeats it next to the measured ratios): a decode
GEMM (1-8 rows) is bound by weight bytes, and the ring kernel reads W_bar in float64 (8 bytes
against float32's 4) once per call with every limb of every row stacked into one GEMM, so ~2x
float32 at 1 row; at 64 rows it is bound by multiply-adds: 4 limb rows per row in float64 (half
float32's vector width) make ~8x.
"""

from __future__ import annotations

import json
import math
import os
import time

PREDICTION = ("decode (1-8 rows) is bound by weight bytes: float64 W_bar is 2x float32's bytes, read once per "
              "call with all limb rows in one GEMM -> ~2x float32 at 1 row; at 64 rows multiply-adds bound it: "
              "4 limb rows per row in float64 (half float32's vector width) -> ~8x. The native kernel (W_bar held "
              "in float32, widened in registers) reads float32's bytes: ~1x float32 at 1 row, a 1-row model "
              "sweep 459 -> ~130 ms (measured in-process before the change: 126 ms)")
CACHE_BYTES = 96 << 20  # weights swept per timing: beyond any last-level cache here


def op_shapes(arch: dict) -> dict[str, tuple[int, int]]:
    """(d, o) of each op kind's ring GEMM: d counts the folded-bias row (qkv with attention_bias)."""
    h, q, kv = arch["hidden_size"], arch["num_heads"] * arch["head_dim"], arch["num_kv_heads"] * arch["head_dim"]
    return {"qkv": (h + (1 if arch.get("attention_bias") else 0), q + 2 * kv), "o": (q, h),
            "gate_up": (h, 2 * arch["intermediate_size"]), "down": (arch["intermediate_size"], h)}


def _timeit(fn, weights, reps: int) -> float:
    """Median over reps of one sweep over all weight copies, per call, in ms."""
    for w in weights:
        fn(w)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in weights:
            fn(w)
        ts.append((time.perf_counter() - t0) / len(weights))
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def measure(arch: dict, row_counts=(1, 8, 64), reps: int = 5) -> dict:
    import torch

    from cloud_backend import ring_kernel
    from talaria_wire.ring import T, W_BITS, limb_bits

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    native = ring_kernel.ring_native.library() is not None
    out = {"threads": 1, "prediction": PREDICTION, "shapes": {},
           "kernel": ring_kernel.NATIVE_KERNEL if native else ring_kernel.kernel_name(torch.zeros(1, 1, dtype=torch.float64))}
    fast = hasattr(ring_kernel, "ring_matmul_limbs")
    for kind, (d, o) in op_shapes(arch).items():
        copies = min(64, max(1, math.ceil(CACHE_BYTES / (8 * d * o))))
        w_bar = [torch.randint(-(2**W_BITS), 2**W_BITS + 1, (d, o), generator=g).double() for _ in range(copies)]
        w32 = [w.float() for w in w_bar]
        limb = limb_bits(d)
        rows_out = {}
        for n in row_counts:
            x32 = torch.randn(n, d, generator=g)
            x64 = x32.double()
            u = torch.randint(0, 2**62, (n, d), generator=g) % T
            r = {"float32_ms": _timeit(lambda w: x32 @ w, w32, reps),
                 "float64_ms": _timeit(lambda w: x64 @ w, w_bar, reps),
                 "ring_blas_ms": _timeit(lambda w: ring_kernel.ring_matmul(u, w, limb), w_bar, reps)}
            if native:  # the kernel the cloud runs: the float32-held blocks (one copy per float64 one)
                blocks = [ring_kernel.prepare_weights(w) for w in w_bar]
                r["ring_ms"] = _timeit(lambda w: ring_kernel.ring_matmul(u, w, limb), blocks, reps)
                if not torch.equal(ring_kernel.ring_matmul(u, blocks[0], limb), ring_kernel.ring_matmul(u, w_bar[0], limb)):
                    raise AssertionError(f"{kind}: the native ring kernel differs from the BLAS one")
                del blocks
            else:
                r["ring_ms"] = r["ring_blas_ms"]
            if fast:
                r["ring_ref_ms"] = _timeit(lambda w: ring_kernel.ring_matmul_limbs(u, w, limb), w_bar, reps)
                if not torch.equal(ring_kernel.ring_matmul(u, w_bar[0], limb), ring_kernel.ring_matmul_limbs(u, w_bar[0], limb)):
                    raise AssertionError(f"{kind}: the fast ring kernel differs from the exact reference")
            r["ring_over_float32"] = r["ring_ms"] / r["float32_ms"]
            r["ring_over_float64"] = r["ring_ms"] / r["float64_ms"]
            rows_out[f"rows={n}"] = r
        out["shapes"][kind] = {"d": d, "o": o, "copies": copies, "limb_bits": limb, **rows_out}
        del w_bar, w32
    return out


def run_fresh(arch: dict, timeout: float = 1800) -> dict:
    """`measure` in a fresh one-thread process."""
    import subprocess
    import sys

    from benchmarks.common import thread_env

    done = subprocess.run([sys.executable, "-m", "benchmarks.ring_micro", json.dumps(arch)],
                          env={**os.environ, **thread_env(1)}, capture_output=True, text=True, check=True, timeout=timeout)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # python -m benchmarks.ring_micro ARCH_JSON
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.ring_micro ARCH_JSON")
    print(json.dumps(measure(json.loads(sys.argv[1]))))
