"""The `he` pad source against an in-process cloud (the real kernel): exact pads, never reused, and
the check rows catch a cloud that answers garbage, a wrong W_bar, or shifted plaintexts."""

import pytest
import torch

from cloud_backend.he_kernel import he_answer
from cloud_backend.ring_kernel import ring_matmul
from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_proxy.pads import he_keys
from talaria_proxy.pads.he_source import HeSource, PadIntegrityError
from talaria_proxy.pads.source import PadShape
from talaria_wire.he_params import DELTA, N
from talaria_wire.ring import PRIMES, limb_bits

D, O = 6, 3


class FakeHeCloud:
    """POST /v1/he/{op} in process: the real he kernel over `w_bar`, with ways to cheat."""

    fingerprint = "fp-1"

    def __init__(self, w_bar: torch.Tensor):
        self.w_bar = w_bar
        self.mode = "honest"
        self.calls = 0
        self.kept = {}  # batch -> its upload (the real cloud keeps the parsed ciphertexts)

    def post_tensors(self, path, tensors, metadata=None, timeout=None):
        self.calls += 1
        if self.mode == "down":
            raise CloudUnavailable("cloud restarted")
        batch = metadata.get("batch")
        if batch and not tensors:
            if batch not in self.kept:
                raise CloudRejected(f"cloud backend rejected {path} (409): batch {batch} is not kept")
            tensors = self.kept[batch]
        elif batch:
            self.kept[batch] = tensors
        k0, k1 = (int(v) for v in metadata["cols"].split(":"))
        w = self.w_bar.clone()
        if self.mode == "wrong_w":
            w[0, 0] += 1
        a, b = he_answer(w, bytes(tensors["seed"].tolist()), tensors["b"].long(), bytes(tensors["pk_seed"].tolist()),
                         tensors["pk_b"].long(), (k0, k1))
        if self.mode == "garbage":
            a = torch.stack([torch.randint(0, p, (k1 - k0, N)) for p in PRIMES], dim=1).to(torch.int32)
            b = torch.stack([torch.randint(0, p, (k1 - k0, N)) for p in PRIMES], dim=1).to(torch.int32)
        if self.mode == "shift":  # + Delta * 1 on column 0: a valid ciphertext of M + 1, small noise
            shift = torch.tensor([DELTA % p for p in PRIMES])[:, None]
            b = b.long()
            b[0] = torch.remainder(b[0] + shift, torch.tensor(PRIMES)[:, None])
            b = b.to(torch.int32)
        return {"a": a, "b": b}


@pytest.fixture(scope="module")
def keys():
    return he_keys.HeKeys.fresh()


def make_source(keys, check_rows=4, rows=64):
    torch.manual_seed(3)
    w_bar = torch.randint(-(2**23), 2**23 + 1, (D, O)).to(torch.float64)
    cloud = FakeHeCloud(w_bar)
    return HeSource({"op": PadShape("op", D, O)}, cloud, rows=rows, check_rows=check_rows, keys=keys), cloud


def exact(block, w_bar):
    return torch.equal(block.rw, ring_matmul(block.r, w_bar, limb_bits(w_bar.shape[0])))


def test_honest_cloud_gives_exact_pads_never_reused(keys):
    source, cloud = make_source(keys)
    blocks = [source.produce(["op"])[0] for _ in range(3)]  # bootstrap (2 batches), then a checked one
    assert cloud.calls == 3
    seen = set()
    for blk in blocks:
        assert blk.r.shape == (64, D) and blk.rw.shape == (64, O) and exact(blk, cloud.w_bar)
        for row in blk.r.tolist():
            assert tuple(row) not in seen
            seen.add(tuple(row))
    assert source.block_rows("op") == 64 and source.stats["discarded"] == 0


@pytest.mark.parametrize("mode, caught_by", [("garbage", "noise"), ("wrong_w", "check rows"), ("shift", "check rows")])
def test_a_cheating_cloud_is_caught_after_bootstrap(keys, mode, caught_by):
    source, cloud = make_source(keys)
    source.produce(["op"])  # bootstrap: two batches, the second kept for the next produce
    source.produce(["op"])
    cloud.mode = mode
    with pytest.raises(PadIntegrityError, match=caught_by):
        source.produce(["op"])
    assert source.stats["discarded"] >= 1
    cloud.mode = "honest"  # a cloud that behaves again is served again
    assert exact(source.produce(["op"])[0], cloud.w_bar)


def test_bootstrap_catches_a_cloud_that_changes_between_the_first_two_batches(keys):
    source, cloud = make_source(keys)
    real_post = cloud.post_tensors

    def flip(*args, **kwargs):
        cloud.mode = "wrong_w" if cloud.calls == 1 else "honest"
        return real_post(*args, **kwargs)

    cloud.post_tensors = flip
    with pytest.raises(PadIntegrityError, match="disagree"):
        source.produce(["op"])
    assert source.stats["discarded"] == 2


def test_a_failed_request_drops_the_batch_and_the_next_one_is_fresh(keys):
    source, cloud = make_source(keys)
    first = source.produce(["op"])[0]
    source.produce(["op"])
    cloud.mode = "down"
    with pytest.raises(CloudUnavailable):
        source.produce(["op"])
    cloud.mode = "honest"
    again = source.produce(["op"])[0]
    assert exact(again, cloud.w_bar)
    assert not set(map(tuple, again.r.tolist())) & set(map(tuple, first.r.tolist()))


def test_other_weights_reset_the_reference_rows(keys):
    source, cloud = make_source(keys)
    source.produce(["op"])
    cloud.fingerprint = "fp-2"
    cloud.w_bar = cloud.w_bar.flip(0)
    calls = cloud.calls
    blk = source.produce(["op"])[0]  # the kept bootstrap block is dropped; a new bootstrap runs
    assert cloud.calls == calls + 2 and exact(blk, cloud.w_bar)


def test_wide_ops_are_asked_for_in_column_ranges(keys, monkeypatch):
    import talaria_proxy.pads.he_source as he_source

    monkeypatch.setattr(he_source, "max_answer_cols", lambda: 2)
    source, cloud = make_source(keys)
    seen = []
    real_post = cloud.post_tensors
    cloud.post_tensors = lambda path, tensors, metadata=None, timeout=None: (
        seen.append(metadata["cols"]) or real_post(path, tensors, metadata, timeout))
    blk = source.produce(["op"])[0]
    assert seen == ["0:2", "2:3", "0:2", "2:3"] and exact(blk, cloud.w_bar)
    up = source.stats["bytes_up"]
    upload = (D + 1) * len(PRIMES) * N * 4  # the b halves and the public key
    assert up < 2.01 * upload  # two batches, each uploaded once for both ranges
    source.produce(["op"])  # the second bootstrap block, kept: no request
    real_keep = cloud.kept
    cloud.kept = type("Forgetful", (dict,), {"__setitem__": lambda self, k, v: None})()  # a cloud that keeps nothing
    blk = source.produce(["op"])[0]  # the bank check batch: its second range gets a 409, then the upload again
    assert exact(blk, cloud.w_bar) and source.stats["bytes_up"] - up > 1.99 * upload
    cloud.kept = real_keep
