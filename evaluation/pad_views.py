"""How each party of the `pad` scheme can read what it recorded, in the form the attacks take.

The pad scheme (shared/design/pads.md) sends u = x_bar - r mod t, x_bar = round(x 2^f_i) with a
per-row exponent f_i the CVM keeps, plus a constant coordinate 2^f_i where the op's bias is
folded in. Three attackers, each given the most useful reading of its own material:

  compute   the compute cloud's record: residues u. Read as signed integers (lift to (-t/2, t/2]),
            the public bias coordinate dropped, each row normalised (the unknown 2^f_i is a positive
            factor, so only the direction of a row can carry information).
  dealer    the pad dealer's record: one 32-byte seed per pad block (metadata rows); it expands
            every seed into r with `talaria_wire.ring.pad_rows`, exactly as the CVM does, and reads
            r the same way. The audit grants it the alignment of its pad rows with the compute
            cloud's calls (in pool order) and the compute cloud's call sizes: more than a dealer
            alone has, which can only overstate its success.
  merged    both records (collusion): lift((u + r) mod t) = x_bar exactly, bias coordinate dropped,
            normalised per row: x / |x|. The attacks on this view must recover the text; it shows
            why the two clouds must not collude.

Shape legend: n rows of one op over the transcript, p = pad_dim (d_in, +1 with a folded bias), d = d_in.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from evaluation.attacks import unit_rows
from evaluation.transcript import Transcript
from talaria_wire.ring import T, lift, pad_rows


def read_rows(residues: torch.Tensor, d_in: int) -> torch.Tensor:
    """Residues [n, p] in [0, t) -> the attacker's reading: lifted, bias coordinate dropped, unit rows [n, d]."""
    return unit_rows(lift(residues)[:, :d_in].double())


def dealer_pads(dealer_dir: str | Path, transcript: Transcript) -> dict[str, torch.Tensor]:
    """Every pad row the dealer's seeds stand for, per op in the order it dealt them: [n_dealt, p] int64."""
    specs = {op.name: op for op in transcript.manifest.ops}
    blocks: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for path in sorted((Path(dealer_dir) / "calls").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            seed = bytes(fh.get_tensor("seed").tolist())
        name = meta["op"] if meta["layer"] == "" else f"{meta['layer']}.{meta['op']}"
        spec = specs[name]
        rows = pad_rows(seed, name, int(meta["rows"]), spec.pad_dim or spec.d_in)
        blocks.setdefault(name, []).append((int(meta["call"]), rows))
    return {op: torch.cat([r for _, r in sorted(items, key=lambda t: t[0])]) for op, items in blocks.items()}


def _aligned(pads: torch.Tensor, sizes: list[int], op: str) -> list[torch.Tensor]:
    """The first sum(sizes) dealt rows, split like the compute cloud's calls (the pool's order)."""
    n = sum(sizes)
    if pads.shape[0] < n:
        raise ValueError(f"op {op}: the dealer dealt {pads.shape[0]} pad rows, the compute cloud received {n}")
    return list(pads[:n].split(sizes))


def _view(tr: Transcript, calls: dict[str, list[torch.Tensor]], mask: str | None) -> Transcript:
    return Transcript(tr.manifest, {}, calls, scale_free=True, mask=mask)


def compute_view(tr: Transcript) -> Transcript:
    """The compute cloud's residues, read as unit rows of signed integers."""
    d_in = {op.name: op.d_in for op in tr.manifest.ops}
    return _view(tr, {op: [read_rows(u, d_in[op]) for u in calls] for op, calls in tr.calls.items()}, "pad")


def dealer_view(tr: Transcript, pads: dict[str, torch.Tensor]) -> Transcript:
    """The dealer's pad rows r, read like the compute cloud's residues, aligned with its calls."""
    d_in = {op.name: op.d_in for op in tr.manifest.ops}
    calls = {}
    for op, received in tr.calls.items():
        sizes = [u.shape[0] for u in received]
        calls[op] = [read_rows(r, d_in[op]) for r in _aligned(pads[op], sizes, op)]
    return _view(tr, calls, "pad")


def merged_residues(tr: Transcript, pads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collusion: lift((u + r) mod t) per op, all calls concatenated: x_bar exactly [n, p] int64."""
    out = {}
    for op, received in tr.calls.items():
        r = torch.cat(_aligned(pads[op], [u.shape[0] for u in received], op))
        out[op] = lift(torch.remainder(torch.cat(received) + r, T))  # u, r < 2^62: the sum fits int64
    return out


def merged_view(tr: Transcript, pads: dict[str, torch.Tensor]) -> Transcript:
    """Both clouds' records together: x_bar read as unit rows (the secret 2^f_i divided away)."""
    d_in = {op.name: op.d_in for op in tr.manifest.ops}
    x_bar = merged_residues(tr, pads)
    calls = {}
    for op, received in tr.calls.items():
        rows = unit_rows(x_bar[op][:, : d_in[op]].double())
        calls[op] = list(rows.split([u.shape[0] for u in received]))
    return _view(tr, calls, None)


def simulate_pad(x: torch.Tensor, w_norm_bits: int, bias: bool, gen: torch.Generator, bias_bits: int = 0) -> torch.Tensor:
    """What the compute cloud would read for clean op inputs x [n, d]: encode as the CVM does, pad
    with fresh uniform r, read as `read_rows` does. (The inv-aug attacker's training data.)"""
    from talaria_proxy.schemes.pad import encode_rows

    x_bar, _ = encode_rows(x.double(), w_norm_bits, bias, bias_bits)
    r = torch.randint(0, T, x_bar.shape, generator=gen, dtype=torch.int64)
    return read_rows(torch.remainder(x_bar - r, T), x.shape[1])
