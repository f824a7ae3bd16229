"""The shared protocol: op names, the tensor codec, and the public basis."""

from __future__ import annotations

import pytest
import torch

from talaria_wire import OpKey, WireFormatError, decode_tensors, encode_tensors, public_basis
from talaria_wire.ops import all_op_keys
from talaria_wire.tensors import decode_metadata


def test_op_names_round_trip_and_reject_nonsense():
    for key in all_op_keys(3):
        assert OpKey.parse(key.name) == key
    assert len(all_op_keys(3)) == 4 * 3 + 1
    for bad in ["qkv", "x.qkv", "1.attn", "", "1."]:
        with pytest.raises(ValueError):
            OpKey.parse(bad)


def test_codec_is_exact_and_reports_garbage():
    x = torch.randn(3, 5, dtype=torch.float64)
    blob = encode_tensors({"x": x}, metadata={"k": "v"})
    assert torch.equal(decode_tensors(blob)["x"], x)
    assert decode_metadata(blob) == {"k": "v"}
    with pytest.raises(WireFormatError):
        decode_tensors(b"\x00" * 3)


def test_public_basis_is_deterministic_orthonormal_and_per_op():
    a = public_basis(0, "3.qkv", 16, 64)
    assert a.shape == (16, 64) and a.dtype == torch.float64
    assert torch.equal(a, public_basis(0, "3.qkv", 16, 64))
    torch.testing.assert_close(a @ a.T, torch.eye(16, dtype=torch.float64))
    assert not torch.allclose(a, public_basis(0, "3.o", 16, 64))
    assert not torch.allclose(a, public_basis(1, "3.qkv", 16, 64))
    with pytest.raises(ValueError, match="m < d"):
        public_basis(0, "lm_head", 64, 64)
