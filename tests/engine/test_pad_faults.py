"""Pad clouds refuse bad input with a 4xx and a message; a dealer that goes down, comes back or
serves other weights gives a clear 503 within seconds through the API, never a hang and never a
weaker scheme; the proxy recovers when the dealer is back. Real processes throughout."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
import torch
from support import free_port, start_talaria

from talaria_proxy.errors import CloudRejected
from talaria_proxy.transports import connect
from talaria_wire import encode_tensors
from talaria_wire.ring import T


@pytest.fixture(scope="module")
def pad_cloud(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("pad") / "cloud.log"
    server = start_talaria("cloud", ["--model", str(tiny_model("qwen2")), "--scheme", "pad"], log).wait_ready()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["tcp", "websocket", "http"])
def test_the_ring_kernel_refuses_bad_calls_and_stays_usable(pad_cloud, transport):
    link = connect(pad_cloud.url, transport=transport)
    try:
        m = link.manifest()
        assert m.scheme == "pad" and m.ring.modulus == T
        d = m.op("0.qkv").pad_dim
        good = torch.randint(0, T, (2, d), dtype=torch.int64)
        assert link.linear("0.qkv", good).dtype == torch.int64
        cases = [("0.qkv", good.double(), "dtype"),
                 ("0.qkv", torch.full((1, d), T, dtype=torch.int64), r"residues must be int64 in \[0, t\)"),
                 ("0.qkv", torch.full((1, d), -1, dtype=torch.int64), "residues"),
                 ("0.qkv", good[:, :-1], r"shape \[N, "),
                 ("9.qkv", good, "unknown op")]
        for op, x, message in cases:
            with pytest.raises(CloudRejected, match=message):
                link.linear(op, x)
        assert torch.equal(link.linear("0.qkv", good), link.linear("0.qkv", good))  # still usable, exact
    finally:
        link.close()


def test_the_dealer_refuses_bad_requests(pad_cloud):
    def post(seeds, requests):
        meta = None if requests is None else {"requests": requests}
        return httpx.post(pad_cloud.url + "/v1/pads", content=encode_tensors({"seeds": seeds}, metadata=meta))

    ok = post(torch.zeros(1, 32, dtype=torch.uint8), '[["0.o", 2]]')
    assert ok.status_code == 200
    for seeds, requests, status, text in [
        (torch.zeros(1, 16, dtype=torch.uint8), '[["0.o", 2]]', 400, "32 bytes"),
        (torch.zeros(1, 32, dtype=torch.uint8), '[["9.o", 2]]', 404, "unknown op"),
        (torch.zeros(1, 32, dtype=torch.uint8), '[["0.o", 0]]', 400, "rows"),
        (torch.zeros(1, 32, dtype=torch.uint8), '[["0.o", 100000]]', 413, "limit"),
        (torch.zeros(2, 32, dtype=torch.uint8), '[["0.o", 2]]', 400, "length"),
        (torch.zeros(1, 32, dtype=torch.float32), '[["0.o", 2]]', 400, "uint8"),
        (torch.zeros(1, 32, dtype=torch.uint8), "not json", 400, ""),
        (torch.zeros(1, 32, dtype=torch.uint8), None, 400, "requests"),
    ]:
        resp = post(seeds, requests)
        assert resp.status_code == status, (requests, resp.text)
        assert text in resp.json()["error"]["message"]
    assert httpx.post(pad_cloud.url + "/v1/pads", content=b"garbage").status_code == 400


def metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def chat(url: str, words: int) -> httpx.Response:
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    body = {"model": model, "max_tokens": 2,
            "messages": [{"role": "user", "content": " ".join(["hello"] * words)}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def test_a_dealer_that_dies_returns_or_changes_weights(tiny_model, tmp_path, pad_cloud):
    model = str(tiny_model("qwen2"))
    dealer_port = free_port()

    def dealer(path=model):
        return start_talaria("cloud", ["--model", path, "--scheme", "pad"], tmp_path / f"dealer-{time.monotonic()}.log",
                             port=dealer_port).wait_ready()

    first = dealer()
    # a 1 MiB pool holds ~50 rows per op: a long prompt has to wait for the dealer
    proxy = start_talaria("proxy", ["--cloud", pad_cloud.url, "--scheme", "pad", "--dealer-url", first.url,
                                    "--pad-pool-mb", "1", "--pad-timeout", "5"], tmp_path / "proxy.log").wait_ready()
    try:
        assert chat(proxy.url, 3).status_code == 200
        metrics = httpx.get(proxy.url + "/metrics").text
        assert metric(metrics, 'talaria_pad_rows_consumed_total{op_kind="qkv"}') > 0
        assert metric(metrics, "talaria_pad_source_up") == 1
        first.stop(signal.SIGKILL)
        t0 = time.monotonic()
        resp = chat(proxy.url, 120)
        assert resp.status_code == 503 and time.monotonic() - t0 < 8.0, resp.text
        assert "pad" in resp.json()["error"]["message"]
        metrics = httpx.get(proxy.url + "/metrics").text
        assert metric(metrics, "talaria_pad_source_up") == 0 and metric(metrics, "talaria_pad_unavailable_total") >= 1
        second = dealer()  # the same checkpoint again: the proxy carries on
        deadline = time.monotonic() + 15
        while (status := chat(proxy.url, 120).status_code) != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 200
        second.stop()
        third = dealer(str(tiny_model("llama")))  # other weights on the dealer's address
        deadline = time.monotonic() + 15
        while (resp := chat(proxy.url, 120)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert resp.status_code == 503 and "fingerprint" in resp.json()["error"]["message"], resp.text
        third.stop()
    finally:
        proxy.stop()
    assert "hello" not in proxy.log()  # no prompt text in the proxy's log
