"""The frame codec of the TCP transport, over a socket pair: bytes in, the same bytes out."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
import torch

from talaria_wire.frames import (CALL, ERROR, HEADER, HELLO, MAGIC, REPLY, FrameError, PeerClosed, recv_frame,
                                 send_frame, send_json)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 7), (3, 5000), (0, 4)])  # small, over the one-segment size, empty
def test_tensor_frames_round_trip_bit_for_bit(pair, dtype, shape):
    a, b = pair
    x = torch.randn(*shape, dtype=dtype)
    sender = threading.Thread(target=send_frame, args=(a, CALL, 17), kwargs={"tensor": x})
    sender.start()  # a large frame does not fit the socket buffer: send and receive at once
    kind, op, y = recv_frame(b)
    sender.join()
    assert (kind, op) == (CALL, 17)
    assert y.dtype == dtype and torch.equal(y, x)


def test_bytes_frames_and_json(pair):
    a, b = pair
    send_json(a, HELLO, {"api_key": "k"})
    send_frame(a, ERROR, 404, payload="no such op".encode())
    assert recv_frame(b) == (HELLO, 0, b'{"api_key": "k"}')
    assert recv_frame(b) == (ERROR, 404, b"no such op")


def test_non_contiguous_and_bad_tensors(pair):
    a, b = pair
    x = torch.randn(6, 4, dtype=torch.float64).T  # a transposed view is sent as its values
    send_frame(a, REPLY, tensor=x)
    assert torch.equal(recv_frame(b)[2], x)
    with pytest.raises(FrameError, match="2-D float32/float64/int64"):
        send_frame(a, CALL, tensor=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(FrameError, match="2-D float32/float64/int64"):
        send_frame(a, CALL, tensor=torch.zeros(2, 2, dtype=torch.int32))
    residues = torch.tensor([[0, 2**62 - 1], [-1, 5]], dtype=torch.int64)  # the pad scheme's ring residues
    send_frame(a, CALL, 3, tensor=residues)
    kind, op, got = recv_frame(b)
    assert (kind, op) == (CALL, 3) and got.dtype == torch.int64 and torch.equal(got, residues)


def test_malformed_frames_are_refused(pair):
    a, b = pair
    a.sendall(b"GET / HTTP/1.1\r\n")  # 16 bytes of something else
    with pytest.raises(FrameError, match="magic"):
        recv_frame(b)
    a.sendall(HEADER.pack(MAGIC, CALL, 9, 0, 1, 1))
    with pytest.raises(FrameError, match="dtype code"):
        recv_frame(b)
    a.sendall(HEADER.pack(MAGIC, CALL, 2, 0, 1 << 20, 1 << 20))  # 8 TiB: a corrupt header, not a call
    with pytest.raises(FrameError, match="over the limit"):
        recv_frame(b)


def test_a_peer_closing_mid_frame_is_reported(pair):
    a, b = pair
    a.sendall(HEADER.pack(MAGIC, CALL, 2, 0, 1, 4) + struct.pack("<d", 1.0))  # 1 of 4 values
    a.close()
    with pytest.raises(PeerClosed):
        recv_frame(b)
