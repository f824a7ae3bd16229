"""The cloud's ring kernel: v = u W_bar mod t, exactly, for u [N, d] residues in [0, t).

u has 62 bits, W_bar 23 (+ sign), so a product has 85 and a row of d of them ~98: neither float64
(53 exact bits) nor int64 holds it. Split u into limbs of L bits, u = sum_k u_k 2^(L k), such that
every limb GEMM P_k = u_k W_bar is exact in float64 (every partial sum stays below 2^53, in any
summation order); stack the limbs as rows so the weights are read once per call. Then per prime p
of t = p0 p1:  v mod p = sum_k (P_k mod p)(2^(L k) mod p) mod p  (int64: both factors < 2^31), and
the Chinese remainder theorem gives v mod t.

`ring_matmul` (what the cloud runs) uses signed limbs: u is first centred to c in (-t/2, t/2]
(c = u mod t), then cut into balanced digits in [-2^(L-1), 2^(L-1)), which buys one bit per limb
over unsigned ones (|digit| <= 2^(L-1) instead of 2^L - 1): 3 limbs instead of 4 for d <= 1023
(every op of a 0.5B model but its down projection). On CPU the limb GEMM runs on numpy's OpenBLAS
when its thread count can be set to torch's: this box's MKL computes a float64 GEMM of 3-32 rows
3-6x slower than one row (its small-M path on this AMD CPU), OpenBLAS about at the cost of the
weights' bytes (bench micro section: results/bench); at 24-256 stacked rows it was 10-35% faster,
beyond 512 rows (long prefills) the two were alike, and those stay on torch. `ring_matmul_limbs` is
the first formulation (unsigned limbs, torch GEMM), kept as the reference both are tested against,
with Python integers (tests/cloud/test_ring_kernel.py).

Cost against a float32 GEMM of the same shape: a decode GEMM is bound by weight bytes, float64
W_bar has twice float32's; a prefill GEMM by multiply-adds: 3-4 limb rows per row at float64's
half rate. On CUDA the torch path runs in float64 (an H100/H200 has float64 tensor cores).

What the cloud runs on CPU: `prepare_weights` hands W_bar to the native kernel (ring_native.py:
the same signed limbs and plan, W_bar held in float32 and widened in registers, the limbs folded
mod t without a division) when it builds; the BLAS formulation here stays as its fallback and
reference.
"""

from __future__ import annotations

import ctypes
import glob
import os

import torch

from cloud_backend import ring_native
from cloud_backend.ring_native import NativeWeights
from talaria_wire.ring import HALF_T, RING_PRIMES, T, W_BITS, crt_to_t, limb_bits, mulmod

RESIDUE_BITS = 62  # t < 2^62
FLOAT64_EXACT = 1 << 53
BLAS_MAX_ROWS = 512  # stacked limb rows up to which OpenBLAS runs (decode, dealer blocks); beyond, both are alike
KERNEL = "signed float64 limbs, OpenBLAS for small stacks"
NATIVE_KERNEL = "signed float64 limbs, W_bar streamed as float32 (ring_native.c)"


def signed_limb_bits(d: int, value_bits: int = W_BITS) -> int:
    """Widest L with d * 2^(L-1) * 2^value_bits < 2^53: a float64 GEMM of balanced L-bit digits
    against |w| <= 2^value_bits never leaves the exact integers."""
    bits = 1
    while d * (1 << bits) * (1 << value_bits) < FLOAT64_EXACT:  # tests L = bits + 1
        bits += 1
    if d * (1 << (bits - 1)) * (1 << value_bits) >= FLOAT64_EXACT:
        raise ValueError(f"d={d} is too large for exact float64 limbs with {value_bits}-bit values")
    return bits


def limb_plan(d: int) -> tuple[int, int, bool]:
    """(limbs k, width L, signed) for d: balanced digits of the centred residue when they need fewer
    limbs than unsigned digits of u (d <= 1023: 3 x 21 bits instead of 4), else unsigned digits.
    L is the narrowest width with k L >= 62, so sum_k digit_k 2^(L k) + offset stays inside int64."""
    k_unsigned = -(-RESIDUE_BITS // limb_bits(d))
    k_signed = -(-RESIDUE_BITS // signed_limb_bits(d))
    if k_signed < k_unsigned:
        return k_signed, -(-RESIDUE_BITS // k_signed), True
    return k_unsigned, -(-RESIDUE_BITS // k_unsigned), False


def ring_limbs(u: torch.Tensor, k: int, bits: int, signed: bool) -> torch.Tensor:
    """u [N, d] residues in [0, t) -> digits [k, N, d] int64 with sum_i digit_i 2^(bits i) = u (mod t).
    signed: balanced digits in [-2^(bits-1), 2^(bits-1)) of the centred residue c = u mod t,
    |c| <= t/2, read as the unsigned digits of c + sum_i 2^(bits-1) 2^(bits i) (in [0, 2^63))."""
    shifts = torch.arange(0, k * bits, bits, dtype=torch.int64, device=u.device).view(k, 1, 1)
    mask = (1 << bits) - 1
    if not signed:
        return (u.unsqueeze(0) >> shifts) & mask
    half = 1 << (bits - 1)
    offset = sum(half << (bits * i) for i in range(k))  # < 2^62 + 2^42 for k = 3, bits = 21
    c = torch.where(u > HALF_T, u - (T - offset), u + offset)  # c + offset, never negative
    return ((c.unsqueeze(0) >> shifts) & mask) - half


def prepare_weights(w_bar: torch.Tensor) -> "torch.Tensor | NativeWeights":
    """W_bar as the cloud serves it: float32 blocks for the native CPU kernel when it builds
    (ring_native.py), else the float64 tensor for the BLAS / CUDA path."""
    if w_bar.device.type == "cpu" and ring_native.library() is not None:
        return NativeWeights(w_bar)
    return w_bar.to(torch.float64)


def kernel_name(w_bar) -> str:
    if isinstance(w_bar, NativeWeights):
        return NATIVE_KERNEL
    why = ring_native.unavailable_reason()
    return KERNEL + (f" (native kernel unavailable: {why})" if why and w_bar.device.type == "cpu" else "")


def column_range(w_bar, k0: int, k1: int):
    """Columns k0:k1 of W_bar in either form (a view)."""
    return w_bar.columns(k0, k1) if isinstance(w_bar, NativeWeights) else w_bar[:, k0:k1]


def dense_weights(w_bar) -> torch.Tensor:
    return w_bar.dense() if isinstance(w_bar, NativeWeights) else w_bar


def ring_matmul(u: torch.Tensor, w_bar, limb: int | None = None) -> torch.Tensor:
    """u [N, d] int64 in [0, t), w_bar [d, o] exact integers |.| <= 2^23 (a float64 tensor or
    NativeWeights) -> u W_bar mod t [N, o] int64.
    `limb` (the unsigned width of `ring_matmul_limbs`) is accepted and unused: the plan follows from d."""
    n, d = u.shape
    k, bits, signed = limb_plan(d)
    if isinstance(w_bar, NativeWeights):
        digits = ring_limbs(u.cpu(), k, bits, signed).to(torch.float64)  # [k, N, d]
        return w_bar.matmul_mod_t(digits, k, bits, T)
    digits = ring_limbs(u.to(w_bar.device), k, bits, signed)  # [k, N, d]
    prods = _gemm(digits.view(k * n, d).to(torch.float64), w_bar)  # [k N, o]; exact: |.| < 2^53
    return _combine(prods.to(torch.int64).view(k, n, -1), bits).cpu()


def ring_matmul_limbs(u: torch.Tensor, w_bar: torch.Tensor, limb: int) -> torch.Tensor:
    """The reference formulation: unsigned limbs of `limb` bits (ring.limb_bits(d)), one torch GEMM."""
    n = u.shape[0]
    limbs = -(-RESIDUE_BITS // limb)
    mask = (1 << limb) - 1
    u = u.to(w_bar.device)
    stacked = torch.cat([((u >> (limb * k)) & mask).to(torch.float64) for k in range(limbs)])  # [limbs N, d]
    prods = (stacked @ w_bar).to(torch.int64)  # [limbs N, o]; exact: |.| < 2^53
    residues = []
    for p in RING_PRIMES:
        acc = torch.remainder(prods[:n], p)
        for k in range(1, limbs):
            acc = torch.remainder(acc + mulmod(torch.remainder(prods[k * n : (k + 1) * n], p), pow(2, limb * k, p), p), p)
        residues.append(acc)
    return crt_to_t(*residues).cpu()


def _combine(prods: torch.Tensor, bits: int) -> torch.Tensor:
    """Limb products [k, N, o] (signed, exact) -> sum_i P_i 2^(bits i) mod t, both primes at once
    (few tensor ops: a decode call's arrays are small, so per-op overhead is what costs)."""
    primes, coef = _constants(prods.shape[0], bits, prods.device)  # [2, 1, 1, 1], [2, k, 1, 1]
    terms = torch.remainder(prods.unsqueeze(0), primes).mul_(coef).remainder_(primes)  # [2, k, N, o], < p
    residues = terms.sum(1).remainder_(primes[:, 0])  # [2, N, o]; the sum < k p < 2^34
    return crt_to_t(residues[0], residues[1])


_CONSTANTS: dict = {}


def _constants(k: int, bits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (k, bits, str(device))
    if key not in _CONSTANTS:
        primes = torch.tensor(RING_PRIMES, dtype=torch.int64, device=device).view(2, 1, 1, 1)
        coef = torch.tensor([[pow(2, bits * i, p) for i in range(k)] for p in RING_PRIMES], dtype=torch.int64,
                            device=device).view(2, k, 1, 1)
        _CONSTANTS[key] = primes, coef
    return _CONSTANTS[key]


def _gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in float64 (exact here: the operands keep every partial sum an integer below 2^53)."""
    if a.device.type == "cpu" and a.shape[0] <= BLAS_MAX_ROWS and _openblas_threads(torch.get_num_threads()):
        import numpy as np

        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return a @ b


_blas = {"lib": None, "threads": None, "tried": False}


def _openblas_threads(threads: int) -> bool:
    """Set numpy's OpenBLAS to `threads` (torch's count, so the process keeps its thread budget);
    False when that library cannot be found, and then torch's GEMM runs instead."""
    if not _blas["tried"]:
        _blas["tried"] = True
        try:
            import numpy as np

            libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas*.so*"))
            lib = ctypes.CDLL(libs[0]) if libs else None  # already loaded by numpy: the same handle
            setter = getattr(lib, "scipy_openblas_set_num_threads64_", None) if lib is not None else None
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                _blas["lib"] = setter
        except (ImportError, OSError):
            _blas["lib"] = None
    setter = _blas["lib"]
    if setter is None:
        return False
    if _blas["threads"] != threads:
        setter(threads)
        _blas["threads"] = threads
    return True
