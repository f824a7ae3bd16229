"""The wire protocol between the CVM proxy and the cloud backend.

This is the only package both sides import. It defines what crosses the trust boundary and
nothing else: op names, the manifest schema, the binary tensor codec, and the derivation of the
public ReMO basis from its seed (both sides must build the same M_pub bit for bit).
"""

from talaria_wire.basis import public_basis
from talaria_wire.manifest import ArchSpec, Manifest, MaskingSpec, OpSpec, RingSpec
from talaria_wire.ops import BLOCK_OPS, LM_HEAD, OpKey
from talaria_wire.tensors import WireFormatError, decode_tensors, encode_tensors

PROTOCOL_VERSION = "talaria/1"

__all__ = [
    "PROTOCOL_VERSION",
    "ArchSpec",
    "BLOCK_OPS",
    "LM_HEAD",
    "Manifest",
    "MaskingSpec",
    "OpKey",
    "OpSpec",
    "RingSpec",
    "WireFormatError",
    "decode_tensors",
    "encode_tensors",
    "public_basis",
]
