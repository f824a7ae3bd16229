"""Shared fixtures: tiny checkpoints and real cloud processes on free localhost ports.

Process helpers live in `tests/support.py` (`from support import start_talaria, free_port`):
conftest modules of subfolders shadow each other's names, a plain module does not.
"""

from __future__ import annotations

import pytest
import torch
from support import ServerProcess, free_port, start_talaria  # noqa: F401  (re-exported for fixtures)

# One intra-op thread: the tiny models gain nothing from more, and two processes spinning
# OpenMP threads on a 2-core machine slow every op down ~10x.
torch.set_num_threads(1)


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
