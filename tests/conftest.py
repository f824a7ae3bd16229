"""Shared fixtures: tiny checkpoints and real cloud/proxy processes on free localhost ports.

Servers are started as subprocesses of the installed `talaria` command (`python -m
talaria_cli.main`), exactly as a user runs them, and stopped at the end of their scope.
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
import pytest
import torch

# The tiny test models are far too small for intra-op parallelism: with several threads the
# OpenMP spin-waits of two processes on a 2-core machine make each op ~10x slower.
torch.set_num_threads(1)
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch) -> Path of a tiny random checkpoint (generated once per session)."""
    from talaria_cli.tiny_model import ensure_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")

    def get(arch: str = "qwen2") -> Path:
        return ensure_tiny_model(root / arch, arch=arch, seed=0)

    return get


@pytest.fixture
def cloud_factory(tmp_path):
    """cloud_factory(model_dir, *extra_args) -> ready ServerProcess; all stopped after the test."""
    started: list[ServerProcess] = []

    def start(model_dir, *extra: str, port: int | None = None) -> ServerProcess:
        log = tmp_path / f"cloud-{len(started)}.log"
        server = start_talaria("cloud", ["--model", str(model_dir), *extra], log, port=port)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()
