"""Helpers to run real `talaria` servers in tests (import as `from support import ...`).

Servers are started as subprocesses of `python -m talaria_cli.main`, exactly as a user runs
them (`talaria_base.processes`), with one torch thread each (see SUBPROCESS_ENV).
"""

from __future__ import annotations

from pathlib import Path

from talaria_base.processes import ManagedProcess, free_port  # noqa: F401  (free_port re-exported)

# The tiny test models are far too small for intra-op parallelism: with several threads the
# OpenMP spin-waits of two processes on a 2-core machine make each op ~10x slower.
SUBPROCESS_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

ARCHS = ("llama", "qwen2", "qwen3", "mistral")


class ServerProcess(ManagedProcess):
    """A `talaria cloud` or `talaria proxy` subprocess; output goes to `log_path`."""

    def log(self) -> str:
        return self.log_tail()


def start_talaria(command: str, args: list[str], log_path: Path, port: int | None = None,
                  env: dict[str, str] | None = None) -> ServerProcess:
    """Start `talaria <command> ... --port P` (port chosen free unless given); not yet ready."""
    return ServerProcess.on_port(command, args, port, env={**SUBPROCESS_ENV, **(env or {})}, log_path=log_path)
