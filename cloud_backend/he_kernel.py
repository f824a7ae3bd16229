"""The cloud's half of the `he` pad source: W_bar applied to RLWE ciphertexts of pad rows, then
re-randomised so that the answer tells the CVM nothing about W_bar beyond r W_bar mod t.

The CVM uploads ct_j = (a_j, b_j), j < d, with b_j + a_j s = Delta m_j + e_j (mod q), m_j the pad
values of N rows at input coordinate j (coefficient packing; talaria_proxy/pads/he_keys.py). Scalar
times ciphertext and addition act coefficient-wise, so per output column k
    (A_k, B_k) = sum_j W_bar[j, k] (a_j, b_j)  mod q,   B_k + A_k s = Delta (r W_bar mod t)_k + E_k
with E_k = sum_j W_bar[j, k] e_j, and per RNS prime this is one plain GEMM W_bar^T [o, d] @ C [d, 2N]
(C: the coefficients of both halves). Exact in float64: C (< 2^31) is split into limbs of
L = ring.limb_bits(d) bits, so every limb product sums d terms below 2^23 2^L < 2^53 / d. a_j are in
the NTT domain and b_j in the coefficient domain; the GEMM is linear, so either is fine, and no NTT
runs in it.

Re-randomisation (model privacy). Without it the CVM, which knows every a_j, could solve
A_k = sum_j W_bar[j, k] a_j for W_bar, and read E_k (it knows its e_j) off the decryption noise.
So before answering, every answer gets a fresh encryption of zero under the CVM's public key
(a_pk from a seed, b_pk = -a_pk s + e_pk), with a fresh ternary u and Gaussian e1 per answer from the
OS CSPRNG, and flooding noise F uniform on [-2^149, 2^149) (also OS CSPRNG) on B:
    A'_k = A_k + u a_pk + e1,   B'_k = B_k + u b_pk + F       (the textbook e2 is subsumed by F)
    B'_k + A'_k s = Delta (r W_bar)_k + E_k + u e_pk + e1 s + F.
- A'_k is A_k plus one RLWE sample (a_pk, u a_pk + e1) with secret u: pseudo-uniform under RLWE (the
  same N, q inside the HE standard's table), so it hides A_k. The CVM knows s, so it sees the noise
  term; F hides E_k + u e_pk + e1 s, which is what would reveal W_bar or u.
- Statistical distance to a fresh encryption of r W_bar with noise F alone: per coefficient at most
  |E_k + u e_pk + e1 s| / 2^150, per ciphertext N times that (see `noise_budget`): <= 2^-97.4 at the
  0.5B model's largest d = 4865 (|W_bar| <= 2^23, |e| <= 19). The claim assumes the CVM made its
  public key honestly (attested code): a malformed b_pk could make u e_pk large and leak u.
- Exactness: |total noise| <= 2^149 + d 2^23 19 + 2 N 19 < Delta / 2 ~ 2^154: decryption rounds
  correctly with 5 bits of margin, worst case, for every d the float64 limbs support.
- Cost in q: without flooding Delta > 2^41 (2 of the 31-bit primes) would do, q ~ 2^124; flooding
  takes 3 more primes (q ~ 2^217, still inside 218 for N = 8192), i.e. 7/4 of the GEMM, the NTTs
  and the wire bytes.
Shape legend: d inputs (ciphertexts uploaded), o outputs (answers), P primes, N coefficients.
"""

from __future__ import annotations

import collections
import math
import os
import re

import torch

from cloud_backend import ntt_native
from cloud_backend.kernels import LinearCallError
from cloud_backend.ring_kernel import NativeWeights, column_range
from talaria_wire import OpKey, WireFormatError, decode_tensors, encode_tensors, ntt
from talaria_wire.he_params import (DELTA, N, REQUEST_FIELDS, TAIL, expand_uniform, gaussian, max_answer_cols,
                                    request_cap, ternary)
from talaria_wire.ring import PRIMES, SEED_BYTES, W_BITS, limb_bits
from talaria_wire.tensors import decode_metadata

FLOOD_BITS = 150  # F uniform on [-2^149, 2^149): 2^150 values
FLOOD_WORD = 30  # F = sum_l w_l 2^(30 l) - 2^149 with five 30-bit words
COEFF_BITS = 31  # every residue < 2^31
_P = torch.tensor(PRIMES, dtype=torch.int64)[:, None]  # [P, 1]


def noise_budget(d: int, n: int = N, w_bits: int = W_BITS) -> dict[str, float]:
    """The worst-case noise figures for an op with d inputs (log2 unless named otherwise)."""
    gemm = d * (1 << w_bits) * TAIL  # |E_k| = |sum_j W_bar e_j|
    rerand = 2 * n * TAIL  # |u e_pk| + |e1 s|, u and s ternary
    hidden = gemm + rerand  # what flooding must hide
    total = 2 ** (FLOOD_BITS - 1) + hidden
    return {
        "log2_gemm_noise": math.log2(gemm), "log2_rerand_noise": math.log2(rerand),
        "log2_flood": FLOOD_BITS - 1, "log2_total_noise": math.log2(total),
        "log2_half_delta": math.log2(DELTA) - 1, "margin_bits": math.log2(DELTA / 2 / total),
        "log2_stat_distance_per_ciphertext": math.log2(n * hidden) - FLOOD_BITS,
    }


def _limb_layout(d: int) -> tuple[int, int]:
    bits = limb_bits(d, W_BITS)
    return bits, -(-COEFF_BITS // bits)


def _check_gemm(w_bar, halves: torch.Tensor) -> None:
    if not isinstance(w_bar, NativeWeights) and w_bar.dtype != torch.float64:
        raise ValueError(f"w_bar must be float64 (exact integers), got {w_bar.dtype}")
    if halves.shape[0] != w_bar.shape[0]:
        raise ValueError(f"{halves.shape[0]} ciphertexts for an op with d = {w_bar.shape[0]}")


def matmul_block(w_bar: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """w_bar [d, o] float64 exact integers |.| <= 2^23; block [d, H, P, c] int64 residues (a slice
    of the coefficient axis) -> sum_j w_bar[j, k] block[j] mod p, [o, H, P, c] int64, exactly."""
    _check_gemm(w_bar, block)
    d, o = w_bar.shape
    _, h, p_count, width = block.shape
    bits, limbs = _limb_layout(d)
    mask = (1 << bits) - 1
    device = w_bar.device
    block = block.to(device)
    p = _P.to(device)  # [P, 1]: broadcasts over [..., P, c]
    if isinstance(w_bar, NativeWeights):  # the native CPU kernel: limbs, GEMM and reduction mod p in one pass
        prime_of_m = p.view(1, p_count, 1).expand(h, p_count, width).reshape(-1)  # M = H P c
        return w_bar.residue_matmul(block.reshape(d, -1), limbs, bits, prime_of_m).view(o, h, p_count, width)
    # limbs side by side: one GEMM reads W_bar once for all primes, halves and limbs
    cols = torch.cat([((block >> (bits * k)) & mask).to(torch.float64).reshape(d, -1) for k in range(limbs)], dim=1)
    prods = (w_bar.t() @ cols).to(torch.int64).view(o, limbs, h, p_count, width)  # exact: |.| < 2^53
    acc = torch.remainder(prods[:, 0], p)
    for k in range(1, limbs):
        shift = torch.tensor([pow(2, bits * k, q) for q in PRIMES], dtype=torch.int64, device=device)[:, None]
        acc = torch.remainder(acc + torch.remainder(prods[:, k], p) * shift, p)  # sum_k P_k 2^(L k) mod p
    return acc


def coeff_chunk(o: int, d: int, h: int = 2) -> int:
    """Coefficients per GEMM block: its float64 products (o x limbs x H x P x chunk) stay near 64 MiB."""
    return max(1, min(N, (8 << 20) // max(1, o * _limb_layout(d)[1] * h * len(PRIMES))))


def ciphertext_matmul(w_bar: torch.Tensor, halves: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """halves [d, H, P, N] (H = 2: a_hat, b) -> [o, H, P, N]: `matmul_block` over the whole
    coefficient axis, in blocks of `chunk` coefficients to bound the float64 temporaries."""
    _check_gemm(w_bar, halves)
    d, o = w_bar.shape
    n = halves.shape[-1]
    chunk = chunk or coeff_chunk(o, d, halves.shape[1])
    out = torch.empty((o, *halves.shape[1:]), dtype=torch.int64, device=w_bar.device)
    for c0 in range(0, n, chunk):
        out[..., c0 : c0 + chunk] = matmul_block(w_bar, halves[..., c0 : c0 + chunk])
    return out


def flood_residues(count: int, n: int = N) -> torch.Tensor:
    """`count` polynomials of flooding noise F, coefficients uniform on [-2^149, 2^149) (OS CSPRNG),
    as residues [count, P, N]: F mod p = sum_l w_l (2^(30 l) mod p) - 2^149 mod p, no big integers."""
    words = FLOOD_BITS // FLOOD_WORD
    raw = torch.frombuffer(bytearray(os.urandom(4 * words * count * n)), dtype=torch.int32).to(torch.int64)
    raw = (raw & ((1 << FLOOD_WORD) - 1)).view(words, count, 1, n)
    acc = torch.zeros((count, len(PRIMES), n), dtype=torch.int64)
    for w in range(words):
        weight = torch.tensor([pow(2, FLOOD_WORD * w, p) for p in PRIMES], dtype=torch.int64)[:, None]
        acc += torch.remainder(raw[w] * weight, _P)  # < 5 * 2^31 after the loop
    offset = torch.tensor([pow(2, FLOOD_BITS - 1, p) for p in PRIMES], dtype=torch.int64)[:, None]
    return torch.remainder(acc - offset, _P)


def rerandomise(answers: torch.Tensor, pk_seed: bytes, pk_b: torch.Tensor, chunk: int = 4,
                flood: bool = True) -> torch.Tensor:
    """answers [o, 2, P, N] (a_hat NTT domain, b coefficients) -> the same, each plus a fresh
    encryption of zero under (a_pk, pk_b) and flooding noise on b (in place; returned).
    `flood=False` exists only for the tests that show why flooding is needed."""
    o, _, p_count, n = answers.shape
    device = answers.device
    tab = ntt.tables(n, PRIMES, device)
    a_pk = expand_uniform(pk_seed, "pk", 1, n)[0].to(device)  # [P, N], NTT domain
    pk_b = pk_b.to(device)
    p = _P.to(device)
    for c0 in range(0, o, chunk):
        m = min(chunk, o - c0)
        small = torch.stack([ternary(m * n).view(m, n), gaussian(m * n).view(m, n)], dim=1).to(device)  # [m, 2, N]: u, e1
        u_hat, e1_hat = ntt_native.forward(torch.remainder(small[:, :, None, :], p), tab).unbind(1)  # [m, P, N] each
        block = answers[c0 : c0 + m]
        block[:, 0] = torch.remainder(block[:, 0] + ntt.pointwise(u_hat, a_pk, tab) + e1_hat, p)
        extra = ntt_native.inverse(ntt.pointwise(u_hat, pk_b, tab), tab)
        if flood:
            extra = extra + flood_residues(m, n).to(device)
        block[:, 1] = torch.remainder(block[:, 1] + extra, p)
    return answers


def he_answer(w_bar: torch.Tensor, seed: bytes, b: torch.Tensor, pk_seed: bytes, pk_b: torch.Tensor,
              cols: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole cloud step for one request: w_bar [d, o]; b [d, P, N] int64 residues; the a_j
    expanded from `seed`. Returns (A' [o', P, N] NTT domain, B' [o', P, N]) as int32 on the CPU,
    for output columns cols = (k0, k1) (default all)."""
    d = w_bar.shape[0]
    n = b.shape[-1]
    k0, k1 = cols or (0, w_bar.shape[1])
    a_hat = expand_uniform(seed, "a", d, n)  # [d, P, N], the same stream the CVM drew
    halves = torch.stack([a_hat, b], dim=1)  # [d, 2, P, N]
    answers = ciphertext_matmul(column_range(w_bar, k0, k1), halves)
    rerandomise(answers, pk_seed, pk_b)
    answers = answers.to(torch.int32).cpu()
    return answers[:, 0].contiguous(), answers[:, 1].contiguous()


# -- POST /v1/he/{op} ----------------------------------------------------------------------------


def _op(service, name: str):
    ops = getattr(service.kernel, "ops", None)
    if service.scheme != "pad" or not isinstance(ops, dict):
        raise LinearCallError(f"this cloud serves scheme {service.scheme!r}; he pads come from a pad cloud", 404)
    if name not in ops:
        raise LinearCallError(f"unknown op {name!r}; expected '<layer>.<qkv|o|gate_up|down>' or 'lm_head'", 404)
    return ops[name]


def body_cap(service, name: str) -> int:
    """The largest body POST /v1/he/{name} accepts (its d ciphertext halves and the public key)."""
    return request_cap(_op(service, name).d)


def _residues(tensors: dict, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    x = tensors[name]
    if x.dtype != torch.int32 or tuple(x.shape) != shape:
        raise WireFormatError(f"'{name}' must be int32 {list(shape)}, got {x.dtype} {list(x.shape)}")
    x = x.to(torch.int64)
    if bool((x < 0).any()) or bool((x >= _P.view(*([1] * (len(shape) - 2)), -1, 1)).any()):
        raise WireFormatError(f"'{name}': residues must lie in [0, p) for each prime of q")
    return x


def _seed(tensors: dict, name: str) -> bytes:
    x = tensors[name]
    if x.dtype != torch.uint8 or tuple(x.shape) != (SEED_BYTES,):
        raise WireFormatError(f"'{name}' must be uint8 [{SEED_BYTES}], got {x.dtype} {list(x.shape)}")
    return bytes(x.tolist())


def _cols(spec: str, o: int) -> tuple[int, int]:
    k0, k1 = 0, o
    if spec:
        try:
            k0, k1 = (int(v) for v in spec.split(":"))
        except ValueError:
            raise WireFormatError(f"metadata cols must be 'k0:k1', got {spec!r}") from None
    if not 0 <= k0 < k1 <= o:
        raise WireFormatError(f"cols {k0}:{k1} outside the op's {o} output columns")
    if k1 - k0 > max_answer_cols():
        raise LinearCallError(f"at most {max_answer_cols()} output columns per request, asked for {k1 - k0}; "
                              "ask for column ranges (metadata cols)", 413)
    return k0, k1


RERAND_COLS = 8  # answers re-randomised per compute job


KEPT_BATCHES = 2  # uploads kept for the next column ranges of the same batch (LRU); a miss is a 409
_kept: collections.OrderedDict = collections.OrderedDict()  # (service id, op, batch) -> parsed request; compute thread only


def parse_request(service, name: str, body: bytes):
    """Validate a request body -> (FixedPointOp, halves [d, 2, P, N], (k0, k1), pk_seed, pk_b).
    With metadata `batch` the parsed ciphertexts are kept, and a later body with that batch and no
    tensors asks for more columns of them (wide ops: the upload goes once, not once per range).
    Raises WireFormatError (400) or LinearCallError (its status) for the caller's mistakes."""
    fp = _op(service, name)
    meta = decode_metadata(body)
    tensors = decode_tensors(body)
    cols = _cols(meta.get("cols", ""), fp.w_bar.shape[1])
    batch = meta.get("batch", "")
    if batch and not re.fullmatch(r"[0-9a-f]{32}", batch):
        raise WireFormatError("metadata batch must be 32 lowercase hex digits")
    key = (id(service), name, batch)
    if batch and not tensors:
        if key not in _kept:
            raise LinearCallError(f"batch {batch} is not (or no longer) kept for op {name}: send its ciphertexts again", 409)
        _kept.move_to_end(key)
        return (fp, *_kept[key][:1], cols, *_kept[key][1:])
    if set(tensors) != set(REQUEST_FIELDS):
        raise WireFormatError(f"expected tensors {sorted(REQUEST_FIELDS)}, got {sorted(tensors)}")
    b = _residues(tensors, "b", (fp.d, len(PRIMES), N))
    pk_b = _residues(tensors, "pk_b", (len(PRIMES), N))
    recorder = getattr(service, "recorder", None)
    if recorder is not None:  # --record: the transcript keeps what arrived (the audit's uniformity test)
        recorder._save(OpKey.parse(name), {k: tensors[k].contiguous() for k in REQUEST_FIELDS},
                       {"kind": "he", "cols": f"{cols[0]}:{cols[1]}"})
    a_hat = expand_uniform(_seed(tensors, "seed"), "a", fp.d, N)
    halves, pk_seed = torch.stack([a_hat, b], dim=1).to(fp.w_bar.device), _seed(tensors, "pk_seed")  # kept where W_bar is
    if batch:
        _kept[key] = (halves, pk_seed, pk_b)
        while len(_kept) > KEPT_BATCHES:
            _kept.popitem(last=False)
    return fp, halves, cols, pk_seed, pk_b


async def serve(compute, service, name: str, body: bytes) -> bytes:
    """One POST /v1/he/{op}, cut into compute-thread jobs of a fraction of a second each (GEMM
    blocks over the coefficient axis, re-randomisation in groups of answers), so that the online
    calls the same thread serves run in between instead of waiting for a whole batch."""
    fp, halves, (k0, k1), pk_seed, pk_b = await compute.run(parse_request, service, name, body)
    w_bar = column_range(fp.w_bar, k0, k1)
    answers = torch.empty((k1 - k0, *halves.shape[1:]), dtype=torch.int64, device=w_bar.device)
    chunk = coeff_chunk(k1 - k0, fp.d)

    def gemm(c0: int) -> None:
        answers[..., c0 : c0 + chunk] = matmul_block(w_bar, halves[..., c0 : c0 + chunk])

    for c0 in range(0, N, chunk):
        await compute.run(gemm, c0)
    for j0 in range(0, k1 - k0, RERAND_COLS):
        await compute.run(rerandomise, answers[j0 : j0 + RERAND_COLS], pk_seed, pk_b)

    def encode() -> bytes:
        out = answers.to(torch.int32).cpu()
        return encode_tensors({"a": out[:, 0], "b": out[:, 1]})

    return await compute.run(encode)
