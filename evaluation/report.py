"""Write the audit's results: a Markdown table, a JSON file and a PNG plot.

The audit measures how much of a prompt a Talaria cloud (arXiv 2603.00196) can read back from
ReMO-masked or one-time-padded op inputs, with model-aware attacks in the spirit of "Hidden No
More" (arXiv 2505.18332), and whether a pad cloud's records can be told from uniform noise.

Every number comes from `audit.score` on attacks that ran on recorded files; nothing here is
computed from anything else. Tables: accuracy (percent of received rows whose token the attack
recovered) per setting x attack x layer-op; '-' where an attack does not apply (the layer-0
nearest-neighbour attacks only read layer-0 qkv rows).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from evaluation.uniformity import expected_max_abs


def _pct(cell: dict | None) -> str:
    return "-" if cell is None else f"{100 * cell['accuracy']:.1f}"


def _ops(report: dict) -> list[str]:
    ops: list[str] = []
    for s in report["settings"]:
        for per_op in s["results"].values():
            ops.extend(op for op in per_op if op not in ops)
    order = {name: i for i, name in enumerate(report["model"]["op_order"])}
    return sorted(ops, key=lambda o: order.get(o, 1 << 30))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how often blind guessing scores k or more."""
    if k <= 0:
        return 1.0
    log = math.log
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log(p) + (n - i) * math.log1p(-p)
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def best_per_op(setting: dict, ops: list[str]) -> dict[str, tuple[str, float]]:
    best = {}
    for op in ops:
        cells = [(a, per_op[op]["accuracy"]) for a, per_op in setting["results"].items() if op in per_op]
        if cells:
            best[op] = max(cells, key=lambda c: c[1])
    return best


def markdown(report: dict) -> str:
    ops = _ops(report)
    m = report["model"]
    cfg = report["config"]
    lines: list[str] = [
        "# Privacy audit: tokens recovered from what the cloud records",
        "",
        f"Model `{m['name']}` ({m['family']}, d = {m['hidden_size']}, {m['num_layers']} layers, "
        f"vocab {m['vocab_size']}, {m['candidates']} candidate tokens); {cfg['num_prompts']} prompts from "
        f"`{cfg['prompts_file']}`, {cfg['max_tokens']} greedy tokens each; one sequence per step. "
        f"Each cell: % of the rows the cloud received for that op whose token the attack recovered "
        f"(the row's own token; prompt and generated tokens alike). ReMO mask scale: the proxy default.",
        "",
        "The attacker reads only the cloud's record directory (every received x~, the manifest, the public "
        "bases) and the checkpoint (weights, architecture, tokenizer); the harness's ground truth is used "
        "for scoring only. Attacks: `nn` nearest neighbour of layer-0 qkv rows in rmsnorm(E); `nn-proj` "
        "the same after projecting out span(M_pub); `nn-pca` after projecting out the top-m principal "
        "directions of the observed rows (M_pub unused); `match` token-by-token matching with the public "
        "model on the recovered prefix (arXiv 2505.18332), in the complement of span(M_pub) when a mask is "
        "seen there; `match-pca` the matcher with the PCA subspace; `inv` an MLP inverter trained on the "
        "attacker's own random text, applied to the raw rows; `inv-aug` trained with simulated masks; "
        "`inv-proj` trained and applied after projecting out span(M_pub). The lm_head op is not attacked.",
        "",
        "Pad settings (`pad/dealer`: compute cloud and pad dealer, two processes; `pad/he`: one cloud) are "
        "attacked once per party's view: the compute cloud's residues u, the dealer's pad rows r (it expands "
        "every seed it was sent; the audit grants it the alignment of its rows with the calls), and both "
        "together (collusion: lift(u + r mod t) = x_bar). Each view is read the best way its attacker can: "
        "residues lifted to signed integers, the folded-bias coordinate dropped, every row normalised (the "
        "CVM's per-row exponent is secret, so only a row's direction can carry information); every "
        "comparison is then by angle, PCA ranks are read off the spectrum, `inv-aug` trains on simulated "
        "pads, and `nn-proj`/`inv-proj` (public bases) do not apply.",
        "",
        "## Summary",
        "",
    ]
    for s in report["settings"]:
        best = best_per_op(s, ops)
        if not best:
            continue
        worst_op = min(best, key=lambda o: best[o][1])
        attacks = sorted({a for a, _ in best.values()})
        floor = best[worst_op][1]
        top_op = max(best, key=lambda o: best[o][1])
        reach = ("100% of the tokens at every attacked op" if floor == 1.0 else
                 f"at least {100 * floor:.1f}% of the tokens at every attacked op (lowest: {worst_op})")
        if s.get("view") in ("compute", "dealer", "cloud"):  # a view that should be at chance: its highest op
            cells = [c for per_op in s["results"].values() for c in per_op.values()]
            top = max(cells, key=lambda c: c["correct"])
            tail = binomial_tail(top["correct"], top["rows"], 1 / m["candidates"])
            reach = (f"at most {100 * best[top_op][1]:.1f}% of the tokens at any attacked op (highest: {top_op}; "
                     f"{top['correct']} of {top['rows']} rows; a uniform guess does at least as well with "
                     f"probability {tail:.2g} per cell, {min(1.0, tail * len(cells)):.2g} over its {len(cells)} cells)")
        who = f", {s['view_title']}" if "view_title" in s else ""
        lines.append(f"- **{s['label']}**{who}: the best attack recovers {reach}; best attacks: {', '.join(attacks)}.")
    if "majority" in report:
        lines.append(f"- Chance level: {100 / m['candidates']:.2f}% for a uniform guess over the {m['candidates']} "
                     f"candidates (1/vocab, nearest-neighbour top-1); a content-blind guess of the most frequent "
                     f"token scores {100 * report['majority']['share']:.2f}% of the rows.")
    if "sanity" in report:
        ok = report["sanity"]
        lines.append(f"- Sanity: unmasked split, best layer-0 attack {100 * ok['none_best_layer0']:.1f}% "
                     f"(floor {100 * ok['floor']:.1f}%)"
                     + (f"; colluding pad clouds {100 * ok['collusion_best_layer0']:.1f}%"
                        if "collusion_best_layer0" in ok else "")
                     + f": {'passed' if ok['passed'] else 'FAILED'}.")
    lines += summary_table(report, ops)
    lines += [
        "",
        "## Best attack per setting",
        "",
        "| setting | rank m per op | rows | " + " | ".join(ops) + " |",
        "|---|---|---|" + "---|" * len(ops),
    ]
    for s in report["settings"]:
        best = best_per_op(s, ops)
        ranks = ", ".join(f"{k}:{v}" for k, v in s["rank_by_kind"].items())
        cells = [f"{100 * best[o][1]:.1f} ({best[o][0]})" if o in best else "-" for o in ops]
        lines.append(f"| {s['label']} | {ranks} | {s['rows']} | " + " | ".join(cells) + " |")
    lines += ["", "## Every attack", "", "| setting | attack | " + " | ".join(ops) + " |",
              "|---|---|" + "---|" * len(ops)]
    for s in report["settings"]:
        for attack, per_op in s["results"].items():
            lines.append(f"| {s['label']} | {attack} | " + " | ".join(_pct(per_op.get(o)) for o in ops) + " |")
    lines += ["", "## Attack details", ""]
    for s in report["settings"]:
        notes = []
        for attack, per_op in s["results"].items():
            for op, cell in per_op.items():
                if "pca_rank" in cell:
                    notes.append(f"{attack} {op}: PCA rank {cell['pca_rank']} (gap {cell['pca_gap']:.1f})")
                if "projected" in cell:
                    notes.append(f"{attack} {op}: {'projected' if cell['projected'] else 'full space'} "
                                 f"(energy ratio {cell['energy_ratio']:.1f})")
                if "mask_scale_est" in cell:
                    notes.append(f"{attack} {op}: estimated mask scale {cell['mask_scale_est']:.2f}")
        lines.append(f"- **{s['label']}** (collect {s['collect_seconds']:.0f}s, attacks {s['attack_seconds']:.0f}s): "
                     + "; ".join(notes))
    lines += uniformity_markdown(report)
    if report.get("sources"):
        lines += ["", "## Runs", "", "This report joins audits of the same model, prompts and attacks (`--append`):"]
        lines += [f"- `{src['file']}` ({src['runtime_seconds']:.0f}s): {', '.join(src['labels'])}" for src in report["sources"]]
    lines += ["", f"Total runtime {report['runtime_seconds']:.0f}s.", ""]
    return "\n".join(lines)


HOLDS = {"compute": "compute cloud: residues u", "dealer": "dealer: seeds, hence pads r",
         "both": "both clouds colluding: u and r", "cloud": "the one cloud: u and the pad ciphertexts"}


def summary_table(report: dict, ops: list[str]) -> list[str]:
    """One row per setting: layer-0 nearest neighbour, its projected variant, the best attack at
    the worst and at the best op (for views at chance the best op is the figure that matters)."""
    lines = ["", "## Summary table", "",
             "| setting | what the attacker holds | layer-0 NN on what was received | NN after projecting out "
             "span(M_pub) | best attack, worst op | best attack, best op |", "|---|---|---|---|---|---|"]
    for s in report["settings"]:
        best = best_per_op(s, ops)
        if not best:
            continue
        res = s["results"]
        nn = res.get("nn", {}).get("0.qkv")
        proj = res.get("nn-proj", {}).get("0.qkv")
        lo = min(best, key=lambda o: best[o][1])
        hi = max(best, key=lambda o: best[o][1])
        holds = HOLDS.get(s.get("view"), "the cloud: every received row")
        lines.append(f"| {s['label']} | {holds} | {_pct(nn)}% | {'n/a (no public basis)' if proj is None else _pct(proj) + '%'} | "
                     f"{100 * best[lo][1]:.1f}% (`{lo}`, {best[lo][0]}) | {100 * best[hi][1]:.1f}% (`{hi}`, {best[hi][0]}) |")
    return lines


def uniformity_markdown(report: dict) -> list[str]:
    if not report.get("uniformity"):
        return []
    lines = ["", "## Is the compute cloud's record uniform?", "",
             "Per coordinate of each op's received residues u: chi-square of the top bits (16 equal slices of "
             "[0, t)) against uniform; under the claim the p-values are uniform on [0, 1] (share below 0.01 "
             "~1%, Kolmogorov-Smirnov p not small). Control: the same test on x_bar mod t (the rows unpadded) "
             "must reject. Correlation: Pearson's r per coordinate between u (lifted to signed integers, or as "
             "residues) and the true x_bar of the audit's CVM-side log; under independence mean |r| ~ "
             "sqrt(2/(pi n)) and the largest of k coordinates ~ sqrt(2 ln(2k)/n).", "",
             "| setting | op | rows | coords | chi2 p<0.01 | KS p of p-values | min p | control p<0.01 | "
             "max abs r (lifted) | max abs r (residue) | expected max abs r | mean abs r | expected mean abs r |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for u in report["uniformity"]:
        rows = [("all ops", {**u["summary"], "coords": u["summary"]["chi2"]["coords"]})]
        rows += [(op, t) for op, t in u["per_op"].items()]
        for op, t in rows:
            c = t["chi2"]
            if op == "all ops":
                ctrl, lmax, rmax = (t.get("control_frac_p_below_0.01"), t.get("corr_lifted_max_abs"),
                                    t.get("corr_residue_max_abs"))
                mean, exp = t.get("corr_lifted_mean_abs"), t.get("corr_expected_mean_abs")
            else:
                ctrl = t["control_chi2"]["frac_p_below_0.01"] if "control_chi2" in t else None
                lmax = t["corr_lifted"]["max_abs"] if "corr_lifted" in t else None
                rmax = t["corr_residue"]["max_abs"] if "corr_residue" in t else None
                mean = t["corr_lifted"]["mean_abs"] if "corr_lifted" in t else None
                exp = t.get("corr_expected_mean_abs")
            exp_max = None if lmax is None else expected_max_abs(c["coords"], t["rows"])
            f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
            lines.append(f"| {u['label']} | {op} | {t['rows']} | {c['coords']} | {100 * c['frac_p_below_0.01']:.1f}% | "
                         f"{c['ks_p']:.2f} | {c['min_p']:.2g} | {'-' if ctrl is None else format(100 * ctrl, '.1f') + '%'} | "
                         f"{f(lmax, '.4f')} | {f(rmax, '.4f')} | {f(exp_max, '.4f')} | {f(mean, '.4f')} | {f(exp, '.4f')} |")
        notes = []
        if "collusion_exact" in u:
            notes.append(f"colluding clouds' lift(u + r) equals the CVM's x_bar exactly: {u['collusion_exact']}")
        if "ciphertexts" in u:
            notes.append(u["ciphertexts"].get("note", ""))
        if notes:
            lines += ["", f"- {u['label']}: " + "; ".join(n for n in notes if n)]
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = _ops(report)
    settings = report["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings) + 1, 3.6), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], settings):
        singles = 0
        for attack, per_op in s["results"].items():
            xs = [i for i, o in enumerate(ops) if o in per_op]
            ys = [100 * per_op[ops[i]]["accuracy"] for i in xs]
            if len(xs) == 1:  # the layer-0 attacks: side by side around their op
                ax.plot([xs[0] - 0.25 + 0.25 * singles], ys, "osD^v"[singles % 5], label=attack, alpha=0.85)
                singles += 1
            else:
                ax.plot(xs, ys, ".-", label=attack, alpha=0.85)
        ax.set_title(s["label"], fontsize=10)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops, rotation=90, fontsize=6)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("tokens recovered (%)")
    legend: dict = {}  # every attack once, whichever panel drew it
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    axes[0][-1].legend(legend.values(), legend.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Token recovery from the cloud's transcript ({report['model']['name']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def write(report: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "privacy.md", "json": out_dir / "privacy.json", "png": out_dir / "privacy.png"}
    paths["md"].write_text(markdown(report))
    paths["json"].write_text(json.dumps(report, indent=1))
    plot(report, paths["png"])
    return paths
