"""The cloud's native CPU kernels: C sources compiled at first use, loaded with ctypes.

`ring_native.c` (the pad scheme's exact ring GEMM with W_bar held in float32) and `ntt_native.c`
(the negacyclic NTT of the he source's re-randomisation) are compiled together with the system C
compiler (`cc`, or $CC) for this CPU (-march=native) into a cache directory
($TALARIA_KERNEL_CACHE, else ~/.cache/talaria, if this user owns it and no one else may write it;
else a private temporary directory for this process), keyed by the sources, the
compiler and the CPU, and loaded once per process. Each has a torch reference that gives the same
results (tests compare them); without a compiler the cloud logs why and runs those instead.
TALARIA_NATIVE=off asks for the references explicitly; =require makes a failed build an error.
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
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("ring_native.c", "ntt_native.c")]
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11"]
RING_BLOCK_COLS = 64  # ring_native.c's CB
_state: dict = {"lib": None, "tried": False, "why": ""}
_lock = threading.Lock()


def _cpu_key() -> str:
    try:
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))]
        return flags[0] if flags else os.uname().machine
    except OSError:
        return os.uname().machine


def _cache_dir() -> Path:
    """Where the compiled library is kept: a directory of this user's (a shared one, such as /tmp
    itself, would let another local user plant a library that the cloud then loads)."""
    base = os.environ.get("TALARIA_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "talaria")
    path = Path(base)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
        if os.access(path, os.W_OK) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="talaria-native-"))  # private (0700), this process only


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(b"".join(src.read_bytes() for src in SOURCES))
    digest.update(" ".join([cc, *FLAGS, version, _cpu_key()]).encode())
    target = _cache_dir() / f"talaria_native-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        done = subprocess.run([cc, *FLAGS, "-o", str(tmp), *map(str, SOURCES), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise OSError(f"{cc} failed: {done.stderr.strip()[-400:]}")
        os.replace(tmp, target)  # atomic: processes building at once each install a whole file
    lib = ctypes.CDLL(str(target))
    i64, ptr = ctypes.c_long, ctypes.c_void_p
    lib.ring_matmul_blocks.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, i64, ctypes.c_int, ctypes.c_int64, ptr, i64]
    lib.ring_matmul_blocks.restype = ctypes.c_int
    lib.he_matmul_blocks.argtypes = [ptr, i64, i64, i64, ctypes.c_int, ptr, i64, i64, i64, ptr, ptr]
    lib.he_matmul_blocks.restype = ctypes.c_int
    lib.ntt_forward.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr]
    lib.ntt_inverse.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr]
    lib.ntt_forward.restype = lib.ntt_inverse.restype = None
    if lib.ring_block_cols() != RING_BLOCK_COLS:
        raise OSError("ring_native.c and native.py disagree on the block width")
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (the reason in `unavailable_reason()`), built once per process."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            choice = os.environ.get("TALARIA_NATIVE", "auto")
            if choice == "off":
                _state["why"] = "TALARIA_NATIVE=off"
            else:
                try:
                    _state["lib"] = _build()
                except (OSError, subprocess.SubprocessError) as exc:
                    if choice == "require":
                        raise RuntimeError(f"TALARIA_NATIVE=require, but the native kernels do not build: {exc}") from exc
                    _state["why"] = str(exc)
                    log.warning("native kernels unavailable (%s): the torch/BLAS references run instead "
                                "(exact, slower)", exc)
        return _state["lib"]


def unavailable_reason() -> str:
    return _state["why"]
