"""One thread of the cloud does all tensor work (cloud_backend/compute.py): every transport's GEMMs
run on it, it serves many frame connections, and it cuts off a peer that stalls mid-frame."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from cloud_backend import frame_server
from cloud_backend.checkpoint import load_prepared_model
from cloud_backend.compute import ComputeThread
from cloud_backend.frame_server import FrameServer
from cloud_backend.server import build_app
from cloud_backend.service import MaskedLinearService
from talaria_wire import decode_tensors, encode_tensors
from talaria_wire.frames import CALL, HELLO, REPLY, PeerClosed, recv_frame, send_frame, send_json


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_prepared_model(str(tiny_model("qwen2")), dtype=torch.float32)


@pytest.fixture
def compute():
    c = ComputeThread(threads=1).start()
    yield c
    c.stop()


class ThreadLog:
    """Wraps service.linear to record which thread ran each call."""

    def __init__(self, service: MaskedLinearService):
        self.threads: list[int] = []
        inner = service.linear

        def linear(name, x):
            self.threads.append(threading.get_ident())
            return inner(name, x)

        service.linear = linear


def frame_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    send_json(sock, HELLO, {})
    assert recv_frame(sock)[0] == HELLO
    return sock


def call(sock: socket.socket, op: int, x: torch.Tensor) -> torch.Tensor:
    send_frame(sock, CALL, op, tensor=x)
    kind, got_op, y = recv_frame(sock)
    assert (kind, got_op) == (REPLY, op)
    return y


def test_every_transport_runs_its_gemms_on_the_compute_thread(model, compute):
    service = MaskedLinearService(model, default_rank=8)
    log = ThreadLog(service)
    d = service.manifest.arch.hidden_size
    x = torch.randn(2, d, dtype=torch.float64)
    frames = FrameServer(service, "127.0.0.1", 0, compute=compute).start()
    try:
        a, b = frame_connection(frames.port), frame_connection(frames.port)
        with a, b:
            for sock in (a, b, a):
                call(sock, 0, x)
            assert compute.connections == 2
        with TestClient(build_app(service, frame_port=frames.port, compute=compute)) as client:
            assert client.post("/v1/linear/0.qkv", content=encode_tensors({"x": x})).status_code == 200
            with client.websocket_connect("/v1/linear-ws") as ws:
                ws.send_bytes(encode_tensors({"x": x}, metadata={"op": "0.o"}))
                assert set(decode_tensors(ws.receive_bytes())) == {"y"}
            assert client.get("/v1/public/0.qkv").status_code == 200
    finally:
        frames.stop()
    assert len(log.threads) == 5 and set(log.threads) == {compute.ident}
    deadline = time.monotonic() + 5
    while compute.connections and time.monotonic() < deadline:  # closed peers are dropped, not leaked
        time.sleep(0.01)
    assert compute.connections == 0


def test_a_peer_stalling_mid_frame_is_cut_off_and_others_are_served(model, compute, monkeypatch):
    monkeypatch.setattr(frame_server, "CALL_READ_TIMEOUT_S", 0.5)
    service = MaskedLinearService(model, default_rank=8)
    x = torch.randn(1, service.manifest.arch.hidden_size, dtype=torch.float64)
    frames = FrameServer(service, "127.0.0.1", 0, compute=compute).start()
    try:
        staller, other = frame_connection(frames.port), frame_connection(frames.port)
        with staller, other:
            staller.sendall(b"TLF1\x02")  # 5 of a header's 16 bytes, then nothing
            time.sleep(0.05)
            t0 = time.monotonic()
            y = call(other, 0, x)  # waits for the staller's timeout at most
            assert time.monotonic() - t0 < 5 and torch.equal(y, service.linear("0.qkv", x))
            with pytest.raises((PeerClosed, ConnectionError)):
                recv_frame(staller)  # the compute thread closed it
            assert torch.equal(call(other, 0, x), y)  # and still serves the other one
    finally:
        frames.stop()


def test_jobs_return_results_and_errors_and_stop_refuses_new_work():
    c = ComputeThread(threads=1).start()
    assert c.call(lambda: threading.get_ident()) == c.ident != threading.get_ident()
    assert c.call(lambda: c.call(lambda: 7)) == 7  # nested call runs inline, no deadlock
    with pytest.raises(ZeroDivisionError):
        c.call(lambda: 1 / 0)
    assert c.alive  # a failing job does not end the thread
    gate = threading.Event()
    first = c.submit(lambda: (gate.wait(5), c.stop(), "done")[-1])  # stops while another job is queued
    queued = c.submit(lambda: "never")
    gate.set()
    assert first.result(5) == "done"
    c._thread.join(5)
    assert not c.alive
    with pytest.raises(RuntimeError, match="stopped|not running"):
        queued.result(5)
    with pytest.raises(RuntimeError, match="not running"):
        c.call(lambda: 1)


class OneByteConnection:
    """The smallest `Connection`: reads one byte whenever the socket is readable."""

    wants_write = False
    deadline = None

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.served = threading.Event()

    def readable(self) -> bool:  # keep the connection while bytes arrive
        data = self.sock.recv(1)
        self.served.set()
        return bool(data)

    def writable(self) -> bool:
        return True

    def buffered(self) -> bool:
        return False


def test_adopted_sockets_close_when_the_thread_stops():
    c = ComputeThread(threads=1).start()
    ours, theirs = socket.socketpair()
    conn = OneByteConnection(ours)
    c.adopt(conn)
    theirs.sendall(b"x")
    assert conn.served.wait(5)  # read: closing now is a clean close, not a reset over unread bytes
    assert c.connections == 1
    c.stop()
    theirs.settimeout(5)
    assert theirs.recv(1) == b""  # closed by the compute thread
    theirs.close()
