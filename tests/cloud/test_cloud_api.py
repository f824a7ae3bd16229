"""The cloud's REST API: binary tensor bodies, auth, and 4xx with a message for bad calls."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
import torch

from cloud_backend.checkpoint import load_prepared_model
from cloud_backend.server import build_app
from cloud_backend.service import MaskedLinearService
from talaria_wire import Manifest, decode_tensors, encode_tensors


@pytest.fixture(scope="module")
def service(tiny_model):
    return MaskedLinearService(load_prepared_model(str(tiny_model("qwen2")), dtype=torch.float32), default_rank=8)  # mixed


@pytest.fixture
def client(service):
    with TestClient(build_app(service, api_key="secret")) as c:
        c.headers["authorization"] = "Bearer secret"
        yield c


def test_manifest_describes_every_op(client, service):
    m = Manifest.model_validate(client.get("/v1/manifest").json())
    L = m.arch.num_layers
    assert len(m.ops) == 4 * L + 1 and m.wire_dtype == "float64"
    qkv = m.op("0.qkv")
    assert (qkv.d_in, qkv.d_out, qkv.bias, qkv.rank) == (m.arch.hidden_size, m.arch.q_size + 2 * m.arch.kv_size, True, 8)


def test_linear_call_returns_the_projected_answer(client, service):
    """Default reply: z = (x - (x B^T) B) W + b in float32, and z + (x B^T) R_pub = x W + b."""
    x = torch.randn(5, service.manifest.arch.hidden_size, dtype=torch.float64)
    r = client.post("/v1/linear/1.qkv", content=encode_tensors({"x": x}))
    assert r.status_code == 200 and r.headers["x-talaria-fingerprint"] == service.manifest.fingerprint
    assert service.manifest.reply == "projected" and service.manifest.reply_dtype == "float32"
    op = service.model.ops["1.qkv"]
    w, b = op.weight.double(), op.bias.double()
    basis, recovery = service.bases["1.qkv"], service.recovery["1.qkv"]
    z = decode_tensors(r.content)["y"]
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.double(), (x - (x @ basis.T) @ basis) @ w + b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.double() + (x @ basis.T) @ recovery, x @ w + b, rtol=1e-5, atol=1e-5)


def test_full_reply_returns_x_times_w_plus_b(service):
    full = MaskedLinearService(service.model, default_rank=8, reply="full")
    assert full.manifest.reply == "full" and full.manifest.answer_dtype == "float64"
    assert full.manifest.fingerprint != service.manifest.fingerprint  # a proxy cannot mix them up
    x = torch.randn(5, service.manifest.arch.hidden_size, dtype=torch.float64)
    op = service.model.ops["1.qkv"]
    torch.testing.assert_close(full.linear("1.qkv", x), x @ op.weight.double() + op.bias.double(), rtol=1e-5, atol=1e-5)


def test_recovery_tensor_is_basis_times_weight(client, service):
    t = decode_tensors(client.get("/v1/public/lm_head").content)
    torch.testing.assert_close(t["recovery"], t["basis"] @ service.model.ops["lm_head"].weight.double())
    eye = t["basis"] @ t["basis"].T
    torch.testing.assert_close(eye, torch.eye(eye.shape[0], dtype=eye.dtype))


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/v1/linear/0.qkv", b"not a tensor", 400, "safetensors"),
        ("/v1/linear/0.qkv", b"", 400, "empty body"),
        ("/v1/linear/0.qkv", encode_tensors({"x": torch.zeros(2, 3, dtype=torch.float64)}), 400, "shape"),
        ("/v1/linear/0.qkv", encode_tensors({"x": torch.zeros(2, 64)}), 400, "dtype"),
        ("/v1/linear/0.qkv", encode_tensors({"y": torch.zeros(2, 64, dtype=torch.float64)}), 400, "named 'x'"),
        ("/v1/linear/0.attn", encode_tensors({"x": torch.zeros(2, 64, dtype=torch.float64)}), 404, "unknown op"),
        ("/v1/linear/99.qkv", encode_tensors({"x": torch.zeros(2, 64, dtype=torch.float64)}), 404, "unknown op"),
        ("/v1/linear/0.qkv", encode_tensors({"x": torch.full((1, 64), float("nan"), dtype=torch.float64)}), 400, "NaN"),
    ],
)
def test_malformed_calls_get_4xx_with_a_message(client, path, body, status, fragment):
    r = client.post(path, content=body)
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]


def test_bearer_token_required_but_health_public(client):
    del client.headers["authorization"]
    assert client.get("/health").status_code == 200
    r = client.get("/v1/manifest")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.get("/v1/manifest", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401
