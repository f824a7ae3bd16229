"""The ring kernel's native CPU path: W_bar streamed as float32, limb products exact in float64.

A decode GEMM is bound by the bytes of the weights it reads. float64 W_bar has twice float32's,
and this CPU's BLAS reaches well under its bandwidth on a 3-row float64 GEMM (OpenBLAS ~9 GB/s
against a float32 GEMV's ~20 at one thread). |W_bar| <= 2^23 is exact in float32, so
`ring_native.c` keeps W_bar in float32 column blocks and widens them in registers: the same
exact products at float32's bytes (results/bench: ring micro section).

The C source is compiled at first use (cloud_backend/native.py); without a compiler the cloud
logs why and keeps the float64 BLAS kernel (exact too, slower).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cloud_backend import native

CB = native.RING_BLOCK_COLS  # columns per block (ring_native.c)
MAX_BITS = 40  # the combine's bound on the limb width (ring_native.c)
HE_MAX_BITS = 31  # he_matmul_blocks' bound: acc 2^bits + P stays below 2^62


library = native.library
unavailable_reason = native.unavailable_reason


class NativeWeights:
    """W_bar [d, o] held as float32 column blocks [nb, d, 64] for ring_native.c (the values are
    exact integers |.| <= 2^23). `columns(k0, k1)` is a view of a column range."""

    device = torch.device("cpu")

    def __init__(self, w_bar: torch.Tensor | None, *, _blocks=None, _range=None):
        if _blocks is None:
            d, o = w_bar.shape
            nb = -(-o // CB)
            padded = torch.zeros((d, nb * CB), dtype=torch.float32)
            padded[:, :o] = w_bar.to(torch.float32)
            if not torch.equal(padded[:, :o].to(torch.float64), w_bar.to("cpu", torch.float64)):
                raise ValueError("W_bar entries must be integers exact in float32 (|w| <= 2^24)")
            _blocks = padded.view(d, nb, CB).transpose(0, 1).contiguous().numpy()  # [nb, d, CB]
            _range = (0, o)
        self.blocks = _blocks
        self.k0, self.k1 = _range
        self.shape = torch.Size((self.blocks.shape[1], self.k1 - self.k0))

    @property
    def d(self) -> int:
        return self.shape[0]

    def columns(self, k0: int, k1: int) -> "NativeWeights":
        return NativeWeights(None, _blocks=self.blocks, _range=(self.k0 + k0, self.k0 + k1))

    def dense(self) -> torch.Tensor:
        """float64 [d, o] (tests, fingerprints; not the serving path)."""
        full = torch.from_numpy(self.blocks).transpose(0, 1).reshape(self.d, -1)
        return full[:, self.k0 : self.k1].to(torch.float64)

    def _over_blocks(self, out_shape, call) -> tuple[np.ndarray, int]:
        """Run `call(blocks_ptr, c0, c1, width, out_ptr)` over the column blocks this view covers
        (split across threads); out is int64 of out_shape(width). Returns (out, offset of column k0)."""
        b0, b1 = self.k0 // CB, -(-self.k1 // CB)
        width = (b1 - b0) * CB
        out = np.empty(out_shape(width), dtype=np.int64)
        blocks = self.blocks[b0:b1]  # contiguous: a slice of the leading axis
        _split(lambda c0, c1: call(blocks.ctypes.data, c0, c1, width, out.ctypes.data), b1 - b0)
        return out, self.k0 - b0 * CB

    def matmul_mod_t(self, digits: torch.Tensor, k: int, bits: int, t: int) -> torch.Tensor:
        """digits [k, N, d] float64 (limb i of row j at [i, j]) -> sum_i (digits_i W_bar) 2^(bits i) mod t, [N, o] int64."""
        if bits > MAX_BITS:
            raise ValueError(f"limbs of {bits} bits exceed the native combine's {MAX_BITS}")
        lib = library()
        _, n, d = digits.shape
        x = np.ascontiguousarray(digits.numpy(), dtype=np.float64)
        out, off = self._over_blocks(lambda width: (n, width), lambda w, c0, c1, width, o: lib.ring_matmul_blocks(
            x.ctypes.data, k, n, d, w, c0, c1, width, bits, t, o, width))
        return torch.from_numpy(out[:, off : off + self.shape[1]])

    def residue_matmul(self, block: torch.Tensor, limbs: int, bits: int, prime_of_m: torch.Tensor) -> torch.Tensor:
        """block [d, M] int64 residues, prime_of_m [M] int64 -> out [o, M] int64 with
        out[k, m] = sum_j W_bar[j, k] block[j, m] mod prime_of_m[m], through unsigned limbs of
        `bits` bits (the caller's width keeps every limb product below 2^53)."""
        if bits > HE_MAX_BITS:
            raise ValueError(f"limbs of {bits} bits exceed the he combine's {HE_MAX_BITS}")
        lib = library()
        blk = np.ascontiguousarray(block.numpy(), dtype=np.int64)
        m_count = blk.shape[1]
        primes = np.ascontiguousarray(prime_of_m.numpy(), dtype=np.int64)
        out, off = self._over_blocks(lambda width: (width, m_count), lambda w, c0, c1, width, o: lib.he_matmul_blocks(
            blk.ctypes.data, m_count, self.d, limbs, bits, w, c0, c1, width, primes.ctypes.data, o))
        return torch.from_numpy(out[off : off + self.shape[1]])


_pool: dict = {"threads": 0, "executor": None}


def _split(run, blocks: int) -> None:
    """Run `run(c0, c1)` over [0, blocks) on torch's thread count (ctypes releases the GIL)."""
    threads = max(1, min(torch.get_num_threads(), blocks // 4 or 1))
    if threads == 1:
        spans = [(0, blocks)]
    else:
        if _pool["threads"] != threads:
            if _pool["executor"] is not None:
                _pool["executor"].shutdown(wait=False)
            _pool["executor"], _pool["threads"] = ThreadPoolExecutor(threads, thread_name_prefix="ring"), threads
        step = -(-blocks // threads)
        spans = [(c, min(blocks, c + step)) for c in range(0, blocks, step)]
    if len(spans) == 1:
        codes = [run(*spans[0])]
    else:
        codes = list(_pool["executor"].map(lambda s: run(*s), spans))
    if any(codes):
        raise MemoryError("the native ring kernel could not allocate its block buffer")
