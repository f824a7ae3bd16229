"""In-process engine fixtures: a cloud service in this process behind a spying in-process transport."""

from __future__ import annotations

import pytest

from cloud_backend.checkpoint import load_prepared_model
from cloud_backend.service import MaskedLinearService
from talaria_proxy.transports.in_process import InProcessCloud


class SpyBackend(InProcessCloud):
    """Records every linear call as (op, x~ sent, y~ received)."""

    def __init__(self, service):
        super().__init__(service)
        self.calls: list[tuple[str, object]] = []

    def linear(self, op, x):
        self.calls.append((op, x.clone()))
        return super().linear(op, x)


@pytest.fixture(scope="session")
def prepared(tiny_model):
    cache = {}

    def get(arch="qwen2"):
        if arch not in cache:
            cache[arch] = load_prepared_model(str(tiny_model(arch)))
        return cache[arch]

    return get


@pytest.fixture
def spy_backend(prepared):
    def make(arch="qwen2", rank=16, record_dir=None):
        return SpyBackend(MaskedLinearService(prepared(arch), default_rank=rank, record_dir=record_dir))

    return make
