"""Binary tensor codec for request and response bodies.

Bodies are safetensors blobs: a small JSON header (names, dtypes, shapes, string metadata)
followed by raw little-endian data, so a call costs its bytes plus a few hundred, and nothing is
ever parsed from JSON lists.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

WIRE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}  # int64: ring residues
MEDIA_TYPE = "application/octet-stream"


class WireFormatError(ValueError):
    """A body that is not a valid tensor blob of the expected form."""


def encode_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors (made contiguous, moved to CPU) into one safetensors blob."""
    prepared = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return _st_save(prepared, metadata=metadata)


def decode_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    """Parse a safetensors blob; raise WireFormatError with a readable message when it is not one."""
    if not blob:
        raise WireFormatError("empty body: expected a safetensors blob")
    try:
        return _st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise WireFormatError(f"body is not a valid safetensors blob: {exc}") from exc


def decode_metadata(blob: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob (its JSON header's __metadata__)."""
    if len(blob) < 8:
        raise WireFormatError("body too short for a safetensors header")
    header_len = struct.unpack("<Q", blob[:8])[0]
    try:
        return json.loads(blob[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except ValueError as exc:
        raise WireFormatError(f"bad safetensors header: {exc}") from exc


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in WIRE_DTYPES.items():
        if value == dtype:
            return name
    raise WireFormatError(f"dtype {dtype} is not a wire dtype; expected one of {sorted(WIRE_DTYPES)}")
