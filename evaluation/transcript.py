"""What the attacker holds: a cloud record directory, read back as per-op observation matrices.

An honest-but-curious cloud (threat model of Talaria, arXiv 2603.00196) keeps every body it
received (`cloud_backend.recorder` writes one safetensors file per call) plus the public protocol
parameters (manifest, public ReMO bases M_pub, the pad scheme's column exponents). This module
reads exactly that and nothing else: no token ids, no masks, no pads, no proxy state. Ground
truth for scoring lives with the harness. (A pad dealer's record holds seeds instead of rows:
evaluation.pad_views reads it.)

Transcript structure the attacker infers on its own: every model step makes one call per op, so
the k-th call of op '0.qkv' and the k-th call of op '5.down' carry the same rows. In the audit the
proxy runs one sequence at a time, so a call with more than one row is a prefill that starts a new
sequence at position 0 and a one-row call is the next decode position of the current sequence.
(With several sequences per step an attacker would need more work to split rows by sequence;
the audit grants it this split, which can only overstate the leak, never understate it.)

Shape legend: n rows of one op over the whole transcript, d = d_in of the op, m = ReMO rank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from talaria_wire import Manifest


@dataclass
class Segment:
    """Rows of one sequence as the attacker reconstructs them: (op-row index, position)."""

    rows: list[int] = field(default_factory=list)  # indices into the op's observation matrix
    positions: list[int] = field(default_factory=list)


@dataclass
class Transcript:
    manifest: Manifest
    bases: dict[str, torch.Tensor]  # op name -> M_pub [m, d] float64, orthonormal rows (remo clouds only)
    calls: dict[str, list[torch.Tensor]]  # op name -> received x~ per call, in call order: [N_k, d]
    # How the attacks read the rows. scale_free: each row is known only up to a positive factor
    # (pad: the CVM's secret exponent 2^f_i), so rows and references are compared as directions.
    # mask: what hides the rows as far as the attacker can tell ('pad' residues, or None).
    scale_free: bool = False
    mask: str | None = None

    @property
    def block_ops(self) -> list[str]:
        return [o.name for o in self.manifest.ops if o.name != "lm_head"]

    def observations(self, op: str) -> torch.Tensor:
        """All rows received for `op`, concatenated in call order: [n, d] float64 (int64 residues
        as received on a pad cloud: see evaluation.pad_views for how an attacker reads them)."""
        rows = torch.cat(self.calls[op])
        return rows if rows.dtype == torch.int64 else rows.double()

    def row_counts(self) -> list[int]:
        """Rows per model step (taken from the layer-0 qkv calls, one per step)."""
        first = self.block_ops[0]
        return [c.shape[0] for c in self.calls[first]]

    def segments(self) -> list[Segment]:
        """Split rows into sequences from the call sizes alone (see the module docstring)."""
        segments: list[Segment] = []
        row = 0
        for n in self.row_counts():
            if n > 1 or not segments:  # a prefill chunk opens a sequence
                segments.append(Segment())
            seg = segments[-1]
            start = len(seg.positions)
            seg.rows.extend(range(row, row + n))
            seg.positions.extend(range(start, start + n))
            row += n
        return segments


def load_transcript(record_dir: str | Path) -> Transcript:
    """Read `public.json`, `public_basis.safetensors` (remo clouds) and every `calls/*.safetensors`
    (tensor 'x': float rows on a remo cloud, int64 residues on a pad cloud)."""
    root = Path(record_dir)
    manifest = Manifest.model_validate(json.loads((root / "public.json").read_text()))
    basis_file = root / "public_basis.safetensors"
    bases = {k: v.double() for k, v in load_file(str(basis_file)).items()} if basis_file.exists() else {}
    indexed: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for path in sorted((root / "calls").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            if meta.get("kind") == "he":  # an `he` pad batch (ciphertexts): evaluation.he_views reads those
                continue
            x = fh.get_tensor("x")
        name = meta["op"] if meta["layer"] == "" else f"{meta['layer']}.{meta['op']}"
        indexed.setdefault(name, []).append((int(meta["call"]), x))
    calls = {name: [x for _, x in sorted(items, key=lambda t: t[0])] for name, items in indexed.items()}
    counts = {name: len(v) for name, v in calls.items() if name != "lm_head"}
    if len(set(counts.values())) > 1:
        raise ValueError(f"record is incomplete: unequal call counts per op {counts}")
    return Transcript(manifest, bases, calls)
