"""Model-aware attacks on ReMO-masked op inputs (what an honest-but-curious cloud can compute).

ReMO (arXiv 2603.00196) sends x~ = x + M_pvt M_pub with M_pub [m, d] public and orthonormal rows.
The mask lies in span(M_pub), so the projector onto the orthogonal complement removes it exactly
(rows as row vectors):
    P = I - M_pub^T M_pub,   x~ P = x P + M_pvt (M_pub P) = x P      (M_pub P = 0)
Everything the attacker then needs is a reference for P x: at layer 0, x = rmsnorm(E[t]) and the
cloud knows E; deeper, it runs its own copy of the model on the prefix it already recovered plus
every candidate token (the token-by-token matching of "Hidden No More", arXiv 2505.18332).
Without M_pub, the mask subspace still shows as the m directions of abnormally large variance in
many observations (mask variance per direction ~ s^2 |x|^2 / m vs. ~|x|^2 / d for the signal); the
rank m itself is public (manifest), and can also be read off the spectrum.

The same primitives serve the pad scheme's transcripts (evaluation.pad_views), whose rows are
known only up to a positive factor: there `normalize` compares unit rows, i.e. by angle.

Shape legend: n observed rows of one op, d = d_in, k rows of a subspace basis U [k, d]
(orthonormal), C candidate tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from talaria_wire import OpKey
from talaria_wire.ops import BLOCK_OPS

PCA_GAP = 10.0  # eigenvalue ratio lambda_k / lambda_{k+1} that counts as "abnormally large variance"
# (only when the rank is not given; the audit gives the public rank m and estimates the directions)
MASK_ENERGY_RATIO = 4.0  # per-dimension energy in span(U) vs. its complement that signals a mask


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit norm (zero rows stay zero), float64: for rows known only up to a
    positive factor (the pad scheme's secret exponents), compared by direction."""
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


def project_out(x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """P x = x - (x U^T) U for every row; x [n, d], U [k, d] orthonormal rows. float64."""
    x = x.double()
    if basis is None or basis.shape[0] == 0:
        return x
    u = basis.double()
    return x - (x @ u.T) @ u


def nearest(obs: torch.Tensor, table: torch.Tensor, remove: torch.Tensor | None = None,
            chunk: int = 512, normalize: bool = False) -> torch.Tensor:
    """Index of the nearest table row to each observation after projecting out span(remove)
    (`normalize`: both sides as unit rows after the projection, i.e. by angle).

    obs [n, d], table [C, d] -> [n]. ||P(o - c)||^2 = ||Po||^2 - 2 Po.Pc + ||Pc||^2.
    """
    ref = project_out(table, remove)  # [C, d]
    ref = unit_rows(ref) if normalize else ref
    ref_sq = ref.pow(2).sum(1)  # [C]
    out = []
    for start in range(0, obs.shape[0], chunk):
        o = project_out(obs[start : start + chunk], remove)  # [c, d]
        o = unit_rows(o) if normalize else o
        dist = o.pow(2).sum(1, keepdim=True) - 2 * o @ ref.T + ref_sq[None, :]  # [c, C]
        out.append(dist.argmin(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@dataclass
class SubspaceEstimate:
    basis: torch.Tensor  # U [k, d]: the k directions of largest variance (k = 0: no mask found)
    gap: float  # lambda_k / lambda_{k+1} at the chosen k
    eigenvalues: torch.Tensor  # [d] descending


def estimate_mask_subspace(obs: torch.Tensor, rank: int | None = None, gap: float = PCA_GAP) -> SubspaceEstimate:
    """Principal components of the observations, as an estimate of span(M_pub) without M_pub.

    With `rank` (the public m of the op, published in the manifest) keep the top `rank` components.
    Without it, keep the top k up to the largest drop between consecutive eigenvalues, if that drop
    exceeds `gap` (else k = 0: no mask seen). Only the numerically non-zero part of the spectrum
    counts: at layer 0 rows repeat whenever a token repeats, so the observations of an unmasked op
    can span fewer than d directions, and the edge of that span is not a mask.
    """
    x = obs.double()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(1, x.shape[0] - 1)  # [d, d]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    live = max(1, int((evals > evals[0] * 1e-9).sum()))  # numerical rank of the observations
    ratios = evals[: live - 1] / evals[1:live]  # lambda_i / lambda_{i+1}, i < live
    if rank is not None:
        k = min(rank, evals.numel())
        drop = float(ratios[k - 1]) if 0 < k < live else float("inf")
    elif ratios.numel() == 0:
        k, drop = 0, 1.0
    else:
        k = int(ratios.argmax()) + 1
        drop = float(ratios[k - 1])
        k = k if drop >= gap else 0
    return SubspaceEstimate(evecs[:, :k].T.contiguous(), drop, evals)


def mask_energy_ratio(obs: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean energy per dimension inside span(U) over that in its complement (~1 for no mask)."""
    x = obs.double()
    k, d = basis.shape
    inside = (x @ basis.double().T).pow(2).sum() / k
    outside = project_out(x, basis).pow(2).sum() / max(1, d - k)
    return float(inside / outside.clamp_min(1e-300))


@dataclass
class MatchVariant:
    """One matcher: op `op`, compared in the complement of span(remove) (None: full space)."""

    op: str
    obs: torch.Tensor  # observed rows of the op [n, d]
    remove: torch.Tensor | None = None  # U [k, d]
    normalize: bool = False  # compare unit rows (observations known only up to a positive factor)


def match_tokens(model, variants: list[MatchVariant], segments, candidates: torch.Tensor,
                 progress=None) -> list[torch.Tensor]:
    """Token-by-token matching (arXiv 2505.18332) for several independent variants at once.

    Each variant, per sequence and position: run the public model on its own recovered prefix plus
    every candidate, take the input of its op at this position, keep the candidate whose projected
    input is nearest to the projected observation, and append that token to its prefix. Errors
    propagate, as they would for a real attacker. Variants whose recovered prefixes are identical
    share one candidate pass (same prefix, same model: same inputs); the result is the same as
    running each variant alone. Returns predicted token ids [n] per variant.
    """
    order = {name: i for i, name in enumerate(BLOCK_OPS)}
    keys = [OpKey.parse(v.op) for v in variants]
    depth = [(k.layer, order[k.op]) for k in keys]
    obs_p = [project_out(v.obs, v.remove) for v in variants]  # [n, d] each
    obs_p = [unit_rows(o) if v.normalize else o for o, v in zip(obs_p, variants)]
    preds = [torch.full((v.obs.shape[0],), -1, dtype=torch.long) for v in variants]
    t0 = time.monotonic()
    passes = 0
    for s, seg in enumerate(segments):
        cache = model.new_prefix(len(seg.rows) + 1, len(variants))  # one prefix hypothesis per variant
        prefixes: list[list[int]] = [[] for _ in variants]
        for row, pos in zip(seg.rows, seg.positions):
            if pos != cache.length:
                raise ValueError(f"segment positions are not contiguous at row {row}")
            groups: dict[tuple[int, ...], list[int]] = {}
            for j, prefix in enumerate(prefixes):
                groups.setdefault(tuple(prefix), []).append(j)
            # A group runs on its deepest member's cache: each variant's cache is exact for the layers
            # its own op reads, so the deepest member's covers everyone in the group.
            by_layer: dict[int, list[tuple[int, list[int]]]] = {}
            for members in groups.values():
                leader = max(members, key=lambda j: depth[j])
                by_layer.setdefault(keys[leader].layer, []).append((leader, members))
            for batch in by_layer.values():
                stop = keys[max((lead for lead, _ in batch), key=lambda j: depth[j])]
                captured: dict[str, torch.Tensor] = {}
                hyps = torch.tensor([lead for lead, _ in batch])
                _, kv = model.candidate_inputs(cache, hyps, candidates, stop, captured)  # [G, C, d]
                passes += 1
                picks: list[tuple[int, int, int]] = []  # (variant, row of the pass, candidate index)
                for g, (_, members) in enumerate(batch):
                    for j in members:
                        ref = project_out(captured[variants[j].op][g], variants[j].remove)  # [C, d]
                        ref = unit_rows(ref) if variants[j].normalize else ref
                        best = int((ref - obs_p[j][row]).pow(2).sum(1).argmin())
                        preds[j][row] = candidates[best]
                        prefixes[j].append(best)
                        picks.append((j, g, best))
                hyp_idx, pass_row, cand = (torch.tensor(c) for c in zip(*picks))
                model.write_kv(cache, kv, hyp_idx, pass_row, cand)
            cache.length += 1
        if progress is not None and (s + 1) % 25 == 0:
            progress(f"    matching: {s + 1}/{len(segments)} sequences, {passes} candidate passes "
                     f"({time.monotonic() - t0:.0f}s)")
    return preds
