"""The cloud's frame socket, in process: handshake, calls, and refusals that keep or end a connection."""

from __future__ import annotations

import socket

import httpx
import pytest
import torch

from cloud_backend.checkpoint import load_prepared_model
from cloud_backend.frame_server import FrameServer
from cloud_backend.service import MaskedLinearService
from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_proxy.frame_client import FrameLink
from talaria_proxy.cloud_session import CloudSession
from talaria_proxy.transports import build_transport
from talaria_wire.frames import CALL, ERROR, HELLO, REPLY, PeerClosed, recv_frame, send_frame, send_json


@pytest.fixture(scope="module")
def service(tiny_model):
    return MaskedLinearService(load_prepared_model(str(tiny_model("qwen2")), dtype=torch.float32), default_rank=8)


@pytest.fixture(scope="module")
def server(service):
    srv = FrameServer(service, "127.0.0.1", 0, api_key="k1").start()
    yield srv
    srv.stop()


def connect(server, key="k1"):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    send_json(sock, HELLO, {"api_key": key})
    return sock, recv_frame(sock)


def op_index(service, name):
    return [op.name for op in service.manifest.ops].index(name)


def test_calls_answer_what_the_service_answers(server, service):
    sock, (kind, _, payload) = connect(server)
    with sock:
        assert kind == HELLO and service.manifest.fingerprint.encode() in payload
        x = torch.randn(3, service.manifest.arch.hidden_size, dtype=torch.float64)
        for name in ("0.qkv", "lm_head"):
            send_frame(sock, CALL, op_index(service, name), tensor=x)
            kind, op, y = recv_frame(sock)
            assert (kind, op) == (REPLY, op_index(service, name))
            assert torch.equal(y, service.linear(name, x))


def test_bad_calls_get_an_error_and_the_connection_stays_usable(server, service):
    d = service.manifest.arch.hidden_size
    sock, _ = connect(server)
    with sock:
        bad = [(len(service.manifest.ops), torch.zeros(1, d, dtype=torch.float64), 404, "unknown op index"),
               (0, torch.zeros(1, d, dtype=torch.float32), 400, "dtype"),
               (0, torch.zeros(1, d - 1, dtype=torch.float64), 400, "shape"),
               (0, torch.full((1, d), float("nan"), dtype=torch.float64), 400, "NaN")]
        for index, x, status, words in bad:
            send_frame(sock, CALL, index, tensor=x)
            kind, got, message = recv_frame(sock)
            assert (kind, got) == (ERROR, status) and words in message.decode()
        send_frame(sock, CALL, 0, tensor=torch.zeros(1, d, dtype=torch.float64))
        assert recv_frame(sock)[0] == REPLY


def test_wrong_key_and_broken_streams_end_the_connection(server, service):
    sock, (kind, status, _) = connect(server, key="wrong")
    with sock:
        assert (kind, status) == (ERROR, 401)
        with pytest.raises(PeerClosed):
            recv_frame(sock)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:  # a call before HELLO
        send_frame(sock, CALL, 0, tensor=torch.zeros(1, 4, dtype=torch.float64))
        assert recv_frame(sock)[:2] == (ERROR, 400)
    sock, _ = connect(server)
    with sock:
        sock.sendall(b"\x00" * 16)  # not a frame: the stream cannot be trusted any more
        assert recv_frame(sock)[:2] == (ERROR, 400)
        with pytest.raises(PeerClosed):
            recv_frame(sock)


def test_link_checks_the_fingerprint_and_times_out_on_a_silent_peer(server, service):
    def refuse(fp):
        raise CloudUnavailable(f"fingerprint {fp} is not ours")

    link = FrameLink(lambda: ("127.0.0.1", server.port), "k1", refuse, connect_timeout=2, timeout=2)
    with pytest.raises(CloudUnavailable, match="is not ours"):
        link.send(0, torch.zeros(1, service.manifest.arch.hidden_size, dtype=torch.float64))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog) but never answers
        link = FrameLink(lambda: ("127.0.0.1", silent.getsockname()[1]), None, lambda fp: None,
                         connect_timeout=0.5, timeout=0.5)
        with pytest.raises(CloudUnavailable, match="handshake"):
            link.send(0, torch.zeros(1, 4, dtype=torch.float64))


def test_a_cloud_without_a_frame_socket_is_a_clear_error():
    def health(request):
        return httpx.Response(200, json={"status": "ok", "frame_port": None})

    session = CloudSession("http://cloud.invalid:8100")
    session._client = httpx.Client(base_url="http://cloud.invalid:8100", transport=httpx.MockTransport(health))
    session.op_index = {"0.o": 0}
    frames = build_transport("tcp", session)
    with pytest.raises(CloudRejected, match="no frame socket.*cloud_transport"):
        frames.linear("0.o", torch.zeros(1, 4, dtype=torch.float64))
    session.close()
