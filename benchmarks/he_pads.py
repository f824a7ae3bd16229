"""Cost of the `he` pad source: `measure(size) -> dict` of figures, for the bench to report.

Per op kind of a model shape, one batch of N = 8192 ciphertext slots (8192 - check_rows pad rows):
CVM encryption (CPU s), the cloud's ciphertext GEMM (with expanding the a_j from their seed) and
re-randomisation (s), CVM decryption
(CPU s), bytes up and down. From those: pad rows/s per op kind, and tokens/s of complete pads
(a token takes one pad row of every op: 4 per layer and the LM head), sequential on one machine
(CVM and cloud share the cores, as in the tests) and pipelined (each party on its own machine:
the slower one sets the rate), CVM CPU s per token for encryption and for decryption.

`tiny` runs every op at full size, end to end (its decrypted pads are checked against the exact
ring product). `0.5b` cannot run at full size here (one lm_head batch is ~3e13 float64
multiply-adds), so each part is timed on a slice and scaled by the work it stands for, which is
linear in each axis: encryption in d (ciphertexts), GEMM in o x d x N, re-randomisation and
decryption in o (answers). The `slices` entry says what was timed. Random W_bar of the model's
shapes: the cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import load_average
from cloud_backend import he_kernel
from cloud_backend.ring_kernel import prepare_weights, ring_matmul
from talaria_proxy.pads import he_keys
from talaria_wire.he_params import CT_BYTES, N, expand_uniform
from talaria_wire.ring import PRIMES, SEED_BYTES, T, W_BITS, limb_bits

CHECK_ROWS = 16
# op kind -> (d: d_in + folded bias, o); layers
SHAPES = {
    "tiny": ({"qkv": (65, 128), "o": (64, 64), "gate_up": (64, 320), "down": (160, 64), "lm_head": (64, 1024)}, 2),
    "0.5b": ({"qkv": (897, 1152), "o": (896, 896), "gate_up": (896, 9728), "down": (4864, 896),
              "lm_head": (896, 151936)}, 24),
}
# what is timed of a 0.5b batch: ciphertexts encrypted, answers re-randomised and decrypted, and a
# GEMM block of gemm_cols columns x coeffs coefficients (wide enough that splitting the ciphertexts
# into limbs is amortised over the columns, as in the cloud's own blocks)
SLICE = {"enc_d": 64, "cols": 32, "gemm_cols": 512, "coeffs": 64}
# H200 float64 tensor-core peak (~67 TFLOP/s): the GEMM prediction when no GPU is at hand
GPU_FP64_FLOPS = 67e12


def _cpu(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def _wall(fn, *args):
    """(result, wall s); the CPU seconds of the call go to _LAST_CPU (all threads)."""
    global _LAST_CPU
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    _LAST_CPU = time.process_time() - c0
    return out, time.perf_counter() - t0


_LAST_CPU = 0.0


def _random_w(d: int, o: int):
    """Random W_bar in the form the cloud serves it (the native kernel's float32 blocks when it builds)."""
    return prepare_weights(torch.randint(-(1 << W_BITS), (1 << W_BITS) + 1, (d, o)).to(torch.float64))


def _full_batch(keys, d: int, o: int) -> dict[str, float]:
    """One real batch, end to end, checked exactly."""
    r = torch.randint(0, T, (N, d))
    w = _random_w(d, o)
    enc, enc_s = _cpu(he_keys.encrypt, keys, r.t().contiguous())
    a_hat, expand_s = _wall(expand_uniform, enc.seed, "a", d, N)  # the cloud expands the a_j from the seed
    expand_cpu = _LAST_CPU
    halves = torch.stack([a_hat, enc.b], dim=1)
    answers, gemm_s = _wall(he_kernel.ciphertext_matmul, w, halves)
    gemm_s += expand_s
    gemm_cpu = _LAST_CPU + expand_cpu
    _, rerand_s = _wall(he_kernel.rerandomise, answers, keys.pk_seed, keys.pk_b)
    (m, _), dec_s = _cpu(he_keys.decrypt, keys, answers[:, 0], answers[:, 1])
    if not torch.equal(m.t()[:64], ring_matmul(r[:64], w, limb_bits(d))):
        raise AssertionError("he pads are not exact")
    return {"encrypt_cpu_s": enc_s, "gemm_s": gemm_s, "rerand_s": rerand_s, "decrypt_cpu_s": dec_s,
            "gemm_cpu_s": gemm_cpu, "rerand_cpu_s": _LAST_CPU}


def _sliced_batch(keys, d: int, o: int) -> dict[str, float]:
    """Parts of one batch on slices, scaled linearly to the whole batch."""
    de, oc, nc = min(d, SLICE["enc_d"]), min(o, SLICE["cols"]), SLICE["coeffs"]
    og = min(o, SLICE["gemm_cols"])
    _, enc_s = _cpu(he_keys.encrypt, keys, torch.randint(0, T, (de, N)))
    _, expand_s = _wall(expand_uniform, bytes(SEED_BYTES), "a", de, N)
    expand_cpu = _LAST_CPU * d / de
    halves = torch.stack([torch.stack([torch.randint(0, p, (d, nc)) for p in PRIMES], dim=1)] * 2, dim=1)  # [d, 2, P, nc]
    w = _random_w(d, og)
    _, gemm_s = _wall(he_kernel.matmul_block, w, halves)
    gemm_cpu = _LAST_CPU * (o / og) * (N / nc) + expand_cpu
    answers = torch.stack([torch.stack([torch.randint(0, p, (oc, N)) for p in PRIMES], dim=1)] * 2, dim=1)
    _, rerand_s = _wall(he_kernel.rerandomise, answers, keys.pk_seed, keys.pk_b)
    _, dec_s = _cpu(he_keys.decrypt, keys, answers[:, 0], answers[:, 1])
    return {"encrypt_cpu_s": enc_s * d / de, "gemm_s": gemm_s * (o / og) * (N / nc) + expand_s * d / de,
            "rerand_s": rerand_s * o / oc, "decrypt_cpu_s": dec_s * o / oc,
            "gemm_cpu_s": gemm_cpu, "rerand_cpu_s": _LAST_CPU * o / oc}


def measure(size: str = "tiny", threads: int | None = None) -> dict:
    """The figures for model shape `size` ('tiny' or '0.5b'); see the module docstring."""
    if threads:
        torch.set_num_threads(threads)
    shapes, layers = SHAPES[size]
    keys = he_keys.HeKeys.fresh()
    rows = N - CHECK_ROWS
    ops, token = {}, {"cloud_s": 0.0, "cloud_cpu_s": 0.0, "encrypt_cpu_s": 0.0, "decrypt_cpu_s": 0.0, "bytes_up": 0.0, "bytes_down": 0.0}
    for kind, (d, o) in shapes.items():
        parts = _full_batch(keys, d, o) if size == "tiny" else _sliced_batch(keys, d, o)
        cloud_s = parts["gemm_s"] + parts["rerand_s"]
        parts["cloud_cpu_s"] = parts["gemm_cpu_s"] + parts["rerand_cpu_s"]
        cvm_s = parts["encrypt_cpu_s"] + parts["decrypt_cpu_s"]
        up = d * CT_BYTES + CT_BYTES + 2 * SEED_BYTES  # b halves, public key, seeds: once per batch
        down = o * 2 * CT_BYTES
        flops = 2.0 * o * d * 2 * len(PRIMES) * N * he_kernel._limb_layout(d)[1]
        ops[kind] = {
            "d": d, "o": o, **{k: round(v, 4) for k, v in parts.items()},
            "pad_rows_per_s_sequential": rows / (cloud_s + cvm_s),
            "pad_rows_per_s_cpu": rows / (parts["cloud_cpu_s"] + cvm_s),  # CPU-seconds: robust to other load
            "pad_rows_per_s_pipelined": rows / max(cloud_s, cvm_s),
            "bytes_up_per_row": up / rows, "bytes_down_per_row": down / rows,
            "gemm_gflop": flops / 1e9, "gemm_gflops_here": flops / parts["gemm_cpu_s"] / 1e9,  # per CPU-second
            "predicted_gpu_gemm_s": flops / GPU_FP64_FLOPS,
        }
        count = 1 if kind == "lm_head" else layers
        token["cloud_s"] += count * cloud_s / rows
        token["cloud_cpu_s"] += count * parts["cloud_cpu_s"] / rows
        token["encrypt_cpu_s"] += count * parts["encrypt_cpu_s"] / rows
        token["decrypt_cpu_s"] += count * parts["decrypt_cpu_s"] / rows
        token["bytes_up"] += count * up / rows
        token["bytes_down"] += count * down / rows
    cvm_token_s = token["encrypt_cpu_s"] + token["decrypt_cpu_s"]
    return {
        "size": size, "N": N, "primes": len(PRIMES), "rows_per_batch": rows, "threads": torch.get_num_threads(),
        "load_average": load_average(),  # other processes on the machine inflate the wall times
        "timed": "full batches, end to end" if size == "tiny" else f"slices scaled linearly: {SLICE}",
        "ops": ops,
        "per_token": {**token, "cvm_cpu_s": cvm_token_s},
        "tokens_per_s_sequential": 1.0 / (token["cloud_s"] + cvm_token_s),
        "tokens_per_s_pipelined": 1.0 / max(token["cloud_s"], cvm_token_s),
        "tokens_per_s_cpu": 1.0 / (token["cloud_cpu_s"] + cvm_token_s),  # both parties' CPU-seconds on one core
        "noise_budget_largest_d": he_kernel.noise_budget(max(d for d, _ in shapes.values())),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    figures = measure(args.size, args.threads)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
