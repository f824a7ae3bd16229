"""`talaria bench precision`: is ReMO recovery lossless at a given GEMM precision and mask scale?

On real checkpoint weights, for every cloud precision mode x mask scale:

1. Recovery error per op. Real activations x are captured from a float64 prefill of the prompts;
   each op's x is masked by `RemoMask` (seed 0), multiplied by the mode's service and recovered:
       y = (x + M_pvt M_pub) W - M_pvt R_pub     vs the exact   y_ref = x W   (float64 weights)
   error = ||y - y_ref||_F / ||y_ref||_F, computed before the CVM's final cast to float32 (which
   adds <= 6e-8). Scale 'none' is the unmasked call: the mode's own rounding.
2. Greedy identity. The split model (`build_runtime` over `InProcessCloud`, the same
   code path as the proxy) is teacher-forced on the greedy tokens of the unmodified float32 HF
   model, all prompts batched per step; a prompt stays identical when every step's argmax equals
   the reference token (then free-running greedy decoding reproduces it exactly).

Modes: float64, mixed (default: projected answers finished by the CVM in float32), mixed/full (full
answers x~ W + b), float32 (the cloud's `--compute-dtype`; full answers), bfloat16 (float32 wire and CVM
arithmetic, bfloat16 weights and GEMM, R_pub from the bf16 weights) and, only with a CUDA device,
tf32 (float32 GEMM on the GPU with torch.backends.cuda.matmul.allow_tf32=True).
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
from pathlib import Path

from benchmarks.common import machine, make_prompts, median, model_dir, write_report

SCALES = (0.1, 1.0, 10.0, 100.0)
KINDS = ("qkv", "o", "gate_up", "down", "lm_head")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rel_error(y, ref) -> float:
    """||y - ref||_F / ||ref||_F in float64."""
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def op_kind(op: str) -> str:
    return op.split(".")[-1]


def first_divergence(match) -> list[int]:
    """match: [P, T] bool -> per prompt the first step whose argmax differs (T when none does)."""
    T = match.shape[1]
    return [next((t for t in range(T) if not bool(row[t])), T) for row in match]


class Bf16Service:
    """float32 wire and CVM arithmetic; bfloat16 weights and GEMM, as a bf16 GPU deployment would."""

    def __init__(self, base):
        import torch

        self.manifest, self.bases, self.model, self.dtype = base.manifest, base.bases, base.model, torch.float32
        self.weights = {k: (op.weight.bfloat16(), None if op.bias is None else op.bias.bfloat16())
                        for k, op in base.model.ops.items()}
        # the cloud computes R_pub = M_pub W from the weights it actually serves
        self.recovery = {k: (base.bases[k].double() @ w.double()).float() for k, (w, _) in self.weights.items()}

    def public(self, op):
        return {"basis": self.bases[op], "recovery": self.recovery[op]}

    def linear(self, op, x):
        w, b = self.weights[op]
        y = x.bfloat16() @ w
        return (y if b is None else y + b).float()


class Tf32Service:
    """A float32 service on CUDA whose GEMMs run with TF32 enabled (off by default in PyTorch)."""

    def __init__(self, base):
        self.base = base
        self.manifest, self.bases, self.recovery, self.model = base.manifest, base.bases, base.recovery, base.model

    def public(self, op):
        return self.base.public(op)

    def linear(self, op, x):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return self.base.linear(op, x)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False


def build_mode(path: Path, mode: str):
    from cloud_backend.cli import build_service
    from cloud_backend.settings import CloudSettings

    if mode == "pad":  # the ring kernel and the dealer (W_bar from the float64 weights)
        return build_service(CloudSettings(model=str(path), scheme="pad"))
    if mode == "mixed":  # the default: projected answers
        return build_service(CloudSettings(model=str(path), compute_dtype="mixed", reply="projected"))
    if mode in ("float64", "mixed/full", "float32"):  # full answers x~ W + b: the mask goes through the GEMM
        return build_service(CloudSettings(model=str(path), compute_dtype=mode.split("/")[0], reply="full"))
    if mode == "bfloat16":
        return Bf16Service(build_service(CloudSettings(model=str(path), compute_dtype="float32", reply="full")))
    if mode == "tf32":
        return Tf32Service(build_service(CloudSettings(model=str(path), compute_dtype="float32", device="cuda",
                                                       reply="full")))
    raise ValueError(mode)


def capture(path: Path, prompts, max_rows: int = 64, extra=None) -> tuple[dict, dict, object]:
    """x (float32, as the CVM holds it) and exact y_ref = x W + b (float64) per op, from a float64
    unmasked prefill of all prompts in one step (through the in-process cloud, scheme none), and
    extra(service, xs) computed while the float64 weights are loaded (None without it)."""
    from talaria_proxy.model import SeqChunk
    from talaria_proxy.runtime import build_runtime
    from talaria_proxy.transports.in_process import InProcessCloud

    service = build_mode(path, "float64")
    xs: dict = {}

    class Capture(InProcessCloud):
        def linear(self, op, tensor):
            xs.setdefault(op, tensor[:max_rows].clone())
            return super().linear(op, tensor)

    rt = build_runtime(Capture(service), "none")
    rt.model.forward([SeqChunk(rt.model.new_cache(), p, 0, True) for p in prompts])
    rt.close()
    refs = {}
    for op, x in xs.items():
        xs[op] = x.float()
        refs[op] = exact_reference(service.model.ops[op], xs[op])
    more = extra(service, xs) if extra is not None else None
    del service, rt
    gc.collect()
    return xs, refs, more


def exact_reference(w, x):
    """x W + b in float64 from float64 weights: the reference every error is measured against."""
    return x.double() @ w.weight + (0 if w.bias is None else w.bias)  # [rows, d_out] float64


def op_errors(service, xs: dict, refs: dict, scale: float | None) -> dict:
    """Relative recovery error per op for one mask scale (None: unmasked)."""
    import torch

    from talaria_proxy.schemes.base import COMPUTE
    from talaria_proxy.schemes.remo import NoMask, RemoMask
    from talaria_proxy.transports.in_process import InProcessCloud

    cloud = InProcessCloud(service)
    manifest = cloud.manifest()
    scheme = NoMask(manifest) if scale is None else RemoMask(manifest, mask_scale=scale, seed=0)
    out = {}
    for op, x in xs.items():
        scheme.prepare(op, cloud.public(op))
        payloads, secret = scheme.mask(op, x)
        answer = service.linear(op, payloads[COMPUTE])
        if scheme.projected:  # exactly what the proxy does: z + (x B^T) R_pub in float32
            y = scheme.finish(op, {COMPUTE: answer}, secret, scheme.completion(op, x, secret))
        elif scale is None:
            y = answer
        else:  # RemoMask.unmask without its final cast to float32: y = y~ - M_pvt R_pub, in the wire dtype
            y = torch.addmm(answer, secret, scheme.recovery[op], alpha=-1)
        out[op] = rel_error(y, refs[op])
    return out


def reduce_errors(per_op: dict) -> dict:
    by_kind = {k: max(v for op, v in per_op.items() if op_kind(op) == k)
               for k in KINDS if any(op_kind(op) == k for op in per_op)}
    return {"max": max(per_op.values()), "median": median(per_op.values()), "max_by_kind": by_kind}


def hf_reference(path: Path, prompts, tokens: int):
    """Greedy tokens [P, T] and logits [P, T, V] of the unmodified float32 HF model."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                          do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                          return_dict_in_generate=True)
    del hf
    gc.collect()
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1).float()


def greedy_check(service, scale: float | None, prompts, ref_tokens, ref_logits, scheme: str | None = None) -> dict:
    """Teacher-force the split model on the reference tokens; compare argmax and logits per step.
    scheme: 'none'/'remo' from the scale by default; 'pad' runs the pad scheme with the same
    in-process service as its dealer."""
    import torch

    from talaria_proxy.model import SeqChunk
    from talaria_proxy.runtime import build_runtime
    from talaria_proxy.transports.in_process import InProcessCloud

    scheme = scheme or ("none" if scale is None else "remo")
    dealer = InProcessCloud(service, role="pad dealer") if scheme == "pad" else None
    rt = build_runtime(InProcessCloud(service), scheme, mask_scale=scale or 1.0, mask_seed=0, dealer=dealer,
                       pad_source="dealer", pad_timeout=600.0)
    try:
        caches = [rt.model.new_cache() for _ in prompts]
        steps = [rt.model.forward([SeqChunk(c, p, 0, True) for c, p in zip(caches, prompts)])]  # [P, V]
        for s in range(ref_tokens.shape[1] - 1):
            steps.append(rt.model.forward([SeqChunk(c, [int(t[s])], len(p) + s, True)
                                           for c, p, t in zip(caches, prompts, ref_tokens)]))
    finally:
        rt.close()
    logits = torch.stack(steps, dim=1)  # [P, T, V]
    match = logits.argmax(-1) == ref_tokens
    first = first_divergence(match)
    return {"identical_prompts": int(match.all(dim=1).sum()), "prompts": len(prompts),
            "first_divergence_min": min(first), "token_agreement": float(match.float().mean()),
            "max_abs_logit_diff": float((logits - ref_logits).abs().max())}


def min_margin(ref_logits) -> float:
    """Smallest top-1 minus top-2 logit gap of the reference: below it, argmax flips become possible."""
    top2 = ref_logits.topk(2, dim=-1).values
    return float((top2[..., 0] - top2[..., 1]).min())


def study_model(size: str, modes, scales, num_prompts: int, tokens: int, pad: bool = True) -> dict:
    path = model_dir(size)
    from transformers import AutoTokenizer

    from benchmarks import pad_precision

    prompts = make_prompts(num_prompts, 16, 3, len(AutoTokenizer.from_pretrained(path)), seed=1)
    _say(f"[{size}] capturing activations (float64, unmasked) and the float32 HF reference")
    xs, refs, sides = capture(path, prompts, extra=pad_precision.float_side if pad else None)
    ref_tokens, ref_logits = hf_reference(path, prompts, tokens)
    res = {"size": size, "margin_min": min_margin(ref_logits), "errors": {}, "greedy": {}}
    for mode in modes:
        t0 = time.time()
        service = build_mode(path, mode)
        res["errors"][mode], res["greedy"][mode] = {}, {}
        for scale in (None, *scales):
            key = "none" if scale is None else f"{scale:g}"
            res["errors"][mode][key] = reduce_errors(op_errors(service, xs, refs, scale))
            res["greedy"][mode][key] = greedy_check(service, scale, prompts, ref_tokens, ref_logits)
            e, g = res["errors"][mode][key], res["greedy"][mode][key]
            _say(f"  {size} {mode:8s} scale {key:>5s}: max rel error {e['max']:.2e}, identical "
                 f"{g['identical_prompts']}/{g['prompts']}, max |dlogit| {g['max_abs_logit_diff']:.2e}")
        del service
        gc.collect()
        _say(f"  ({mode}: {time.time() - t0:.0f}s)")
    if pad:
        t0 = time.time()
        service = build_mode(path, "pad")
        errors = pad_precision.reduce_pad(pad_precision.pad_errors(service, sides))
        res["pad"] = {"errors": errors, "at_or_below_float32": pad_precision.at_or_below_float32(errors),
                      "greedy": greedy_check(service, None, prompts, ref_tokens, ref_logits, scheme="pad")}
        del service
        gc.collect()
        g = res["pad"]["greedy"]
        _say(f"  {size} pad: exact ring products {errors['exact']}, error <= float32 GEMM "
             f"{res['pad']['at_or_below_float32']}, identical {g['identical_prompts']}/{g['prompts']}, max |dlogit| "
             f"{g['max_abs_logit_diff']:.2e} ({time.time() - t0:.0f}s)")
    return res


def carry_over(report: dict, old: dict) -> None:
    """--merge: modes of the previous report that this run did not measure are kept, named per
    model in 'carried' (the report says so next to them)."""
    for size, m in report["models"].items():
        prev = old.get("models", {}).get(size)
        if not prev:
            continue
        carried = [mode for mode in prev.get("errors", {}) if mode not in m["errors"]]
        for mode in carried:
            m["errors"][mode], m["greedy"][mode] = prev["errors"][mode], prev["greedy"][mode]
        m["carried"] = carried
        if "pad" not in m and "pad" in prev:
            m["pad"] = prev["pad"]
            m["carried"].append("pad")
    for size, prev in old.get("models", {}).items():  # models this run did not study at all
        if size not in report["models"]:
            report["models"][size] = {**prev, "carried": ["all"]}


def run(args) -> int:
    import torch

    from benchmarks import precision_report

    torch.set_num_threads(1)  # small ops: OpenMP spin-waits against other processes cost ~10x on 2 cores
    models = args.models.split(",") if args.models else (["tiny"] if args.quick else ["tiny", "0.5b"])
    scales = [float(s) for s in args.scales.split(",")] if args.scales else list(SCALES)
    modes = ["float64", "mixed", "mixed/full", "float32", "bfloat16"] + (["tf32"] if torch.cuda.is_available() else [])
    if getattr(args, "modes", None):
        modes = [m for m in args.modes.split(",") if m]
    cfg = {"models": models, "scales": scales, "modes": modes, "num_prompts": args.num_prompts or 8,
           "tokens": args.tokens or 32, "prompt_len": 16, "mask_seed": 0, "threads": torch.get_num_threads()}
    out = Path(args.out or ("results/precision/quick" if args.quick else "results/precision"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report = {"mode": "quick" if args.quick else "full", "config": cfg, "machine": machine(), "models": {}}
    with contextlib.suppress(AttributeError):
        torch.backends.cuda.matmul.allow_tf32 = False  # every mode but tf32 computes in true float32
    for size in models:
        report["models"][size] = study_model(size, modes, scales, cfg["num_prompts"], cfg["tokens"],
                                             pad=not getattr(args, "no_pad", False))
    report["elapsed_s"] = time.time() - started
    if getattr(args, "merge", False) and (out / "precision.json").exists():
        carry_over(report, json.loads((out / "precision.json").read_text()))
    write_report(out, "precision", report, precision_report.markdown, precision_report.plot)
    _say(f"wrote {out}/precision.md, precision.json, precision.png in {report['elapsed_s']:.0f}s")
    return 0
