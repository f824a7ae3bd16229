"""The cloud's `mixed` precision: float32 GEMM on the mask-free complement, float64 on the basis.

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
        "float32": MaskedLinearService(w32, default_rank=16, wire_dtype=torch.float32),
    }


def recovery_error(service, op, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis, recovery = service.bases[op], service.recovery[op].double()
    x = torch.randn(8, basis.shape[1], generator=g, dtype=torch.float64)
    coeff = torch.randn(8, basis.shape[0], generator=g, dtype=torch.float64) * scale
    y = service.linear(op, (x + coeff @ basis).to(service.dtype)).double() - coeff @ recovery
    exact = x @ service.model.ops[op].weight.double()
    if service.model.ops[op].bias is not None:
        exact += service.model.ops[op].bias.double()
    return ((y - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize("op", ["0.qkv", "1.down", "lm_head"])
def test_mixed_error_is_independent_of_the_mask_size(services, op):
    small = recovery_error(services["mixed"], op, 1.0)
    huge = recovery_error(services["mixed"], op, 1e4)
    assert small < 1e-5 and huge < 2 * small + 1e-7
    assert recovery_error(services["float32"], op, 1e4) > 50 * huge  # the plain float32 GEMM does not hold up
    assert recovery_error(services["float64"], op, 1e4) < 1e-9


def test_mixed_serves_a_float64_wire(services):
    assert services["mixed"].manifest.wire_dtype == "float64"
    assert services["float32"].manifest.wire_dtype == "float32"
    assert services["mixed"].manifest.fingerprint != services["float64"].manifest.fingerprint
