"""`in-process`: the fake cloud for tests and benchmarks. A cloud_backend service object in the
same process (duck-typed: this package never imports cloud_backend) serves both as the session
(manifest, public tensors, CVM parameters, tokenizer, pads) and as the transport."""

from __future__ import annotations

import torch

from talaria_proxy.errors import CloudRejected
from talaria_proxy.transports.base import LinearTransport, PendingCall
from talaria_wire import Manifest


class InProcessCloud(LinearTransport):
    name = "in-process"

    def __init__(self, service, role: str = "cloud backend"):
        self.service = service
        self.role = role
        self.fingerprint = service.manifest.fingerprint

    # session side
    def manifest(self) -> Manifest:
        return Manifest.model_validate(self.service.manifest.model_dump())

    def public(self, op: str) -> dict[str, torch.Tensor]:
        return dict(self.service.public(op))

    def cvm_params(self):
        return dict(self.service.model.cvm_params), float(self.service.model.attention_scaling)

    def tokenizer_files(self):
        return dict(self.service.model.tokenizer_files)

    def ping(self) -> bool:
        return True

    def pads(self, requests: list[tuple[str, int]], seeds: list[bytes]) -> list[torch.Tensor]:
        """The dealer call (pads/dealer.py) without HTTP."""
        try:
            return [self.service.dealer_pads(op, seed, rows) for (op, rows), seed in zip(requests, seeds)]
        except ValueError as exc:
            raise CloudRejected(f"{self.role} rejected the pad request: {exc}") from exc

    # transport side
    def linear(self, op, tensor):
        try:
            return self.service.linear(op, tensor)
        except ValueError as exc:  # LinearCallError: what a real cloud answers with a 4xx
            raise CloudRejected(f"{self.role} rejected {op}: {exc}") from exc

    def begin(self, op, tensor):
        y = self.linear(op, tensor)
        return PendingCall(lambda: y)
