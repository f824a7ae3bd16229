"""The cloud's `mixed` precision: float32 GEMM on the mask-free complement, float64 on the basis
(full answers) or the basis part left to the CVM (projected answers, the default).

Its recovery error must not grow with the mask (float32 alone does), which is what keeps ReMO
lossless at float32 cost.
"""

from __future__ import annotations

import pytest
import torch

from cloud_backend.checkpoint import load_prepared_model
from cloud_backend.service import MaskedLinearService


@pytest.fixture(scope="module")
def services(tiny_model):
    path = str(tiny_model("llama"))
    w64 = load_prepared_model(path, dtype=torch.float64)
    w32 = load_prepared_model(path, dtype=torch.float32)
    return {
        "float64": MaskedLinearService(w64, default_rank=16),
        "mixed": MaskedLinearService(w32, default_rank=16, wire_dtype=torch.float64),
        "mixed-full": MaskedLinearService(w32, default_rank=16, wire_dtype=torch.float64, reply="full"),
        "float32": MaskedLinearService(w32, default_rank=16, wire_dtype=torch.float32, reply="full"),
    }


def recovery_error(service, op, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis, recovery = service.bases[op], service.recovery[op].double()
    x = torch.randn(8, basis.shape[1], generator=g, dtype=torch.float64)
    coeff = torch.randn(8, basis.shape[0], generator=g, dtype=torch.float64) * scale
    answer = service.linear(op, (x + coeff @ basis).to(service.dtype)).double()
    if service.projected:  # what the CVM does: add its share (x B^T) R_pub, in float32
        share = (x.float() @ basis.float().T) @ recovery.float()
        y = answer + share.double()
    else:
        y = answer - coeff @ recovery
    exact = x @ service.model.ops[op].weight.double()
    if service.model.ops[op].bias is not None:
        exact += service.model.ops[op].bias.double()
    return ((y - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize("mode", ["mixed", "mixed-full"])
@pytest.mark.parametrize("op", ["0.qkv", "1.down", "lm_head"])
def test_mixed_error_is_independent_of_the_mask_size(services, op, mode):
    small = recovery_error(services[mode], op, 1.0)
    huge = recovery_error(services[mode], op, 1e4)
    assert small < 1e-5 and huge < 2 * small + 1e-7
    assert recovery_error(services["float32"], op, 1e4) > 50 * huge  # the plain float32 GEMM does not hold up


@pytest.mark.parametrize("op", ["0.qkv", "lm_head"])
def test_float64_projected_answers_are_exact(services, op):
    # the CVM's float32 share bounds the error at float32 level; the cloud's part adds nothing
    assert recovery_error(services["float64"], op, 1e4) < 1e-5
    assert services["float64"].manifest.answer_dtype == "float64"


def test_mixed_serves_a_float64_wire(services):
    assert services["mixed"].manifest.wire_dtype == "float64"
    assert services["mixed"].manifest.answer_dtype == "float32"  # half the answer bytes
    assert services["mixed"].manifest.fingerprint != services["mixed-full"].manifest.fingerprint
    assert services["float32"].manifest.wire_dtype == "float32"
    assert services["mixed"].manifest.fingerprint != services["float64"].manifest.fingerprint
