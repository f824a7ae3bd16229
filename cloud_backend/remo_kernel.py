"""ReMO's float kernels: y~ = x~ W + b for every op, and the public recovery tensors.

ReMO, cloud half: for each op the public basis M_pub [m, d_in] comes from the manifest seed and
R_pub = M_pub W [m, d_out] is computed once and handed to the CVM, which recovers
    y = y~ - M_pvt R_pub = (x + M_pvt M_pub) W + b - M_pvt M_pub W = x W + b.
Precision modes (weights / wire dtype):
  float64  x~ W in float64 (weights stored in float64).
  mixed    (default) float64 on the wire; the cloud splits x~ along the public basis B = M_pub:
               c = x~ B^T,   x_perp = x~ - c B,   y~ = x_perp W  (float32)  +  c R_pub  (float64)
           Since the mask lies in span(B), x_perp = x - (x B^T) B carries no mask and has the size
           of x, so the float32 GEMM rounds like plain float32 inference; the mask-sized part goes
           through the float64 m x d_out product. Weights stay float32 (half the memory traffic).
  float32  x~ W in float32 on a float32 wire: with masks much larger than the signal the rounding
           error scales with the mask (measurement only; see results/precision).
The split uses nothing but what the cloud already knows (B is public), so it leaks nothing new.

Reply (`reply`):
  full       y~ = x~ W + b as above; the CVM subtracts M_pvt R_pub.
  projected  (default) the cloud answers only the complement part z = x_perp W + b, in the weight
             dtype (float32 under mixed: half the bytes); the CVM, which knows x, adds
             (x B^T) R_pub itself. The mask never reaches the product, the cloud skips the m x d_out
             term, and the CVM can compute its term while the cloud computes z.
Known limit (measured, README "Privacy audit"): the mask lies in a subspace the cloud knows, so a
cloud that knows its model recovers the text; the `pad` kernel is the private one.
"""

from __future__ import annotations

import logging
import time

import torch

from cloud_backend.checkpoint import PreparedModel
from cloud_backend.kernels import Kernel, LinearCallError
from talaria_wire import MaskingSpec, public_basis
from talaria_wire.ops import all_op_keys
from talaria_wire.tensors import dtype_name

log = logging.getLogger(__name__)


def resolve_ranks(model: PreparedModel, default_rank: int, overrides: dict[str, int] | None) -> dict[str, int]:
    """Rank m per op: `overrides` may name an op kind ('qkv', 'lm_head') or one op ('3.qkv')."""
    overrides = overrides or {}
    ranks = {}
    for key in all_op_keys(model.arch.num_layers):
        d_in = model.ops[key.name].weight.shape[0]
        m = overrides.get(key.name, overrides.get(key.op, default_rank))
        ranks[key.name] = min(int(m), d_in - 1)  # m < d_in, else R_pub would reveal W
    return ranks


class RemoKernel(Kernel):
    scheme = "remo"

    def __init__(self, model: PreparedModel, *, basis_seed: int = 0, wire_dtype: torch.dtype = torch.float64,
                 default_rank: int = 64, rank_overrides: dict[str, int] | None = None, reply: str = "projected"):
        super().__init__(model)
        weight_dtype = next(iter(model.ops.values())).weight.dtype
        # mixed: float32 weights, float64 wire; otherwise the wire carries the weights' dtype
        self.mixed = weight_dtype == torch.float32 and wire_dtype == torch.float64
        if not self.mixed and wire_dtype != weight_dtype:
            raise ValueError(f"wire dtype {wire_dtype} needs float64 or float32 weights, got {weight_dtype}")
        if reply not in ("full", "projected"):
            raise ValueError(f"reply must be 'full' or 'projected', got {reply!r}")
        self.projected = reply == "projected"
        self.reply = reply
        self.input_dtype = wire_dtype
        self.reply_dtype = weight_dtype if self.projected else wire_dtype
        self.basis_seed = basis_seed
        self.ranks = resolve_ranks(model, default_rank, rank_overrides)
        self.bases: dict[str, torch.Tensor] = {}  # M_pub [m, d_in]
        self.recovery: dict[str, torch.Tensor] = {}  # R_pub [m, d_out]
        self._basis_dev: dict[str, torch.Tensor] = {}
        self._recovery_dev: dict[str, torch.Tensor] = {}
        t0 = time.monotonic()
        keys = all_op_keys(model.arch.num_layers)
        for n, key in enumerate(keys, 1):
            w = model.ops[key.name].weight  # [d_in, d_out]
            basis = public_basis(basis_seed, key.name, self.ranks[key.name], w.shape[0])  # [m, d_in]
            self.bases[key.name] = basis
            recovery = basis.to(w.device, wire_dtype) @ w.to(wire_dtype)  # R_pub: [m, d_out]
            self.recovery[key.name] = recovery.cpu()
            if self.mixed or self.projected:  # kept on the device for the split GEMM
                self._basis_dev[key.name] = basis.to(w.device, wire_dtype)
                self._recovery_dev[key.name] = recovery
            if n % 16 == 0 or n == len(keys):
                log.info("recovery tensors %d/%d (%.1fs)", n, len(keys), time.monotonic() - t0)

    def input_dim(self, name):
        return self.model.ops[name].weight.shape[0]

    def manifest_fields(self):
        return {"wire_dtype": dtype_name(self.input_dtype), "reply": self.reply,
                "reply_dtype": dtype_name(self.reply_dtype), "masking": MaskingSpec(basis_seed=self.basis_seed)}

    def op_fields(self, name):
        return {"rank": self.ranks[name]}

    def fingerprint_source(self):
        return f"{self.basis_seed}:{sorted(self.ranks.items())}:{self.input_dtype}:{self.mixed}:{self.reply}"

    def public(self, name):
        return {"basis": self.bases[name], "recovery": self.recovery[name]}

    def check(self, name, x):
        if not torch.isfinite(x).all():
            raise LinearCallError(f"op {name}: x contains NaN or Inf")

    def linear(self, name, x):
        op = self.model.ops[name]
        w = op.weight
        x = x.to(w.device)
        if self.mixed or self.projected:
            basis = self._basis_dev[name]  # [m, d_in] orthonormal rows, in the wire dtype like x
            coords = x @ basis.T  # c: [N, m]
            x_perp = torch.addmm(x, coords, basis, alpha=-1)  # x~ - c B: [N, d_in], mask-free
            y = x_perp.to(w.dtype) @ w  # [N, d_out]
            if not self.projected:  # full reply: add the basis part c R_pub in the wire dtype
                y = torch.addmm(y.to(x.dtype), coords, self._recovery_dev[name])  # R_pub is in the wire dtype
        else:
            y = x @ w  # [N, d_out]
        if op.bias is not None:
            y += op.bias.to(y.dtype)
        return y.cpu()
