"""The `pad` scheme's cloud half: the exact ring kernel for online calls and the pad dealer.

Online (compute cloud): the CVM sends u = x_bar - r mod t [N, d], residues that are uniform and
independent of the data because r is a fresh uniform pad; the cloud answers v = u W_bar mod t.
Dealer (a second cloud with the same checkpoint): the CVM sends a 32-byte seed per block; the
dealer expands it into r (talaria_wire.ring.pad_rows, SHAKE-256) and answers r W_bar mod t. It
never sees data; the compute cloud never sees r. Private as long as the two do not collude:
merged, u + r = x_bar gives the CVM's activations away (the audit measures exactly that).
Both roles run in every `pad` cloud: which one a process plays is the proxy's choice of URL.
The CVM finishes x_bar W_bar = lift(v + r W_bar mod t) and scales it back (talaria_proxy/schemes/pad.py).
"""

from __future__ import annotations

import hashlib
import logging
import time

import torch

from cloud_backend.checkpoint import PreparedModel
from cloud_backend.fixed_weights import FixedPointOp, digest_update, fixed_point_op
from cloud_backend.kernels import Kernel, LinearCallError
from cloud_backend.ring_kernel import kernel_name, prepare_weights, ring_matmul
from talaria_wire import RingSpec
from talaria_wire.ops import all_op_keys
from talaria_wire.ring import PRIMES, RING_PRIMES, SEED_BYTES, T, W_BITS, in_ring, pad_rows

log = logging.getLogger(__name__)


class PadKernel(Kernel):
    scheme = "pad"
    input_dtype = torch.int64

    def __init__(self, model: PreparedModel, device: str | torch.device | None = None):
        super().__init__(model)
        t0 = time.monotonic()
        self.ops: dict[str, FixedPointOp] = {}
        digest = hashlib.sha256(f"ring:{T}:{W_BITS}".encode())
        for key in all_op_keys(model.arch.num_layers):
            lw = model.ops[key.name]
            dev = device or lw.weight.device
            self.ops[key.name] = fp = fixed_point_op(lw.weight, lw.bias, dev)
            digest_update(digest, key.name, fp)
            fp.w_bar = prepare_weights(fp.w_bar)  # float32 blocks for the native CPU kernel, else float64
            # the float weights are not needed any more: keep their shape only
            lw.weight = torch.empty(lw.weight.shape, device="meta")
            lw.bias = None if lw.bias is None else torch.empty(lw.bias.shape, device="meta")
        self._digest = digest.hexdigest()[:16]
        log.info("fixed-point weights of %d ops in %.1fs; ring kernel: %s", len(self.ops), time.monotonic() - t0,
                 kernel_name(next(iter(self.ops.values())).w_bar))

    def input_dim(self, name):
        return self.ops[name].d

    def manifest_fields(self):
        return {"wire_dtype": "int64", "reply": "full", "reply_dtype": "int64",
                "ring": RingSpec(modulus=T, primes=list(RING_PRIMES), w_bits=W_BITS)}

    def op_fields(self, name):
        fp = self.ops[name]
        return {"w_norm_bits": fp.w_norm_bits, "pad_dim": fp.d, "bias_bits": fp.bias_bits}

    def fingerprint_source(self):
        return f"pad:{self._digest}:{PRIMES}"  # no seeds or settings: compute cloud and dealer agree

    def public(self, name):
        return {"col_exp": self.ops[name].col_exp}

    def check(self, name, x):
        if not in_ring(x):
            raise LinearCallError(f"op {name}: residues must be int64 in [0, t) with t = {T}")

    def linear(self, name, x):
        fp = self.ops[name]
        return ring_matmul(x, fp.w_bar, fp.limb)  # v = u W_bar mod t

    def dealer_pads(self, name: str, seed: bytes, rows: int) -> torch.Tensor:
        """r W_bar mod t [rows, o] for the pad r that `seed` stands for."""
        if len(seed) != SEED_BYTES:
            raise LinearCallError(f"a pad seed has {SEED_BYTES} bytes, got {len(seed)}")
        fp = self.ops[name]
        r = pad_rows(seed, name, rows, fp.d)  # [rows, d]
        return ring_matmul(r, fp.w_bar, fp.limb)
