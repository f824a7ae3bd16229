"""Is what a pad cloud receives indistinguishable from uniform noise? Statistical tests on records.

The pad scheme claims u = x_bar - r mod t is uniform in Z_t and independent of x_bar (r uniform,
used once). Attacks failing is one kind of evidence; these tests look for any departure at all:

  chi-square  per coordinate (column) of the residues: counts in `bins` equal slices of [0, m)
              (the residue's top bits; exact integer bin edges, so unequal slices get their exact
              probabilities), tested against uniform. Under the claim the per-coordinate p-values
              are themselves uniform on [0, 1]: the summary gives the share below 0.01 and 0.05 and
              a Kolmogorov-Smirnov test of the p-values against U(0, 1).
  control     the same test on x_bar mod t, the rows as they would travel unpadded: it must reject,
              or the test has no power on this data.
  correlation per coordinate, Pearson's r between the received residues (lifted to signed integers,
              and as plain residues) and the true x_bar from the audit's CVM-side log; under
              independence |r| ~ N(0, 1/n), so mean |r| ~ sqrt(2 / (pi n)) and the largest of k
              coordinates ~ sqrt(2 ln(2k) / n).
The same chi-square reads RLWE ciphertext halves per RNS prime (`he` pads): modulus = that prime.

Shape legend: n rows (samples), k coordinates (columns), B bins.
"""

from __future__ import annotations

import math

import torch

from talaria_wire.ring import T, lift


def bin_edges(modulus: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner edges ceil(b m / B), b = 1..B-1 (int64), and each bin's exact probability [B] float64."""
    lows = [-(-b * modulus // bins) for b in range(bins + 1)]  # python ints: no overflow near 2^62
    sizes = [hi - lo for lo, hi in zip(lows[:-1], lows[1:])]
    return torch.tensor(lows[1:-1], dtype=torch.int64), torch.tensor(sizes, dtype=torch.float64) / modulus


def chi_square(values: torch.Tensor, modulus: int, bins: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """values [n, k] int64 in [0, modulus) -> (statistic [k], p-value [k]) of uniformity per column."""
    edges, probs = bin_edges(modulus, bins)
    n, k = values.shape
    idx = torch.bucketize(values, edges, right=True)  # [n, k] in [0, B)
    counts = torch.zeros(k, bins, dtype=torch.float64)
    counts.scatter_add_(1, idx.T.contiguous(), torch.ones(k, n, dtype=torch.float64))
    expected = n * probs  # [B]
    stat = ((counts - expected) ** 2 / expected).sum(1)  # [k]
    dof = bins - 1
    p = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2)  # chi2 survival function
    return stat, p


def ks_uniform(p: torch.Tensor) -> tuple[float, float]:
    """Kolmogorov-Smirnov test of samples p [k] against U(0, 1): (D, asymptotic p-value)."""
    x, _ = p.double().sort()
    k = x.numel()
    if k == 0:
        return 0.0, 1.0
    i = torch.arange(1, k + 1, dtype=torch.float64)
    d = float(torch.maximum(i / k - x, x - (i - 1) / k).max())
    lam = (math.sqrt(k) + 0.12 + 0.11 / math.sqrt(k)) * d  # Stephens' small-sample correction
    q = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return d, min(1.0, max(0.0, q))


def p_summary(p: torch.Tensor) -> dict:
    d, ks_p = ks_uniform(p)
    return {"coords": int(p.numel()), "frac_p_below_0.01": float((p < 0.01).double().mean()),
            "frac_p_below_0.05": float((p < 0.05).double().mean()), "min_p": float(p.min()),
            "ks_d": d, "ks_p": ks_p}


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson's r per column of a, b [n, k] (0 where a column is constant)."""
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    den = a.norm(dim=0) * b.norm(dim=0)
    return torch.where(den > 0, (a * b).sum(0) / den.clamp_min(1e-300), torch.zeros_like(den))


def residue_tests(u: torch.Tensor, x_bar: torch.Tensor | None, bins: int = 16) -> dict:
    """All tests for one op: u [n, p] received residues, x_bar [n, p] the CVM's true rows (or None)."""
    _, p = chi_square(u, T, bins)
    out = {"rows": int(u.shape[0]), "bins": bins, "chi2": p_summary(p), "p_values": p}
    if x_bar is not None:
        if x_bar.shape != u.shape:
            raise ValueError(f"x_bar log {list(x_bar.shape)} does not match the record {list(u.shape)}")
        live = x_bar.double().std(0) > 0  # a constant column (e.g. the bias coordinate's sign) has no r
        _, p_ctrl = chi_square(torch.remainder(x_bar, T)[:, live], T, bins)
        lifted = correlation(lift(u)[:, live], x_bar[:, live]).abs()
        raw = correlation(u[:, live], x_bar[:, live]).abs()
        out["control_chi2"] = p_summary(p_ctrl)
        out["corr_lifted"] = {"max_abs": float(lifted.max()), "mean_abs": float(lifted.mean())}
        out["corr_residue"] = {"max_abs": float(raw.max()), "mean_abs": float(raw.mean())}
        out["corr_expected_mean_abs"] = math.sqrt(2 / (math.pi * u.shape[0]))
        out["corr_expected_max_abs"] = expected_max_abs(int(live.sum()), u.shape[0])
    return out


def expected_max_abs(k: int, n: int) -> float:
    """Typical largest |r| of k independent columns of n rows: sqrt(2 ln(2k) / n) (Gaussian tail)."""
    return math.sqrt(2 * math.log(2 * max(1, k)) / n)


def summarize(per_op: dict[str, dict]) -> dict:
    """One line over all ops: pooled p-values, the worst correlation, the control's rejection rate."""
    pooled = torch.cat([t["p_values"] for t in per_op.values()])
    out = {"ops": len(per_op), "rows": max(t["rows"] for t in per_op.values()), "bins": next(iter(per_op.values()))["bins"],
           "chi2": p_summary(pooled)}
    with_truth = [t for t in per_op.values() if "corr_lifted" in t]
    if with_truth:
        out["corr_lifted_max_abs"] = max(t["corr_lifted"]["max_abs"] for t in with_truth)
        out["corr_residue_max_abs"] = max(t["corr_residue"]["max_abs"] for t in with_truth)
        out["corr_lifted_mean_abs"] = sum(t["corr_lifted"]["mean_abs"] for t in with_truth) / len(with_truth)
        out["corr_expected_mean_abs"] = min(t["corr_expected_mean_abs"] for t in with_truth)
        coords = sum(t["p_values"].numel() for t in with_truth)
        out["corr_expected_max_abs"] = expected_max_abs(coords, out["rows"])
        ctrl = torch.tensor([t["control_chi2"]["frac_p_below_0.01"] for t in with_truth])
        out["control_frac_p_below_0.01"] = float(ctrl.mean())
    return out


def strip(per_op: dict[str, dict]) -> dict[str, dict]:
    """The per-op results without the raw p-value tensors (for JSON)."""
    return {op: {k: v for k, v in t.items() if k != "p_values"} for op, t in per_op.items()}
