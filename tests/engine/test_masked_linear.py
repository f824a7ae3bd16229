"""MaskedLinearClient: the CVM's own work for a call happens while the call is in flight."""

from __future__ import annotations

import pytest
import torch

from talaria_proxy.masked_linear import MaskedLinearClient
from talaria_proxy.schemes.base import COMPUTE, MaskScheme
from talaria_proxy.schemes.remo import RemoMask
from talaria_proxy.transports.base import LinearTransport, PendingCall
from talaria_wire import ArchSpec, Manifest, MaskingSpec, public_basis

D, O, M = 32, 24, 8
OPS = ["0.o", "1.o"]


class ScriptedCloud(LinearTransport):
    """Answers projected calls like the cloud and logs when calls start and end."""

    def __init__(self, weight, name="compute", events=None):
        self.w = weight
        self.name = name
        self.events: list[str] = [] if events is None else events
        self.fail_result = False

    def manifest(self):
        arch = ArchSpec(family="llama", hidden_size=D, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16,
                        intermediate_size=64, vocab_size=10, rms_norm_eps=1e-6, max_position_embeddings=64)
        return Manifest(protocol="talaria/1", model_name="t", fingerprint="f", wire_dtype="float64", arch=arch,
                        ops=[], masking=MaskingSpec(basis_seed=0), reply="projected", reply_dtype="float32")

    def public(self, op):
        basis = public_basis(0, op, M, D)
        return {"basis": basis, "recovery": basis @ self.w}

    def linear(self, op, x):
        basis = public_basis(0, op, M, D)
        return ((x - (x @ basis.T) @ basis) @ self.w).float()

    def begin(self, op, x):
        self.events.append(f"send {op}" + ("" if self.name == "compute" else f" to {self.name}"))
        y = self.linear(op, x)

        def finish():
            self.events.append(f"answer {op}" + ("" if self.name == "compute" else f" from {self.name}"))
            if self.fail_result:
                raise RuntimeError("cloud gone")
            return y

        return PendingCall(finish, lambda ok: self.events.append(f"release {op} ok={ok}"))


class LoggingRemo(RemoMask):
    def __init__(self, manifest, events):
        super().__init__(manifest, seed=0)
        self.events = events

    def completion(self, op, x, secret):
        self.events.append(f"share {op}")
        return super().completion(op, x, secret)

    def prefetch(self, op, rows):
        self.events.append(f"prefetch {op}")
        super().prefetch(op, rows)


def make_client():
    cloud = ScriptedCloud(torch.randn(D, O, dtype=torch.float64))
    scheme = LoggingRemo(cloud.manifest(), cloud.events)
    return cloud, MaskedLinearClient({COMPUTE: cloud}, scheme, OPS, cloud.public)


def test_share_and_next_mask_are_computed_while_the_call_is_in_flight():
    cloud, client = make_client()
    x = torch.randn(3, D)
    y = client("0.o", x)
    assert cloud.events == ["send 0.o", "share 0.o", "prefetch 1.o", "answer 0.o", "release 0.o ok=True"]
    ref = (x.double() @ cloud.w).float()
    assert (y - ref).abs().max() / ref.abs().max() < 1e-5
    assert client.stats.overlap_seconds > 0 and client.stats.calls == 1
    client("1.o", x)  # uses the prefetched draw, and prefetches the next op (the first again)
    assert cloud.events[-4:-2] == ["share 1.o", "prefetch 0.o"]


def test_a_failed_answer_releases_the_call():
    cloud, client = make_client()
    cloud.fail_result = True
    with pytest.raises(RuntimeError, match="cloud gone"):
        client("0.o", torch.randn(1, D))
    assert cloud.events[-1] == "release 0.o ok=False"


class Shares(MaskScheme):
    """Additive shares x = a + b sent to two parties (linear: y = a W + b W), to test the seam."""

    name = "shares"
    parties = ("left", "right")

    def __init__(self, manifest, w):
        self.manifest = manifest
        self.w = w

    def mask(self, op, x):
        a = torch.randn_like(x.double())
        return {"left": a, "right": x.double() - a}, None

    def finish(self, op, answers, secret, share):
        return (answers["left"] + answers["right"]).float()


class PlainCloud(ScriptedCloud):
    def linear(self, op, x):
        return x @ self.w


def test_every_party_is_under_way_before_any_answer_is_awaited():
    events: list[str] = []
    w = torch.randn(D, O, dtype=torch.float64)
    left, right = PlainCloud(w, "left", events), PlainCloud(w, "right", events)
    client = MaskedLinearClient({"left": left, "right": right}, Shares(None, w), OPS, lambda op: {})
    x = torch.randn(2, D)
    y = client("0.o", x)
    assert events[:2] == ["send 0.o to left", "send 0.o to right"]
    assert events[2:4] == ["answer 0.o from left", "release 0.o ok=True"]
    torch.testing.assert_close(y, (x.double() @ w).float())
    with pytest.raises(ValueError, match="needs parties"):
        MaskedLinearClient({"left": left}, Shares(None, w), OPS, lambda op: {})


def test_a_failed_party_abandons_the_others():
    events: list[str] = []
    w = torch.randn(D, O, dtype=torch.float64)
    left, right = PlainCloud(w, "left", events), PlainCloud(w, "right", events)
    left.fail_result = True
    client = MaskedLinearClient({"left": left, "right": right}, Shares(None, w), OPS, lambda op: {})
    with pytest.raises(RuntimeError, match="cloud gone"):
        client("0.o", torch.randn(1, D))
    assert "release 0.o ok=False" in events and events.count("release 0.o ok=False") == 2
