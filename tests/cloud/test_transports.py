"""Both transports of the linear calls (WebSocket frames, HTTP POST) against a real cloud process."""

from __future__ import annotations

import pytest
import torch

from talaria_proxy.errors import CloudRejected
from talaria_proxy.transports import connect


@pytest.fixture(scope="module")
def cloud(tiny_model, tmp_path_factory):
    from support import start_talaria

    log = tmp_path_factory.mktemp("cloud") / "cloud.log"
    server = start_talaria("cloud", ["--model", str(tiny_model("qwen2")), "--api-key", "k1"], log).wait_ready()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
def test_transports_agree_and_report_bad_calls(cloud, transport):
    backend = connect(cloud.url, "k1", transport=transport)
    reference = connect(cloud.url, "k1", transport="http")
    try:
        d = backend.manifest().arch.hidden_size
        x = torch.randn(3, d, dtype=torch.float64)
        assert torch.equal(backend.linear("1.gate_up", x), reference.linear("1.gate_up", x))
        with pytest.raises(CloudRejected, match="unknown op"):
            backend.linear("7.qkv", x)
        with pytest.raises(CloudRejected, match=r"shape \[N, "):
            backend.linear("0.qkv", x[:, :5])
        assert backend.linear("0.o", torch.zeros(1, d, dtype=torch.float64)).shape[0] == 1  # still usable
    finally:
        backend.close()
        reference.close()


@pytest.mark.parametrize("transport", ["tcp", "websocket", "http"])
def test_wrong_cloud_key_is_rejected(cloud, transport):
    backend = connect(cloud.url, "wrong", transport=transport)
    try:
        with pytest.raises(CloudRejected):
            backend.linear("0.qkv", torch.zeros(1, 64, dtype=torch.float64))
    finally:
        backend.close()
