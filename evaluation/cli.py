"""`talaria eval privacy [--quick]`: the privacy audit of the Talaria split (arXiv 2603.00196).

For each setting (scheme 'none', ReMO at several ranks m, then `pad` with its pad sources) the
harness runs the prompt set through the real proxy and recording clouds (`evaluation.harness`);
the attacker (`evaluation.audit`) then reads only a record directory (or, for pad, each party's
records: `evaluation.pad_audit`) and the checkpoint, and its guesses are scored against the
harness's ground truth. Output: privacy.md, privacy.json, privacy.png in --out, and the table on
stdout. The unmasked split must come out >= 97.5% recovered at layer 0, or the attacks are too
weak to say anything about the masks (exit code 3); so must the colluding pad clouds, or the
attacks cannot read the pad scheme's number format.

Module-level imports stay light: `talaria --help` imports this file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "pii.txt"
QUICK_PROMPTS = 8
PREFETCH_BYTES = 1 << 30  # start the next setting's cloud early only below this checkpoint size
NONE_FLOOR = 0.975  # the unprotected split must leak at least this much, else the attacks are too weak


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=["privacy"], help="which evaluation to run")
    p.add_argument("--quick", action="store_true",
                   help="small run: 8 prompts, ranks 16, 64, d/2, short inverter training")
    p.add_argument("--model",
                   help="checkpoint directory (default: the tiny model of --arch, generated into the work dir)")
    p.add_argument("--arch", default="qwen2", choices=["llama", "qwen2", "qwen3", "mistral"],
                   help="architecture of the generated tiny model (default qwen2)")
    p.add_argument("--size", default="tiny", choices=["tiny", "0.5b"], help="size of the generated model")
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="prompt file, one prompt per line")
    p.add_argument("--num-prompts", type=int, help="use the first N prompts (default: all; --quick: 8)")
    p.add_argument("--ranks", help="comma-separated ReMO ranks (default 16,64,256,d/2; capped at d_in-1 per op)")
    p.add_argument("--schemes", default="none,remo,pad/dealer",
                   help="comma-separated settings to audit: none, remo (every rank of --ranks), pad/dealer, "
                        "pad/he (default none,remo,pad/dealer; none always runs first, as the baseline)")
    p.add_argument("--ops", help="comma-separated block ops to attack, e.g. 0.qkv,1.down (default: all)")
    p.add_argument("--attacks", help="comma-separated subset of attacks (default: all)")
    p.add_argument("--max-tokens", type=int, default=4, help="greedy tokens generated per prompt (default 4)")
    p.add_argument("--inverter-seqs", type=int, help="attacker's random training sequences (default 400; quick 40)")
    p.add_argument("--inverter-epochs", type=int, help="inverter training epochs (default 12; quick 5)")
    p.add_argument("--append", metavar="JSON[,JSON...]",
                   help="add the settings of this run to earlier privacy.json files of the same model, prompts and "
                        "attacks (their settings are kept, settings they already have are not re-run)")
    p.add_argument("--out", help="output directory (default results/privacy; --quick: a temporary directory)")
    p.add_argument("--workdir", help="where transcripts are recorded (default: a temporary directory)")
    p.add_argument("--keep-records", action="store_true", help="keep the recorded transcripts")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in this process (default 1: the attacks' many small tensor ops run "
                        "fastest single-threaded, and the cloud subprocess needs a core too; 0: torch's default)")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _model_dir(args, workdir: Path) -> Path:
    """--model, or a tiny model generated (deterministically, seed 0) into this run's work directory:
    a private copy, so no other process replacing a shared cache can pull it away mid-run."""
    if args.model:
        return Path(args.model).expanduser().absolute()
    from talaria_cli.tiny_model import ensure_tiny_model, tiny_model_dir

    return ensure_tiny_model(tiny_model_dir(args.arch, args.size, root=workdir), args.arch, 0, args.size)


def _rank_by_kind(record_dir: Path) -> dict[str, int]:
    import json

    ops = json.loads((record_dir / "public.json").read_text())["ops"]
    kinds: dict[str, int] = {}
    for op in ops:
        kinds.setdefault(op["name"].split(".")[-1], op["rank"])
    return kinds


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    import torch

    from evaluation.audit import ALL_ATTACKS

    t_start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    attacks = tuple(args.attacks.split(",")) if args.attacks else ALL_ATTACKS
    if unknown := set(attacks) - set(ALL_ATTACKS):
        _say(f"unknown attacks {sorted(unknown)}; available: {', '.join(ALL_ATTACKS)}")
        return 2
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="talaria-privacy-quick-")) if args.quick
                                           else Path("results/privacy"))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="talaria-privacy-records-"))
    try:
        report = _audit(args, attacks, workdir)
    finally:
        if not args.keep_records and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return _finish(report, out, t_start)


def _audit(args, attacks: tuple[str, ...], workdir: Path) -> dict:
    import json

    from evaluation.audit import Attacker, AuditConfig
    from evaluation.harness import Setting, start_cloud
    from evaluation.inverter import InverterConfig

    model_dir = _model_dir(args, workdir)
    d = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    prompts = [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = prompts[: args.num_prompts or (QUICK_PROMPTS if args.quick else len(prompts))]
    if args.ranks:
        ranks = [int(r) for r in args.ranks.split(",")]
    else:  # the service caps m at d_in - 1 per op, so on a small model 64 and 256 probe m = d - 1
        ranks = sorted({16, 64, d // 2} if args.quick else {16, 64, 256, d // 2})
    schemes = [x.strip() for x in args.schemes.split(",") if x.strip()]
    if unknown := set(schemes) - {"none", "remo", "pad/dealer", "pad/he"}:
        raise SystemExit(f"talaria eval privacy: unknown --schemes {sorted(unknown)}")
    # 'none' sends x itself; its cloud still publishes bases (rank irrelevant), so nn-proj etc. run on it too.
    settings = [Setting("none", min(ranks))] + ([Setting("remo", r) for r in ranks] if "remo" in schemes else [])
    settings += [Setting("pad", pad_source=x.split("/")[1]) for x in ("pad/dealer", "pad/he") if x in schemes]
    cfg = AuditConfig(
        attacks=attacks,
        ops=args.ops.split(",") if args.ops else None,
        inverter=InverterConfig(epochs=args.inverter_epochs or (5 if args.quick else 12)),
        inverter_seqs=args.inverter_seqs or (40 if args.quick else 400),
    )
    _say(f"privacy audit: model {model_dir}, {len(prompts)} prompts, settings "
         f"{', '.join(s.label for s in settings)}; transcripts in {workdir}")
    attacker = Attacker(model_dir, cfg, progress=_say)
    a = attacker.model.arch
    report = {
        "model": {"name": model_dir.name, "generated": None if args.model else f"talaria tiny-model --arch {args.arch} "
                  f"--size {args.size} --seed 0", "family": a.family, "hidden_size": a.hidden_size,
                  "num_layers": a.num_layers, "vocab_size": a.vocab_size, "candidates": len(attacker.candidates),
                  "op_order": [f"{i}.{o}" for i in range(a.num_layers) for o in ("qkv", "o", "gate_up", "down")]},
        "config": {"quick": bool(args.quick), "prompts_file": Path(args.prompts).name, "num_prompts": len(prompts),
                   "max_tokens": args.max_tokens, "ranks": ranks, "attacks": list(attacks), "ops": cfg.ops,
                   "inverter": vars(cfg.inverter), "inverter_seqs": cfg.inverter_seqs,
                   "inverter_len": cfg.inverter_len, "threads": args.threads},
        "settings": [],
        "uniformity": [],
    }
    if args.append:
        settings = _append(report, [Path(x) for x in args.append.split(",")], settings)
        if not settings:
            return report
    # A small checkpoint's next cloud loads while this setting runs; a large one waits (memory).
    prefetch = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) < PREFETCH_BYTES
    clouds = {0: start_cloud(model_dir, settings[0], workdir / settings[0].dirname)}
    try:
        for k, setting in enumerate(settings):
            if k > 0 and k not in clouds:
                clouds[k] = start_cloud(model_dir, setting, workdir / setting.dirname)
            if prefetch and k + 1 < len(settings):
                clouds[k + 1] = start_cloud(model_dir, settings[k + 1], workdir / settings[k + 1].dirname)
            _audit_setting(args, attacker, setting, clouds[k], model_dir, prompts, workdir, report)
    finally:
        for cloud in clouds.values():
            cloud.stop()
    return report


SAME_CONFIG = ("quick", "prompts_file", "num_prompts", "max_tokens", "attacks", "ops", "inverter", "inverter_seqs",
               "inverter_len")


def _append(report: dict, paths: list[Path], settings: list) -> list:
    """Start `report` from earlier ones (same model, prompts and attacks, else exit 2; the first
    report's setting wins where two have the same label); returns the settings still to run."""
    import json

    report["settings"], report["uniformity"], report["previous_runtime_seconds"] = [], [], 0.0
    for path in paths:
        prev = json.loads(path.read_text())
        differ = [k for k in SAME_CONFIG if prev["config"].get(k) != report["config"].get(k)]
        if prev["model"] != report["model"] or differ:
            _say(f"--append {path}: another model or configuration ({', '.join(differ) or 'model'}); not appending")
            raise SystemExit(2)
        have = {s["label"] for s in report["settings"]}
        taken = [s for s in prev["settings"] if s["label"] not in have]
        report["settings"] += taken
        origins = {label: src for src in prev.get("sources", []) for label in src["labels"]}  # an appended one
        own = {"file": str(path), "labels": [], "runtime_seconds": prev.get("runtime_seconds", 0.0)}
        for src in prev.get("sources", []):
            if src["file"] == "this run":
                own["runtime_seconds"] = src["runtime_seconds"]
        groups: dict[str, dict] = {}
        for st in taken:
            src = origins.get(st["label"])
            src = own if src is None or src["file"] == "this run" else src
            groups.setdefault(src["file"], {**src, "labels": []})["labels"].append(st["label"])
        report.setdefault("sources", []).extend(groups.values())
        have_u = {u["label"] for u in report["uniformity"]}
        report["uniformity"] += [u for u in prev.get("uniformity", []) if u["label"] not in have_u]
        if "majority" in prev:
            report.setdefault("majority", prev["majority"])
        report["config"]["ranks"] = sorted(set(report["config"]["ranks"]) | set(prev["config"]["ranks"]))
        report["previous_runtime_seconds"] += prev.get("runtime_seconds", 0.0)
    have = {s["label"].split(":")[0] for s in report["settings"]}
    return [s for s in settings if s.label not in have]


def _audit_setting(args, attacker, setting, cloud, model_dir: Path, prompts: list[str], workdir: Path,
                   report: dict) -> None:
    from evaluation.audit import score
    from evaluation.harness import collect

    _say(f"[{setting.label}] collecting transcript through proxy + cloud")
    t0 = time.monotonic()
    work = workdir / setting.dirname
    record_dir, truth = collect(model_dir, setting, prompts, work, args.max_tokens, progress=_say, cloud=cloud,
                                xbar_ops=attacker.cfg.ops)
    rows = sum(map(len, truth["steps"]))
    t1 = time.monotonic()
    _say(f"[{setting.label}] {rows} rows in {len(truth['steps'])} steps ({t1 - t0:.0f}s); attacking")
    report.setdefault("majority", _majority(truth))
    if setting.scheme == "pad":
        from evaluation.pad_audit import audit_pad

        entries, uniform = audit_pad(attacker, setting, work, truth, t1 - t0, _say)
        report["settings"].extend(entries)
        report["uniformity"].append(uniform)
        return
    scored = score(attacker.attack(record_dir), truth)  # the attacker is handed record_dir only
    report["settings"].append({
        "label": setting.label, "scheme": setting.scheme, "rank": setting.rank,
        "rank_by_kind": _rank_by_kind(record_dir) if setting.scheme == "remo" else {"mask": 0},
        "rows": rows, "collect_seconds": t1 - t0, "attack_seconds": time.monotonic() - t1, "results": scored,
    })
    best = max((c["accuracy"], f"{atk} {op}") for atk, p in scored.items() for op, c in p.items())
    _say(f"[{setting.label}] done in {time.monotonic() - t0:.0f}s; best {100 * best[0]:.1f}% ({best[1]})")


def _majority(truth: dict) -> dict:
    """Chance levels: a content-blind guess of the most frequent token scores its share of the rows."""
    from collections import Counter

    rows = [t for step in truth["steps"] for t in step]
    token, count = Counter(rows).most_common(1)[0]
    return {"token_id": token, "share": count / len(rows)}


def _finish(report: dict, out: Path, t_start: float) -> int:
    from evaluation import report as R

    none = report["settings"][0]
    none_best = max((c["0.qkv"]["accuracy"] for c in none["results"].values() if "0.qkv" in c), default=0.0)
    report["sanity"] = {"none_best_layer0": none_best, "floor": NONE_FLOOR, "passed": none_best >= NONE_FLOOR}
    for s in report["settings"]:
        if s.get("view") == "both":  # colluding pad clouds: the attacks must read the pad format
            best = max((c["0.qkv"]["accuracy"] for c in s["results"].values() if "0.qkv" in c), default=0.0)
            report["sanity"]["collusion_best_layer0"] = best
            report["sanity"]["passed"] = report["sanity"]["passed"] and best >= NONE_FLOOR
    report["runtime_seconds"] = time.monotonic() - t_start + report.get("previous_runtime_seconds", 0.0)
    if "sources" in report:  # an appended report: this run's own settings, and one order for all
        earlier = {label for src in report["sources"] for label in src["labels"]}
        mine = [s["label"] for s in report["settings"] if s["label"] not in earlier]
        if mine:
            report["sources"].append({"file": "this run", "labels": mine,
                                      "runtime_seconds": time.monotonic() - t_start})
        kind = {"none": 0, "remo": 1, "pad": 2}
        report["settings"].sort(key=lambda s: (kind[s["scheme"]], s.get("rank") or 0, s.get("pad_source", "")))
    paths = R.write(report, out)
    print(R.markdown(report))
    _say(f"wrote {', '.join(str(p) for p in paths.values())} ({report['runtime_seconds']:.0f}s)")
    if not report["sanity"]["passed"]:
        _say(f"FAILED sanity check: the best attack on the unmasked split recovers {100 * none_best:.1f}% "
             f"< {100 * NONE_FLOOR:.1f}% at layer 0; the attacks are too weak to judge ReMO")
        return 3
    return 0
