"""The masked-linear service: y~ = x~ W + b for every op, and the public ReMO recovery tensors.

ReMO, cloud half: for each op the public basis M_pub [m, d_in] comes from the manifest seed and
R_pub = M_pub W [m, d_out] is computed once and handed to the CVM, which recovers
    y = y~ - M_pvt R_pub = (x + M_pvt M_pub) W + b - M_pvt M_pub W = x W + b.
GEMMs run in the wire dtype (float64 by default): with masks much larger than the signal, fp32,
TF32 or bf16 products lose the low bits of x W that greedy decoding needs (see design notes).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from cloud_backend.checkpoint import PreparedModel
from cloud_backend.recorder import CallRecorder
from talaria_wire import PROTOCOL_VERSION, Manifest, MaskingSpec, OpKey, OpSpec, public_basis
from talaria_wire.ops import all_op_keys
from talaria_wire.tensors import dtype_name

log = logging.getLogger(__name__)


class LinearCallError(ValueError):
    """A call the service refuses: unknown op, wrong shape or dtype. Maps to a 4xx."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def resolve_ranks(model: PreparedModel, default_rank: int, overrides: dict[str, int] | None) -> dict[str, int]:
    """Rank m per op: `overrides` may name an op kind ('qkv', 'lm_head') or one op ('3.qkv')."""
    overrides = overrides or {}
    ranks = {}
    for key in all_op_keys(model.arch.num_layers):
        d_in = model.ops[key.name].weight.shape[0]
        m = overrides.get(key.name, overrides.get(key.op, default_rank))
        ranks[key.name] = min(int(m), d_in - 1)  # m < d_in, else R_pub would reveal W
    return ranks


class MaskedLinearService:
    def __init__(
        self,
        model: PreparedModel,
        *,
        basis_seed: int = 0,
        default_rank: int = 64,
        rank_overrides: dict[str, int] | None = None,
        record_dir: str | Path | None = None,
    ):
        self.model = model
        dtype = next(iter(model.ops.values())).weight.dtype
        self.dtype = dtype
        self.ranks = resolve_ranks(model, default_rank, rank_overrides)
        self.bases: dict[str, torch.Tensor] = {}
        self.recovery: dict[str, torch.Tensor] = {}
        t0 = time.monotonic()
        keys = all_op_keys(model.arch.num_layers)
        for n, key in enumerate(keys, 1):
            w = model.ops[key.name].weight  # [d_in, d_out]
            basis = public_basis(basis_seed, key.name, self.ranks[key.name], w.shape[0])  # [m, d_in]
            self.bases[key.name] = basis
            self.recovery[key.name] = (basis.to(w.device, w.dtype) @ w).cpu()  # R_pub: [m, d_out]
            if n % 16 == 0 or n == len(keys):
                log.info("recovery tensors %d/%d (%.1fs)", n, len(keys), time.monotonic() - t0)
        fingerprint_src = f"{model.weights_digest}:{basis_seed}:{sorted(self.ranks.items())}:{dtype}"
        self.manifest = Manifest(
            protocol=PROTOCOL_VERSION,
            model_name=model.name,
            fingerprint=hashlib.sha256(fingerprint_src.encode()).hexdigest()[:16],
            wire_dtype=dtype_name(dtype),
            arch=model.arch,
            ops=[
                OpSpec(
                    name=k.name,
                    d_in=model.ops[k.name].weight.shape[0],
                    d_out=model.ops[k.name].weight.shape[1],
                    bias=model.ops[k.name].bias is not None,
                    rank=self.ranks[k.name],
                )
                for k in keys
            ],
            masking=MaskingSpec(basis_seed=basis_seed),
        )
        self.recorder = CallRecorder(record_dir, self.manifest, self.bases) if record_dir else None
        self.calls = 0

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """y~ = x~ W (+ b) for op `name`; x: [N, d_in] in the wire dtype -> [N, d_out]."""
        op = self.model.ops.get(name)
        if op is None:
            raise LinearCallError(f"unknown op {name!r}; expected '<layer>.<qkv|o|gate_up|down>' or 'lm_head'", 404)
        if x.dtype != self.dtype:
            raise LinearCallError(f"op {name}: dtype {x.dtype} not accepted; this service computes in {self.dtype}")
        if x.dim() != 2 or x.shape[1] != op.weight.shape[0]:
            raise LinearCallError(f"op {name}: expected x of shape [N, {op.weight.shape[0]}], got {list(x.shape)}")
        if not torch.isfinite(x).all():
            raise LinearCallError(f"op {name}: x contains NaN or Inf")
        if self.recorder is not None:
            self.recorder.record(OpKey.parse(name), x)
        self.calls += 1
        w = op.weight
        y = x.to(w.device) @ w  # [N, d_out]
        if op.bias is not None:
            y += op.bias
        return y.cpu()
