"""precision.md and precision.png from the precision study's report (see `benchmarks.precision`)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import fmt, markdown_table

NOTES = """\
Notes.
- float64 is IEEE binary64 on CPU and GPU alike, so the errors above carry over to a GPU cloud.
  There float64 GEMMs run on FP64 tensor cores (A100: 19.5 TFLOP/s, H100/H200: 67 TFLOP/s, about
  their plain FP32 rate and 8-16x below TF32/BF16 tensor throughput). Decode is bound by weight
  bytes rather than FLOPs: float64 weights read 2x the bytes of float32 and 4x those of bf16,
  which is what `mixed` (float32 weights, float64 only on the rank-m basis) avoids.
- CUDA float32 matmuls may silently run as TF32 (10-bit mantissa) when
  `torch.backends.cuda.matmul.allow_tf32` is True or `torch.set_float32_matmul_precision("high")`
  is set. A float32 or mixed cloud on a GPU must keep `allow_tf32 = False` (PyTorch's default for
  matmuls; cuDNN convolutions default to TF32, irrelevant here), or it behaves like the tf32 row
  (measured only where a CUDA device exists; this study sets allow_tf32 = False for all other modes).
- bfloat16 (8-bit mantissa) is what many GPU clouds serve; its error exists without any mask and
  grows with the mask, because x + mask is rounded to 8 bits before the GEMM.
- mixed (default): float64 wire; the cloud removes x~'s part in the public basis in float64 and
  multiplies only the mask-free complement in float32, answering z = x_perp W + b in float32; the
  CVM adds (x B^T) R_pub in float32. Its error is that of float32 inference at every scale.
- mixed/full: the same split, but the cloud adds c R_pub in float64 and answers x~ W + b in float64
  (the CVM subtracts M_pvt R_pub): the same error, twice the answer bytes.
- pad: the ring product is exact, so the error is the two roundings to fixed point: x_bar to
  ~2^-33 of each row's norm (outliers raise the norm, and with it the step, for the other
  coordinates) and W_bar to 2^-23 of each column's largest entry, the folded bias included. A
  column whose bias exceeds its largest weight gets its exponent from the bias, and its weights
  keep fewer bits: where the pad error of an op kind exceeds float32's, look there first.
"""


def _errors_table(m: dict, scales: list[str]) -> str:
    rows = [[mode] + [by_scale[s]["max"] for s in scales] for mode, by_scale in m["errors"].items()]
    return markdown_table(["GEMM mode"] + [f"scale {s}" if s != "none" else "no mask" for s in scales], rows)


def _kind_table(m: dict, scale: str) -> str:
    modes = list(m["errors"])
    kinds = list(next(iter(m["errors"].values()))[scale]["max_by_kind"])
    rows = [[k] + [m["errors"][mode][scale]["max_by_kind"][k] for mode in modes] for k in kinds]
    return markdown_table(["op kind"] + modes, rows)


def _greedy_table(m: dict, scales: list[str]) -> str:
    rows = []
    for mode, by_scale in m["greedy"].items():
        cells = []
        for s in scales:
            g = by_scale[s]
            first = "" if g["identical_prompts"] == g["prompts"] else f", first diff @{g['first_divergence_min']}"
            cells.append(f"{g['identical_prompts']}/{g['prompts']}{first} ({fmt(g['max_abs_logit_diff'], 2)})")
        rows.append([mode] + cells)
    return markdown_table(["GEMM mode"] + [f"scale {s}" if s != "none" else "no mask" for s in scales], rows)


def _pad_lines(m: dict) -> list[str]:
    """The pad scheme's fixed-point error next to float32 GEMM's, and its greedy identity."""
    p = m.get("pad")
    if not p:
        return []
    from benchmarks.pad_precision import OUTLIER_FACTOR, OUTLIER_ROWS, OUTLIERS

    rows = []
    for kind, sets in p["errors"]["by_kind"].items():
        for name, r in sets.items():
            rows.append([kind, name, r["pad"]["rel"], r["pad_float32_out"]["rel"], r["float32"]["rel"],
                         fmt(r["pad_float32_out"]["rel"] / r["float32"]["rel"], 2) if r["float32"]["rel"] else "-",
                         r["pad"]["row_max"], r["float32"]["row_max"]])
    g = p["greedy"]
    first = "" if g["identical_prompts"] == g["prompts"] else f", first difference at step {g['first_divergence_min']}"
    return [f"Pad scheme (fixed point in Z_t, exact ring products): relative error against float64 x W + b, max over "
            f"the ops of each kind; 'outliers': {OUTLIER_ROWS} rows of each op's activations with {OUTLIERS} "
            f"coordinates set to +-{OUTLIER_FACTOR:g}x the row's RMS. pad: encode_rows -> u = x_bar - r -> the "
            "cloud's ring kernel -> lift(v + r W_bar) -> exponents, before the CVM's cast to float32; pad -> f32: "
            "after it (what the model gets); float32: one float32 GEMM x W + b on the same rows. worst row: max "
            "over rows of ||y_i - y_ref_i|| / ||y_ref_i||.", "",
            markdown_table(["op kind", "rows", "pad", "pad -> f32", "float32 GEMM", "pad -> f32 / float32",
                            "pad worst row", "float32 worst row"], rows), "",
            f"Integer products equal Python-integer arithmetic on spot checks of all {p['errors']['ops']} ops: "
            f"{p['errors']['exact']}. Pad error at or below float32 GEMM's for every kind and row set: "
            f"{p['at_or_below_float32']}. Greedy through the in-process pad cloud and dealer vs the float32 model: "
            f"{g['identical_prompts']}/{g['prompts']} prompts identical{first}, max |logit difference| "
            f"{fmt(g['max_abs_logit_diff'], 2)}.", ""]


def verdict(m: dict) -> list[str]:
    """Modes that keep every prompt identical at every measured mask scale."""
    return [mode for mode, by_scale in m["greedy"].items()
            if all(g["identical_prompts"] == g["prompts"] for g in by_scale.values())]


def markdown(report: dict) -> str:
    cfg, mach = report["config"], report["machine"]
    lines = [f"# ReMO recovery precision and the pad scheme's fixed point ({report['mode']} run)", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, CUDA {mach['cuda']}"
             f"{'' if mach['cuda'] else ' (no CUDA device: the tf32 mode was not measured)'}.",
             f"Mask scales {', '.join(f'{s:g}' for s in cfg['scales'])} (mask row norm / activation row norm), "
             f"ReMO rank: the cloud default, mask seed {cfg['mask_seed']}. Greedy check: {cfg['num_prompts']} "
             f"prompts x {cfg['prompt_len']} random token ids, {cfg['tokens']} tokens, against the unmodified "
             "float32 HF transformers model.", ""]
    for size, m in report["models"].items():
        scales = list(next(iter(m["errors"].values())))
        lines += [f"## Model {size}", "",
                  "Relative recovery error ||y - xW||_F / ||xW||_F, max over all ops (real activations of a "
                  "prefill; before the CVM's cast to float32):", "", _errors_table(m, scales), "",
                  f"Per op kind at mask scale {scales[-1]} (max over layers):", "", _kind_table(m, scales[-1]), "",
                  "Greedy decoding vs the float32 model: prompts identical over all tokens (first differing step; "
                  "max |logit difference| in brackets). Smallest top-1/top-2 logit gap of the reference: "
                  f"{fmt(m['margin_min'], 2)}.", "", _greedy_table(m, scales), "",
                  f"Identical at every scale: {', '.join(verdict(m)) or 'none'}.", "",
                  *([f"Carried over from the previous run (not re-measured in this one): {', '.join(m['carried'])}.", ""]
                    if m.get("carried") else []), *_pad_lines(m)]
    return "\n".join(lines) + "\n" + NOTES


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, size in zip(axes[0], models):
        m = report["models"][size]
        for i, (mode, by_scale) in enumerate(m["errors"].items()):
            scales = [s for s in by_scale if s != "none"]
            xs = [float(s) for s in scales]
            ax.plot(xs, [by_scale[s]["max"] for s in scales], "o-", color=f"C{i}", label=mode)
            ax.axhline(by_scale["none"]["max"], color=f"C{i}", ls=":", lw=1)
            for x, s in zip(xs, scales):  # hollow marker: greedy output changed at this scale
                g = m["greedy"][mode][s]
                if g["identical_prompts"] < g["prompts"]:
                    ax.plot([x], [by_scale[s]["max"]], "o", ms=12, mfc="none", color="red")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("mask scale (mask norm / activation norm)")
        ax.set_ylabel("max relative recovery error over ops")
        ax.set_title(f"{size}: dotted = no mask; red ring = greedy output changed")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
