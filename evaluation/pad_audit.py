"""The audit of one `pad` setting: every attacker's view of its records, scored, plus uniformity.

pad/dealer has two records (the compute cloud's residues, the dealer's seeds), hence three
attackers (evaluation.pad_views): each cloud alone, and both together (collusion). pad/he has one
cloud, which sees the online residues and the uploaded ciphertexts (evaluation.he_views). Every
view goes through the same attacks as the other settings (`Attacker.attack`), and the compute
cloud's residues through the uniformity tests (evaluation.uniformity) against the harness's
CVM-side x_bar log. The attackers never see truth.json or xbar.safetensors; scoring does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from evaluation import pad_views as V
from evaluation import uniformity as U
from evaluation.audit import score
from evaluation.transcript import load_transcript

VIEW_TITLES = {"compute": "compute cloud alone", "dealer": "dealer alone", "both": "both clouds (collusion)",
               "cloud": "the one cloud, residues + ciphertexts decrypted as if s = 0"}


def _xbar(workdir: Path) -> dict:
    from safetensors.torch import load_file

    path = workdir / "xbar.safetensors"
    return load_file(str(path)) if path.exists() else {}


def _entry(setting, view: str, rows: int, scored: dict, seconds: float) -> dict:
    return {"label": f"{setting.label}: {view}", "scheme": "pad", "view": view, "view_title": VIEW_TITLES[view],
            "pad_source": setting.pad_source, "rank": None, "rank_by_kind": {"pad": "-"}, "rows": rows,
            "attack_seconds": seconds, "results": scored}


def audit_pad(attacker, setting, workdir: Path, truth: dict, collect_seconds: float, say) -> tuple[list[dict], dict]:
    """([report settings entries, one per view], uniformity report) for a collected pad setting."""
    tr = load_transcript(workdir / "record")
    rows = sum(map(len, truth["steps"]))
    xbar = _xbar(workdir)
    views = {"compute": V.compute_view(tr)}
    extra: dict = {}
    if setting.pad_source == "dealer":
        pads = V.dealer_pads(workdir / "dealer", tr)
        views["dealer"] = V.dealer_view(tr, pads)
        views["both"] = V.merged_view(tr, pads)
        merged = V.merged_residues(tr, pads)
        # the colluders' reconstruction against the CVM's own log: exact, or the alignment is wrong
        extra["collusion_exact"] = all(bool((merged[op] == x).all()) for op, x in xbar.items())
        extra["dealt_rows"] = {op: int(p.shape[0]) for op, p in pads.items()}
    else:
        from evaluation import he_views

        uploads = he_views.load_uploads(workdir / "record")
        views = {"cloud": he_views.cloud_view(tr, uploads), **views}  # the full transcript's view first
        extra["ciphertexts"] = he_views.ciphertext_tests(uploads)
        del uploads
    t0 = time.monotonic()
    ops = [op for op in (attacker.cfg.ops or tr.block_ops)]
    per_op = {op: U.residue_tests(tr.observations(op), xbar.get(op)) for op in ops}
    uniform = {"label": setting.label, "summary": U.summarize(per_op), "per_op": U.strip(per_op), **extra}
    s = uniform["summary"]
    say(f"[{setting.label}] uniformity ({time.monotonic() - t0:.0f}s): chi-square p<0.01 in "
        f"{100 * s['chi2']['frac_p_below_0.01']:.1f}% of {s['chi2']['coords']} coordinates, KS p {s['chi2']['ks_p']:.2f}; "
        f"max |corr(u, x_bar)| {s.get('corr_lifted_max_abs', float('nan')):.3f}")
    if "ciphertexts" in extra:
        say(f"[{setting.label}] {extra['ciphertexts']['note']}")
    (workdir / "uniformity.json").write_text(json.dumps(uniform, indent=1))  # before the long attacks
    entries = []
    for view, vtr in views.items():
        t0 = time.monotonic()
        say(f"[{setting.label}] attacking the {VIEW_TITLES[view]}")
        scored = score(attacker.attack(vtr), truth)
        entries.append(_entry(setting, view, rows, scored, time.monotonic() - t0))
        best = max((c["accuracy"], f"{a} {op}") for a, p in scored.items() for op, c in p.items())
        say(f"[{setting.label} {view}] best {100 * best[0]:.1f}% ({best[1]}) in {time.monotonic() - t0:.0f}s")
        # each finished view on disk too: a long audit that is stopped keeps what it measured
        (workdir / "views.json").write_text(json.dumps({"entries": entries, "collect_seconds": collect_seconds}))
    entries[0]["collect_seconds"] = collect_seconds
    for e in entries[1:]:
        e["collect_seconds"] = 0.0
    return entries, uniform
