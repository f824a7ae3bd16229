"""MaskedLinearClient: the CVM's own work for a call happens while the call is in flight."""

from __future__ import annotations

import pytest
import torch

from talaria_proxy.linear_backend import LinearBackend, PendingCall
from talaria_proxy.masked_linear import MaskedLinearClient
from talaria_proxy.masking import RemoMask
from talaria_wire import ArchSpec, Manifest, MaskingSpec, public_basis

D, O, M = 32, 24, 8
OPS = ["0.o", "1.o"]


class ScriptedCloud(LinearBackend):
    """Answers projected calls like the cloud and logs when calls start and end."""

    def __init__(self, weight):
        self.w = weight
        self.events: list[str] = []
        self.fail_result = False

    def manifest(self):
        arch = ArchSpec(family="llama", hidden_size=D, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16,
                        intermediate_size=64, vocab_size=10, rms_norm_eps=1e-6, max_position_embeddings=64)
        return Manifest(protocol="talaria/1", model_name="t", fingerprint="f", wire_dtype="float64", arch=arch,
                        ops=[], masking=MaskingSpec(basis_seed=0), reply="projected", reply_dtype="float32")

    def public_tensors(self, op):
        basis = public_basis(0, op, M, D)
        return basis, basis @ self.w

    cvm_params = tokenizer_files = None

    def linear(self, op, x):
        basis = public_basis(0, op, M, D)
        return ((x - (x @ basis.T) @ basis) @ self.w).float()

    def begin(self, op, x):
        self.events.append(f"send {op}")
        y = self.linear(op, x)

        def finish():
            self.events.append(f"answer {op}")
            if self.fail_result:
                raise RuntimeError("cloud gone")
            return y

        return PendingCall(finish, lambda ok: self.events.append(f"release {op} ok={ok}"))


class LoggingRemo(RemoMask):
    def __init__(self, manifest, events):
        super().__init__(manifest, seed=0)
        self.events = events

    def completion(self, op, x):
        self.events.append(f"share {op}")
        return super().completion(op, x)

    def prefetch(self, op, rows):
        self.events.append(f"prefetch {op}")
        super().prefetch(op, rows)


def make_client():
    cloud = ScriptedCloud(torch.randn(D, O, dtype=torch.float64))
    scheme = LoggingRemo(cloud.manifest(), cloud.events)
    return cloud, MaskedLinearClient(cloud, scheme, OPS)


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
