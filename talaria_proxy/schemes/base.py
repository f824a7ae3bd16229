"""The scheme seam: what the CVM does to x before a cloud sees it, and how it turns the answers
back into y = x W + b.

A scheme declares its online parties (the clouds every linear call goes to, e.g. ('compute',)),
the cloud kernel it needs (the manifest's `scheme`) and its public per-op material (fetched once
by `prepare`). Per call:

    payloads, secret = scheme.mask(op, x)          # one payload per party
    ... every party's call is begun before any is awaited; meanwhile:
    share = scheme.completion(op, x, secret)       # CVM work that overlaps the clouds
    y = scheme.finish(op, answers, secret, share)  # one answer per party

Schemes: none and remo (remo.py, on a `remo` cloud), pad (pad.py, on a `pad` cloud, with a pad
source: a dealer cloud or RLWE on the same cloud).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from talaria_wire import Manifest

COMPUTE = "compute"


class SchemeMismatch(ValueError):
    """The cloud serves another kernel than this scheme needs."""


class MaskScheme(ABC):
    name: str = ""
    parties: tuple[str, ...] = (COMPUTE,)
    cloud_scheme: str = "remo"  # the manifest's scheme this one runs on

    def __init__(self, manifest: Manifest):
        if manifest.scheme != self.cloud_scheme:
            raise SchemeMismatch(
                f"masking scheme {self.name!r} needs a cloud started with scheme {self.cloud_scheme!r}; "
                f"the cloud serves {manifest.scheme!r}")
        self.manifest = manifest

    def prepare(self, op: str, public: dict[str, torch.Tensor]) -> None:
        """Keep the public per-op material (called once per op at start)."""

    def prefetch(self, op: str, rows: int) -> None:
        """Prepare the random part of the next call's mask (called while the clouds compute)."""

    def completion(self, op: str, x: torch.Tensor, secret: Any) -> torch.Tensor | None:
        """CVM work that needs only x and the secret; the caller runs it while the clouds work."""
        return None

    @abstractmethod
    def mask(self, op: str, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """x [N, d_in] float32 -> ({party: payload}, secret kept by the CVM)."""

    @abstractmethod
    def finish(self, op: str, answers: dict[str, torch.Tensor], secret: Any, share: torch.Tensor | None) -> torch.Tensor:
        """The parties' answers -> y = x W + b, float32 [N, d_out]."""

    def close(self) -> None:
        """Release background work (pad pools)."""
