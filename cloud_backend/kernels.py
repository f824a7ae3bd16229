"""The cloud's kernel registry: what a linear call computes, keyed by the manifest's `scheme`.

    remo   ReMO's float kernels (remo_kernel.py): x~ W + b, or the projected answer
    pad    the exact ring kernel and the pad dealer (pad_kernel.py): u W_bar mod t, r W_bar mod t

A kernel owns its form of the weights, its public per-op tensors (GET /v1/public/{op}), its part of
the manifest and of the fingerprint, and the checks of an incoming tensor beyond op and shape
(those are common: service.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from cloud_backend.checkpoint import PreparedModel


class LinearCallError(ValueError):
    """A call the service refuses: unknown op, wrong shape, dtype or range. Maps to a 4xx."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Kernel(ABC):
    scheme: str = ""
    input_dtype: torch.dtype  # dtype of the tensor a call must carry

    def __init__(self, model: PreparedModel):
        self.model = model

    @abstractmethod
    def input_dim(self, name: str) -> int:
        """Columns of a call's tensor for op `name`."""

    @abstractmethod
    def manifest_fields(self) -> dict:
        """Manifest entries of this scheme (wire_dtype, reply, masking / ring, ...)."""

    @abstractmethod
    def op_fields(self, name: str) -> dict:
        """Extra OpSpec entries of op `name` (rank, w_norm_bits, pad_dim)."""

    @abstractmethod
    def fingerprint_source(self) -> str:
        """Everything the CVM's results depend on besides the weights digest."""

    @abstractmethod
    def public(self, name: str) -> dict[str, torch.Tensor]:
        """The public tensors of op `name` the CVM needs."""

    def check(self, name: str, x: torch.Tensor) -> None:
        """Refuse values this kernel cannot take (NaN, residues out of range) with LinearCallError."""

    @abstractmethod
    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The answer for op `name` on x [N, input_dim] (already checked)."""


def kernel_class(scheme: str) -> type[Kernel]:
    from cloud_backend.pad_kernel import PadKernel
    from cloud_backend.remo_kernel import RemoKernel

    registry = {RemoKernel.scheme: RemoKernel, PadKernel.scheme: PadKernel}
    try:
        return registry[scheme]
    except KeyError:
        raise ValueError(f"unknown cloud scheme {scheme!r}; available: {', '.join(registry)}") from None
