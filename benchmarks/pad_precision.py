"""The pad scheme's precision: fixed point in Z_t against float32 GEMM, on real activations.

Per op, on the activations `benchmarks.precision.capture` records (a float64 prefill of the
prompts), plus the same rows with injected outliers (OUTLIERS coordinates set to +-100x the row's
RMS, the shape of real LLM activation outliers):

    pad      what the cloud and the CVM compute: encode_rows (x_bar = round(x 2^f_i), folded bias),
             u = x_bar - r with a pad from a dealer pool, v = u W_bar mod t on the cloud's ring
             kernel, lift(v + r W_bar) and the exponents back (decode_rows). Reported before the
             CVM's final cast to float32 and after it (what the model gets)
    float32  x W + b as one float32 GEMM (what unmodified float32 inference computes)

both against y_ref = x W + b in float64 from the float64 weights. Errors: ||y - y_ref||_F /
||y_ref||_F per op (max over the ops of a kind), and the worst row's ||y_i - y_ref_i|| /
||y_ref_i||. Each op's integer product is also checked against Python integers on a few entries
(the ring path must be exact; only the two roundings to fixed point may err).
"""

from __future__ import annotations

OUTLIERS = 4  # coordinates per outlier row
OUTLIER_FACTOR = 100.0  # times the row's RMS
OUTLIER_ROWS = 16  # rows copied from each op's activations and given outliers


def with_outliers(x, seed: int = 0):
    """The first OUTLIER_ROWS rows of x [N, d] with OUTLIERS coordinates each set to +-100x its RMS."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = x[:OUTLIER_ROWS].clone().double()
    rms = rows.pow(2).mean(dim=1).sqrt()  # [n]
    for i in range(rows.shape[0]):
        cols = torch.randperm(rows.shape[1], generator=g)[:OUTLIERS]
        signs = torch.randint(0, 2, (OUTLIERS,), generator=g).double() * 2 - 1
        rows[i, cols] = signs * OUTLIER_FACTOR * rms[i]
    return rows.float()


def row_errors(y, ref) -> float:
    """max over rows of ||y_i - ref_i|| / ||ref_i||, in float64."""
    y, ref = y.double(), ref.double()
    return float(((y - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)).max())


def float_side(service, xs: dict) -> dict:
    """While capture's float64 service is loaded: the outlier rows, float64 references and the
    float32 GEMM's errors for both row sets, per op."""
    from benchmarks.precision import exact_reference, rel_error

    out = {}
    for op, x in xs.items():
        w = service.model.ops[op]
        w32, b32 = w.weight.float(), None if w.bias is None else w.bias.float()
        sets = {"activations": x, "outliers": with_outliers(x)}
        entry = {}
        for name, rows in sets.items():
            ref = exact_reference(w, rows)
            y32 = rows @ w32 + (0 if b32 is None else b32)
            entry[name] = {"x": rows, "ref": ref, "float32": {"rel": rel_error(y32, ref), "row_max": row_errors(y32, ref)}}
        out[op] = entry
    return out


def _spot_check(x_bar, w_bar, prod, entries: int = 3) -> bool:
    """prod == x_bar W_bar on a few entries, in Python integers (unbounded, exact)."""
    n, o = prod.shape
    xs, ws = x_bar.tolist(), w_bar.T
    for k in range(entries):
        i, j = (k * 7919) % n, (k * 104729) % o
        col = [int(v) for v in ws[j].tolist()]
        if sum(a * b for a, b in zip(xs[i], col)) != int(prod[i, j]):
            return False
    return True


def pad_errors(service, sides: dict) -> dict:
    """Per op: the pad scheme's errors next to float32's on both row sets, and the exactness check.
    service: a pad cloud's service (`precision.build_mode(path, 'pad')`), also the pool's dealer."""
    import torch

    from benchmarks.precision import rel_error
    from cloud_backend.ring_kernel import dense_weights
    from talaria_proxy.pads.dealer import DealerSource
    from talaria_proxy.pads.pool import PadPool
    from talaria_proxy.pads.source import PadShape
    from talaria_proxy.schemes.base import COMPUTE
    from talaria_proxy.schemes.pad import PadScheme, encode_rows
    from talaria_proxy.transports.in_process import InProcessCloud
    from talaria_wire.ring import T, lift

    cloud = InProcessCloud(service, role="pad dealer")
    manifest = cloud.manifest()
    shapes = {op.name: PadShape(op.name, op.pad_dim or op.d_in, op.d_out) for op in manifest.ops}
    pool = PadPool(DealerSource(shapes, cloud, rows_per_block=32), list(sides), capacity_bytes=64 << 20,
                   timeout=600.0).start()
    scheme = PadScheme(manifest, pool)
    specs = {op.name: op for op in manifest.ops}
    out = {}
    try:
        for op, entry in sides.items():
            scheme.prepare(op, service.public(op))
            g = service.public(op)["col_exp"]
            res = {}
            exact = True
            for name, data in entry.items():
                x, ref = data["x"], data["ref"]
                payloads, (f, rw) = scheme.mask(op, x)
                v = service.linear(op, payloads[COMPUTE])
                prod = lift(torch.remainder(v + rw, T))  # x_bar W_bar, exactly (the CVM's finish)
                y64 = torch.ldexp(prod.double(), -(f[:, None] + g[None, :]).double())
                y32 = y64.float()  # = decode_rows: what the model gets
                x_bar, _ = encode_rows(x, specs[op].w_norm_bits, specs[op].bias, specs[op].bias_bits)
                exact = exact and _spot_check(x_bar, dense_weights(service.kernel.ops[op].w_bar), prod)
                res[name] = {"pad": {"rel": rel_error(y64, ref), "row_max": row_errors(y64, ref)},
                             "pad_float32_out": {"rel": rel_error(y32, ref), "row_max": row_errors(y32, ref)},
                             "float32": data["float32"]}
            res["exact"] = exact
            out[op] = res
    finally:
        pool.close()
    return out


def reduce_pad(per_op: dict) -> dict:
    """{kind: {row set: {method: {rel, row_max}: max over the kind's ops}}, plus 'exact': all ops exact."""
    from benchmarks.precision import KINDS, op_kind

    by_kind: dict = {}
    for kind in KINDS:
        ops = [v for op, v in per_op.items() if op_kind(op) == kind]
        if not ops:
            continue
        by_kind[kind] = {
            rows: {method: {stat: max(o[rows][method][stat] for o in ops) for stat in ("rel", "row_max")}
                   for method in ("pad", "pad_float32_out", "float32")}
            for rows in ("activations", "outliers")}
    return {"by_kind": by_kind, "exact": all(v["exact"] for v in per_op.values()), "ops": len(per_op)}


def at_or_below_float32(reduced: dict) -> bool:
    """The issue's claim: the pad error (as the model gets it) never exceeds float32 GEMM's, per kind and row set."""
    return all(r["pad_float32_out"]["rel"] <= r["float32"]["rel"] and r["pad"]["rel"] <= r["float32"]["rel"]
               for kind in reduced["by_kind"].values() for r in kind.values())
