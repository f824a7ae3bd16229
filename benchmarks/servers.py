"""`talaria cloud` / `talaria proxy` subprocesses for the benchmark, started as a user starts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.common import proc_cpu_seconds, thread_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path
    threads: int

    def wait_ready(self, timeout: float = 600.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log_path.name}: exited with {self.proc.returncode}\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.log_path.name}: not ready after {timeout:.0f}s\n{self.tail()}")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(command: str, args: list[str], log_dir: Path, threads: int = 1) -> Server:
    """`python -m talaria_cli.main <command> ... --port P` with `threads` OpenMP threads."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{command}-{port}.log"
    cmd = [sys.executable, "-m", "talaria_cli.main", command, *args, "--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **thread_env(threads)})
    return Server(proc, f"http://127.0.0.1:{port}", log_path, threads)


def start_cloud(model: Path, log_dir: Path, compute_dtype: str, threads: int = 1) -> Server:
    return start("cloud", ["--model", str(model), "--threads", str(threads), "--compute-dtype", compute_dtype,
                           "--log-level", "warning"], log_dir, threads)


def start_proxy(cloud_url: str, log_dir: Path, transport: str, threads: int = 1) -> Server:
    return start("proxy", ["--cloud", cloud_url, "--cloud-transport", transport, "--threads", str(threads),
                           "--log-level", "warning", "--cloud-wait", "600"], log_dir, threads)


def defaults() -> dict:
    """The precision mode and transport that `talaria cloud` / `talaria proxy` use by default."""
    from cloud_backend.settings import CloudSettings
    from talaria_proxy.settings import ProxySettings

    cloud, proxy = CloudSettings.model_fields, ProxySettings.model_fields
    return {"compute_dtype": cloud["compute_dtype"].default, "mask_rank": cloud["mask_rank"].default,
            "transport": proxy["cloud_transport"].default, "mask_scale": proxy["mask_scale"].default}
