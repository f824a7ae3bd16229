"""POST /v1/he/{op} on a real `talaria cloud --scheme pad` process: clear 4xx for every malformed,
oversized or wrongly-shaped body, and exact pads through the `he` source over HTTP."""

import httpx
import pytest
import torch
from safetensors import safe_open
from support import free_port, start_talaria

from cloud_backend.checkpoint import load_prepared_model
from cloud_backend.fixed_weights import fixed_point_op
from cloud_backend.ring_kernel import ring_matmul
from talaria_proxy.cloud_session import CloudSession
from talaria_proxy.errors import CloudUnavailable
from talaria_proxy.pads import he_keys
from talaria_proxy.pads.he_source import HeSource
from talaria_proxy.pads.source import PadShape
from talaria_wire import decode_tensors, encode_tensors
from talaria_wire.he_params import N, expand_uniform, max_answer_cols, request_cap
from talaria_wire.ring import PRIMES, T, limb_bits


@pytest.fixture(scope="module")
def pad_cloud(tiny_model, tmp_path_factory):
    path = tiny_model("qwen2")
    work = tmp_path_factory.mktemp("he")
    server = start_talaria("cloud", ["--model", str(path), "--scheme", "pad", "--record", str(work / "record")],
                           work / "cloud.log")
    try:
        yield server.wait_ready(), path, work / "record"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keys():
    return he_keys.HeKeys.fresh()


@pytest.fixture(scope="module")
def w_bars(pad_cloud):
    model = load_prepared_model(str(pad_cloud[1]), dtype=torch.float64)
    return {name: fixed_point_op(lw.weight, lw.bias).w_bar for name, lw in model.ops.items()}


def body_for(keys, d, **override):
    enc = he_keys.encrypt(keys, torch.randint(0, T, (d, N)))
    tensors = {"b": enc.b.to(torch.int32), "seed": torch.frombuffer(bytearray(enc.seed), dtype=torch.uint8),
               "pk_seed": torch.frombuffer(bytearray(keys.pk_seed), dtype=torch.uint8), "pk_b": keys.pk_b.to(torch.int32)}
    metadata = override.pop("metadata", None)
    tensors.update(override)
    return {k: v for k, v in tensors.items() if v is not None}, metadata, enc


def post(server, op, tensors, metadata=None):
    return httpx.post(f"{server.url}/v1/he/{op}", content=encode_tensors(tensors, metadata=metadata), timeout=120)


def expect_error(resp, status, needle):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_bad_bodies_get_4xx(pad_cloud, keys):
    server = pad_cloud[0]
    good, _, enc = body_for(keys, 64)
    expect_error(post(server, "9.o", good), 404, "unknown op")
    expect_error(httpx.post(f"{server.url}/v1/he/0.o", content=b"not a tensor blob"), 400, "safetensors")
    expect_error(post(server, "0.o", {k: v for k, v in good.items() if k != "pk_b"}), 400, "expected tensors")
    expect_error(post(server, "0.o", {**good, "b": good["b"].to(torch.float32)}), 400, "int32")  # float halves
    expect_error(post(server, "0.o", {**good, "b": enc.b}), 413, "at most")  # int64 halves: twice the cap
    expect_error(post(server, "0.o", {**good, "b": good["b"][:63].contiguous()}), 400, "[64, 7, 8192]")
    expect_error(post(server, "0.o", {**good, "b": good["b"][..., :4096].contiguous()}), 400, "[64, 7, 8192]")
    bad = good["b"].clone()
    bad[3, 1, 5] = PRIMES[1]
    expect_error(post(server, "0.o", {**good, "b": bad}), 400, "residues")
    expect_error(post(server, "0.o", {**good, "pk_b": -good["pk_b"] - 1}), 400, "residues")
    expect_error(post(server, "0.o", {**good, "seed": torch.zeros(16, dtype=torch.uint8)}), 400, "uint8 [32]")
    expect_error(post(server, "0.o", good, {"cols": "5:3"}), 400, "cols")
    expect_error(post(server, "0.o", good, {"cols": "zero:ten"}), 400, "k0:k1")
    expect_error(post(server, "0.o", good, {"cols": "0:65"}), 400, "outside")
    lm, _, _ = body_for(keys, 64)
    expect_error(post(server, "lm_head", lm), 413, f"at most {max_answer_cols()} output columns")
    oversized = b"\0" * (request_cap(64) + 1)
    expect_error(httpx.post(f"{server.url}/v1/he/0.o", content=oversized, timeout=60), 413, "at most")
    assert httpx.get(f"{server.url}/health").status_code == 200  # and the cloud still serves


def test_a_column_range_decrypts_to_exact_products(pad_cloud, keys, w_bars):
    server = pad_cloud[0]
    r = torch.randint(0, T, (N, 64))
    tensors, _, _ = body_for(keys, 64)
    enc = he_keys.encrypt(keys, r.t().contiguous())  # these rows, not body_for's
    tensors.update({"b": enc.b.to(torch.int32), "seed": torch.frombuffer(bytearray(enc.seed), dtype=torch.uint8)})
    resp = post(server, "lm_head", tensors, {"cols": "100:103"})
    assert resp.status_code == 200, resp.text
    answer = decode_tensors(resp.content)
    assert answer["a"].shape == (3, len(PRIMES), N) and answer["a"].dtype == torch.int32
    m, _ = he_keys.decrypt(keys, answer["a"].long(), answer["b"].long())
    w = w_bars["lm_head"][:, 100:103]
    assert torch.equal(m.t(), ring_matmul(r, w, limb_bits(64)))
    a_plain = expand_uniform(enc.seed, "a", 64, N)
    assert not torch.equal(answer["a"].long(), a_plain[:3])  # answers are re-randomised
    # a kept batch: the upload goes once, later column ranges name it
    batch = "0123456789abcdef" * 2
    assert post(server, "lm_head", tensors, {"cols": "0:1", "batch": batch}).status_code == 200
    resp = post(server, "lm_head", {}, {"cols": "1000:1024", "batch": batch})
    assert resp.status_code == 200, resp.text
    answer = decode_tensors(resp.content)
    m, _ = he_keys.decrypt(keys, answer["a"].long(), answer["b"].long())
    assert torch.equal(m.t(), ring_matmul(r, w_bars["lm_head"][:, 1000:1024], limb_bits(64)))
    expect_error(post(server, "0.o", {}, {"cols": "0:1", "batch": batch}), 409, "send its ciphertexts again")
    expect_error(post(server, "lm_head", {}, {"cols": "0:1", "batch": "f" * 32}), 409, "not (or no longer) kept")
    expect_error(post(server, "lm_head", {}, {"cols": "0:1", "batch": "XYZ"}), 400, "hex")


def test_he_source_over_http_is_exact(pad_cloud, keys, w_bars):
    server = pad_cloud[0]
    session = CloudSession(server.url, timeout=120)
    session.manifest()
    op = "0.o"
    w = w_bars[op]
    source = HeSource({op: PadShape(op, w.shape[0], w.shape[1])}, session, rows=256, check_rows=8, keys=keys)
    for _ in range(3):
        (block,) = source.produce([op])
        assert block.r.shape == (256, w.shape[0]) and torch.equal(block.rw, ring_matmul(block.r, w, limb_bits(w.shape[0])))
    assert source.stats["batches"] == 3 and source.stats["bytes_up"] > 0 and source.stats["bytes_down"] > 0
    source.close()
    # --record keeps what the cloud received: the ciphertext halves and seeds, never a pad in the clear
    recorded = [safe_open(str(f), "pt") for f in sorted((pad_cloud[2] / "calls").glob("*.safetensors"))]
    he_calls = [f for f in recorded if f.metadata().get("kind") == "he" and f.metadata()["op"] == "o"]
    assert len(he_calls) >= 3 and set(he_calls[-1].keys()) == {"b", "seed", "pk_seed", "pk_b"}


def test_a_cloud_restart_drops_the_batch_in_flight_and_fresh_pads_follow(tiny_model, cloud_factory, keys):
    """Killed mid-use and restarted on the same port: the source raises CloudUnavailable for the
    batch it was making (nothing of it is handed out), then makes fresh, exact pads again."""
    port = free_port()
    cloud = cloud_factory(tiny_model("qwen2"), "--scheme", "pad", port=port)
    session = CloudSession(cloud.url, timeout=60, connect_timeout=1.0)
    session.manifest()
    op = "0.o"
    source = HeSource({op: PadShape(op, 64, 64)}, session, rows=32, check_rows=4, keys=keys)
    (first,) = source.produce([op])  # bootstrap: one block handed out, one kept
    source.produce([op])
    cloud.stop()
    with pytest.raises(CloudUnavailable):
        source.produce([op])
    assert source.stats["discarded"] == 1
    cloud_factory(tiny_model("qwen2"), "--scheme", "pad", port=port)
    (again,) = source.produce([op])  # same weights: the reference rows still hold
    model = load_prepared_model(str(tiny_model("qwen2")), dtype=torch.float64)
    w = fixed_point_op(model.ops[op].weight, model.ops[op].bias).w_bar
    assert torch.equal(again.rw, ring_matmul(again.r, w, limb_bits(64)))
    assert not set(map(tuple, again.r.tolist())) & set(map(tuple, first.r.tolist()))
