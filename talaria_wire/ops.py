"""Names of the outsourced linear ops.

Per decoder layer the CVM makes four calls (q,k,v fused; o; gate,up fused; down) and one more per
step for the LM head, so a step costs 4*L + 1 calls whatever the number of sequences in it.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_OPS: tuple[str, ...] = ("qkv", "o", "gate_up", "down")
LM_HEAD = "lm_head"


@dataclass(frozen=True, order=True)
class OpKey:
    """One weight-dependent linear op: a block op of layer `layer`, or the LM head (layer None)."""

    layer: int | None
    op: str

    def __post_init__(self) -> None:
        if self.layer is None and self.op != LM_HEAD:
            raise ValueError(f"op {self.op!r} needs a layer index")
        if self.layer is not None and self.op not in BLOCK_OPS:
            raise ValueError(f"unknown block op {self.op!r}; expected one of {BLOCK_OPS}")

    @property
    def name(self) -> str:
        """Stable string form used in URLs, tensor names and recordings: '3.qkv' or 'lm_head'."""
        return self.op if self.layer is None else f"{self.layer}.{self.op}"

    @classmethod
    def parse(cls, name: str) -> "OpKey":
        if name == LM_HEAD:
            return cls(None, LM_HEAD)
        layer, sep, op = name.partition(".")
        if not sep or not layer.isdigit():
            raise ValueError(f"bad op name {name!r}; expected '<layer>.<op>' or '{LM_HEAD}'")
        return cls(int(layer), op)

    def __str__(self) -> str:
        return self.name


def all_op_keys(num_layers: int) -> list[OpKey]:
    """Every op of a model, in execution order."""
    keys = [OpKey(i, op) for i in range(num_layers) for op in BLOCK_OPS]
    keys.append(OpKey(None, LM_HEAD))
    return keys
