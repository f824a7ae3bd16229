"""Helpers to run real `talaria` servers in tests (import as `from support import ...`).

Servers are started as subprocesses of `python -m talaria_cli.main`, exactly as a user runs
them, with one torch thread each (see SUBPROCESS_ENV).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# The tiny test models are far too small for intra-op parallelism: with several threads the
# OpenMP spin-waits of two processes on a 2-core machine make each op ~10x slower.
SUBPROCESS_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

ARCHS = ("llama", "qwen2", "qwen3", "mistral")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A `talaria cloud` or `talaria proxy` subprocess; output goes to `log_path`."""

    proc: subprocess.Popen
    url: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def wait_ready(self, path: str = "/health", timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_talaria(command: str, args: list[str], log_path: Path, port: int | None = None,
                  env: dict[str, str] | None = None) -> ServerProcess:
    """Start `talaria <command> ... --port P` (port chosen free unless given); not yet ready."""
    port = port or free_port()
    full = [sys.executable, "-m", "talaria_cli.main", command, *args, "--port", str(port)]
    log_file = open(log_path, "ab")
    proc_env = {**os.environ, **SUBPROCESS_ENV, **(env or {})}
    proc = subprocess.Popen(full, stdout=log_file, stderr=subprocess.STDOUT, env=proc_env)
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, full)
