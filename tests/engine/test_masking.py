"""ReMO round trip: (x + M_pvt M_pub) W - M_pvt R_pub = x W, and what the scheme hides."""

from __future__ import annotations

import pytest
import torch

from talaria_proxy.runtime import build_scheme
from talaria_proxy.schemes.base import COMPUTE, SchemeMismatch
from talaria_proxy.schemes.remo import NoMask, RemoMask
from talaria_wire import ArchSpec, Manifest, MaskingSpec, public_basis


def manifest(wire="float64"):
    arch = ArchSpec(family="llama", hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16,
                    intermediate_size=128, vocab_size=100, rms_norm_eps=1e-6, max_position_embeddings=128)
    return Manifest(protocol="talaria/1", model_name="t", fingerprint="f", wire_dtype=wire, arch=arch, ops=[],
                    masking=MaskingSpec(basis_seed=0))


class PublicTensors:
    def __init__(self, w, rank):
        self.basis = public_basis(0, "0.o", rank, w.shape[0])
        self.w = w

    def public(self, op):
        return {"basis": self.basis, "recovery": self.basis @ self.w}


@pytest.mark.parametrize("scale", [0.1, 10.0, 100.0])
def test_remo_recovers_xw_exactly_in_float64(scale):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g, dtype=torch.float64)
    x = torch.randn(7, 64, generator=g)
    scheme = RemoMask(manifest(), mask_scale=scale, seed=1)
    scheme.prepare("0.o", PublicTensors(w, 16).public("0.o"))
    x_masked, secret = scheme.mask("0.o", x)
    x_masked = x_masked[COMPUTE]
    # the mask is as large as asked for, so the cloud never sees x ...
    ratio = (x_masked - x.double()).norm(dim=1) / x.double().norm(dim=1)
    assert ratio.min() > scale * 0.3
    # ... and the CVM still gets x W back
    y = scheme.unmask("0.o", x_masked @ w, secret)
    ref = (x.double() @ w).float()
    assert (y - ref).abs().max() / ref.abs().max() < 1e-6


def remo_on_o(m, seed: int) -> tuple[RemoMask, PublicTensors]:
    """A ReMO scheme prepared for op 0.o (d 64 -> 8, rank 16) and the op's public tensors."""
    pub = PublicTensors(torch.randn(64, 8, dtype=torch.float64), 16)
    scheme = RemoMask(m, seed=seed)
    scheme.prepare("0.o", pub.public("0.o"))
    return scheme, pub


def test_masks_are_fresh_per_call_and_live_in_the_public_subspace():
    scheme, pub = remo_on_o(manifest(), seed=3)
    x = torch.randn(2, 64)
    a = scheme.mask("0.o", x)[0][COMPUTE]
    b = scheme.mask("0.o", x)[0][COMPUTE]
    assert not torch.allclose(a, b)
    delta = a - x.double()
    in_span = delta @ pub.basis.T @ pub.basis  # projection onto span(M_pub)
    torch.testing.assert_close(in_span, delta)


def test_none_scheme_sends_plaintext_and_registry_rejects_unknown():
    x = torch.randn(3, 64)
    scheme = build_scheme("none", manifest())
    assert isinstance(scheme, NoMask)
    sent, _ = scheme.mask("0.o", x)
    assert torch.equal(sent[COMPUTE], x.double())
    with pytest.raises(ValueError, match="unknown masking scheme"):
        build_scheme("lwe", manifest())


def projected_manifest():
    return manifest().model_copy(update={"reply": "projected", "reply_dtype": "float32"})


def test_projected_answers_are_finished_with_the_cvm_share():
    """The cloud answers z = (x~ - (x~ B^T) B) W; z + (x B^T) R_pub = x W whatever the mask."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g, dtype=torch.float64)
    pub = PublicTensors(w, 16)
    x = torch.randn(5, 64, generator=g)
    for name in ("remo", "none"):
        scheme = build_scheme(name, projected_manifest())
        scheme.prepare("0.o", pub.public("0.o"))
        payloads, secret = scheme.mask("0.o", x)
        x_masked = payloads[COMPUTE]
        z = ((x_masked - (x_masked @ pub.basis.T) @ pub.basis) @ w).float()  # what the cloud sends back
        y = scheme.finish("0.o", {COMPUTE: z}, secret, scheme.completion("0.o", x, secret))
        ref = (x.double() @ w).float()
        assert (y - ref).abs().max() / ref.abs().max() < 1e-5
        # without the share the answer is wrong: the test can fail
        assert (z - ref).abs().max() / ref.abs().max() > 1e-2


def test_prefetched_masks_are_used_once_and_only_for_their_shape():
    scheme, pub = remo_on_o(projected_manifest(), seed=5)
    x = torch.randn(3, 64)
    scheme.prefetch("0.o", 3)
    g_ahead, direction = scheme._ahead["0.o"]
    payloads, secret_a = scheme.mask("0.o", x)  # uses the prefetched draw ...
    a = payloads[COMPUTE]
    torch.testing.assert_close(secret_a @ pub.basis, a - x.double())
    torch.testing.assert_close(secret_a / secret_a[:, :1], g_ahead / g_ahead[:, :1])  # same direction
    assert "0.o" not in scheme._ahead  # ... and drops it
    _, secret_b = scheme.mask("0.o", x)  # a fresh draw
    assert not torch.allclose(secret_a, secret_b)
    scheme.prefetch("0.o", 2)  # drawn for 2 rows: never stretched over 3
    payloads, secret_c = scheme.mask("0.o", x)
    c = payloads[COMPUTE]
    assert secret_c.shape == (3, 16) and "0.o" not in scheme._ahead
    torch.testing.assert_close(secret_c @ pub.basis, c - x.double())


def test_a_scheme_on_a_cloud_with_another_kernel_is_refused():
    pad_cloud = manifest().model_copy(update={"scheme": "pad"})
    with pytest.raises(SchemeMismatch, match="needs a cloud started with scheme 'remo'"):
        RemoMask(pad_cloud)
    with pytest.raises(SchemeMismatch):
        NoMask(pad_cloud)
