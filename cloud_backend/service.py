"""The linear service: the one door to the weights. Op and shape checks, recording, then the
kernel of the cloud's scheme (kernels.py: `remo` float kernels, `pad` ring kernel and dealer).

Every process serves one scheme, named in its manifest; the proxy's scheme must match it
(`none` and `remo` use a remo cloud, `pad` a pad cloud, both as compute cloud and as dealer).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cloud_backend.checkpoint import PreparedModel
from cloud_backend.kernels import Kernel, LinearCallError, kernel_class
from cloud_backend.recorder import CallRecorder
from talaria_wire import PROTOCOL_VERSION, Manifest, OpKey, OpSpec
from talaria_wire.ops import all_op_keys

__all__ = ["LinearCallError", "MaskedLinearService"]


class MaskedLinearService:
    def __init__(self, model: PreparedModel, *, scheme: str = "remo", record_dir: str | Path | None = None,
                 max_rows: int | None = None, **kernel_options):
        self.model = model
        shapes = {k.name: (model.ops[k.name].weight.shape, model.ops[k.name].bias is not None)
                  for k in all_op_keys(model.arch.num_layers)}
        self.kernel: Kernel = kernel_class(scheme)(model, **kernel_options)
        self.scheme = scheme
        self.max_rows = max_rows
        kernel = self.kernel
        fingerprint_src = f"{model.weights_digest}:{scheme}:{kernel.fingerprint_source()}"
        self.manifest = Manifest(
            protocol=PROTOCOL_VERSION,
            model_name=model.name,
            scheme=scheme,
            max_rows=max_rows,
            fingerprint=hashlib.sha256(fingerprint_src.encode()).hexdigest()[:16],
            arch=model.arch,
            ops=[OpSpec(name=name, d_in=shape[0], d_out=shape[1], bias=bias, **kernel.op_fields(name))
                 for name, (shape, bias) in shapes.items()],
            **kernel.manifest_fields(),
        )
        self._d_out = {name: shape[1] for name, (shape, _) in shapes.items()}
        public = {op: self.public(op) for op in shapes}
        self.recorder = CallRecorder(record_dir, self.manifest, public) if record_dir else None
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        """The dtype a call's tensor must have (remo: the wire dtype; pad: int64)."""
        return self.kernel.input_dtype

    @property
    def projected(self) -> bool:
        return getattr(self.kernel, "projected", False)

    # ReMO's public tensors by name (tests, benchmarks)
    @property
    def bases(self) -> dict[str, torch.Tensor]:
        return getattr(self.kernel, "bases", {})

    @property
    def recovery(self) -> dict[str, torch.Tensor]:
        return getattr(self.kernel, "recovery", {})

    def public(self, name: str) -> dict[str, torch.Tensor]:
        self._op(name)
        return self.kernel.public(name)

    def _op(self, name: str):
        if name not in self._d_out:
            raise LinearCallError(f"unknown op {name!r}; expected '<layer>.<qkv|o|gate_up|down>' or 'lm_head'", 404)

    def _check_rows(self, name: str, rows: int) -> None:
        if self.max_rows is not None and rows > self.max_rows:
            raise LinearCallError(f"op {name}: {rows} rows is over this cloud's limit of {self.max_rows} per call", 413)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The kernel's answer for op `name`; x: [N, input_dim] in the scheme's input dtype."""
        self._op(name)
        kernel = self.kernel
        if x.dtype != kernel.input_dtype:
            raise LinearCallError(f"op {name}: dtype {x.dtype} not accepted; this {self.scheme} cloud takes {kernel.input_dtype}")
        d = kernel.input_dim(name)
        if x.dim() != 2 or x.shape[1] != d:
            raise LinearCallError(f"op {name}: expected x of shape [N, {d}], got {list(x.shape)}")
        self._check_rows(name, x.shape[0])
        kernel.check(name, x)
        if self.recorder is not None:
            self.recorder.record(OpKey.parse(name), x)
        self.calls += 1
        return kernel.linear(name, x)

    def dealer_pads(self, name: str, seed: bytes, rows: int) -> torch.Tensor:
        """The dealer's answer: r W_bar mod t [rows, d_out] for the pad `seed` stands for (pad clouds only)."""
        self._op(name)
        if self.scheme != "pad":
            raise LinearCallError(f"this cloud serves scheme {self.scheme!r}; pads come from a pad cloud", 404)
        if rows < 1:
            raise LinearCallError(f"op {name}: rows must be >= 1, got {rows}")
        self._check_rows(name, rows)
        if self.recorder is not None:
            self.recorder.record_seed(OpKey.parse(name), seed, rows)
        return self.kernel.dealer_pads(name, seed, rows)
