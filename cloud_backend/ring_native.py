"""The ring kernel's native CPU path: W_bar streamed as float32, limb products exact in float64.

A decode GEMM is bound by the bytes of the weights it reads. float64 W_bar has twice float32's,
and this CPU's BLAS reaches well under its bandwidth on a 3-row float64 GEMM (OpenBLAS ~9 GB/s
against a float32 GEMV's ~20 at one thread). |W_bar| <= 2^23 is exact in float32, so
`ring_native.c` keeps W_bar in float32 column blocks and widens them in registers: the same
exact products at float32's bytes (results/bench: ring micro section).

The C source is compiled at first use with the system C compiler (`cc`, or $CC) for this CPU
(-march=native) into a cache directory ($TALARIA_KERNEL_CACHE, else ~/.cache/talaria), keyed by
the source, the compiler and the CPU, and loaded with ctypes. Without a compiler the cloud logs
why and keeps the float64 BLAS kernel (exact too, slower); TALARIA_RING_KERNEL=blas asks for that
one explicitly, =native makes a failed build an error.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("ring_native.c")
CB = 64  # columns per block (ring_native.c)
MAX_BITS = 40  # the combine's bound on the limb width (ring_native.c)
_state: dict = {"lib": None, "tried": False, "why": ""}
_lock = threading.Lock()


def _cpu_key() -> str:
    try:
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))]
        return flags[0] if flags else os.uname().machine
    except OSError:
        return os.uname().machine


def _cache_dir() -> Path:
    base = os.environ.get("TALARIA_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "talaria")
    path = Path(base)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11"]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *flags, version, _cpu_key()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"talaria_ring_native-{key}.so"
    if not target.exists():
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        done = subprocess.run([cc, *flags, "-o", str(tmp), str(SOURCE), "-lm"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise OSError(f"{cc} failed: {done.stderr.strip()[-400:]}")
        os.replace(tmp, target)  # atomic: processes building at once each install a whole file
    lib = ctypes.CDLL(str(target))
    i64, ptr = ctypes.c_long, ctypes.c_void_p
    lib.ring_gemm_f32.argtypes = [ptr, i64, i64, ptr, i64, i64, i64, ptr, i64]
    lib.ring_matmul_blocks.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, i64, ctypes.c_int, ctypes.c_int64, ptr, i64]
    lib.ring_gemm_f32.restype = lib.ring_matmul_blocks.restype = ctypes.c_int
    if lib.ring_block_cols() != CB:
        raise OSError("ring_native.c and ring_native.py disagree on the block width")
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (the reason in `unavailable_reason()`), built once per process."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            choice = os.environ.get("TALARIA_RING_KERNEL", "auto")
            if choice == "blas":
                _state["why"] = "TALARIA_RING_KERNEL=blas"
            else:
                try:
                    _state["lib"] = _build()
                except (OSError, subprocess.SubprocessError) as exc:
                    if choice == "native":
                        raise RuntimeError(f"TALARIA_RING_KERNEL=native, but the kernel does not build: {exc}") from exc
                    _state["why"] = str(exc)
                    log.warning("native ring kernel unavailable (%s): the float64 BLAS kernel runs instead (exact, slower)", exc)
        return _state["lib"]


def unavailable_reason() -> str:
    return _state["why"]


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

    def _block_range(self) -> tuple[int, int, int]:
        b0, b1 = self.k0 // CB, -(-self.k1 // CB)
        return b0, b1, self.k0 - b0 * CB

    def products(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, d] float64 exact integers (limb digits within the exact bound) -> x W_bar [R, o] float64."""
        lib = library()
        x = np.ascontiguousarray(x.numpy(), dtype=np.float64)
        b0, b1, off = self._block_range()
        width = (b1 - b0) * CB
        out = np.empty((x.shape[0], width), dtype=np.float64)
        blocks = self.blocks[b0:b1]  # contiguous: a slice of the leading axis

        def run(c0: int, c1: int) -> int:
            return lib.ring_gemm_f32(x.ctypes.data, x.shape[0], self.d, blocks.ctypes.data, c0, c1, width,
                                     out.ctypes.data, width)

        _split(run, b1 - b0)
        return torch.from_numpy(out[:, off : off + self.shape[1]])

    def matmul_mod_t(self, digits: torch.Tensor, k: int, bits: int, t: int) -> torch.Tensor:
        """digits [k, N, d] float64 (limb i of row j at [i, j]) -> sum_i (digits_i W_bar) 2^(bits i) mod t, [N, o] int64."""
        if bits > MAX_BITS:
            raise ValueError(f"limbs of {bits} bits exceed the native combine's {MAX_BITS}")
        lib = library()
        _, n, d = digits.shape
        x = np.ascontiguousarray(digits.numpy(), dtype=np.float64)
        b0, b1, off = self._block_range()
        width = (b1 - b0) * CB
        out = np.empty((n, width), dtype=np.int64)
        blocks = self.blocks[b0:b1]

        def run(c0: int, c1: int) -> int:
            return lib.ring_matmul_blocks(x.ctypes.data, k, n, d, blocks.ctypes.data, c0, c1, width, bits, t,
                                          out.ctypes.data, width)

        _split(run, b1 - b0)
        return torch.from_numpy(out[:, off : off + self.shape[1]])


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
