"""The pad rows of `talaria bench` and `talaria bench precision`: verdicts and reports on synthetic
results, and the precision study's pad path on a real tiny pad service."""

from __future__ import annotations

import pytest
import torch

from benchmarks import pad_bench, pad_precision, pad_report, ring_micro, speed_report
from tests.benchmarks.test_bench_reports import speed_result


def _pad_result(single_ms=30.0, made=50.0, tps8=40.0):
    hf = {"threads=1,batch=1": {"ms_per_token": 10.0, "ttft_ms": 5.0, "tokens_per_s": 100.0},
          "threads=1,batch=8": {"ms_per_token": 12.0, "ttft_ms": 9.0, "tokens_per_s": 600.0}}
    run = {"ms_per_token": single_ms, "ttft_ms": 50.0, "tokens_per_s": 30.0, "bytes_sent_per_token": 2048.0,
           "bytes_received_per_token": 4096.0, "tokens": 32, "total_s": 1.0}
    run8 = {**run, "tokens_per_s": tps8, "tokens": 256, "total_s": 256 / tps8}
    decode = {"total_ms": 40.0, "cloud_gemm_ms": 20.0, "transport_ms": 5.0, "masking_ms": 6.0, "pad_wait_ms": 0.0,
              "attention_ms": 2.0, "sampling_ms": 1.0, "other_cvm_ms": 6.0, "encode_ms": 2.0, "decode_ms": 1.0,
              "cloud_cpu_ms_mean": 20.0, "wall_ms_mean": 40.0, "dealer_cpu_ms_mean": 10.0,
              "transport_ms_per_call": 0.5, "payload_bytes_per_step": 4096}
    per_kind = {"qkv": {"op": "0.qkv", "block_rows": 32, "block_s": 0.01, "rows_per_s": 3200.0},
                "lm_head": {"op": "lm_head", "block_rows": 32, "block_s": 0.1, "rows_per_s": 320.0}}
    return {"pool_mb": 1024, "block_rows": 32, "transport": "tcp", "prompt_len": 32, "new_tokens": 32,
            "hf": hf, "talaria": {"streams=1": run, "streams=8": run8}, "cold": {"streams=1": run, "streams=8": run8},
            "dealer": {"per_kind": per_kind, "complete_sets_per_s": made, "slowest_op": "lm_head",
                       "slowest_op_rows_per_s": 320.0, "bytes_per_row": {"sent": 9.0, "received": 17408.0},
                       "compute_bytes_per_row": {"sent": 6144.0, "received": 17408.0}},
            "profile": {"batch=1": {"decode": decode}, "batch=8": {"decode": decode}},
            "gemm_ms_by_rows": {1: 20.0, 8: 60.0}, "matches_hf_text": True}


def test_pad_targets_are_ratios_of_this_runs_figures():
    s = pad_bench.summary(_pad_result())
    assert s["single_ratio"] == pytest.approx(3.0) and s["single_ok"]  # 30 ms vs HF's 10 ms: exactly at 3x
    assert s["production_ratio"] == pytest.approx(50 / 40) and s["production_ok"]
    assert s["consumed_rows_per_s"] == pytest.approx(80.0)  # 40 generated + 40 prompt rows per second
    assert s["production_vs_all_rows"] == pytest.approx(50 / 80)
    slow = pad_bench.summary(_pad_result(single_ms=31.0, made=39.0))
    assert not slow["single_ok"] and not slow["production_ok"]


def test_pad_and_ring_sections_render_in_bench_md(tmp_path):
    result = speed_result()
    result["pad"] = _pad_result()
    result["micro"]["ring"] = {"prediction": ring_micro.PREDICTION, "kernel": "k", "shapes": {
        "o": {"d": 896, "o": 896, "rows=1": {"float32_ms": 1.0, "float64_ms": 2.0, "ring_ms": 4.0, "ring_ref_ms": 8.0, "ring_blas_ms": 6.0,
                                            "ring_over_float32": 4.0, "ring_over_float64": 2.0}}}}
    report = {"mode": "quick", "config": {"prompt_len": 32, "new_tokens": 32},
              "machine": {"cpu": "cpu", "cores": 2, "torch": "x", "cuda": False},
              "load_avg_start": 1.0, "load_avg_end": 2.0, "models": {"tiny": result}}
    md = speed_report.markdown(report)
    assert "1 stream 3x HF's time per token (target <= 3: met)" in md
    assert "50 complete pad sets/s" in md and "1.25x (target > 1: met)" in md
    assert "| o | 896x896 | 1 | 1 | 2 | 8 | 6 | 4 | 4 | 2 | 2 |" in md and "Prediction, written before measuring" in md
    assert "| 1 | 40 | 20 | 5 | 6 | 0 | 2 | 1 | 6 | 2 | 1 | 50% | 25% | 0.5 | 4 |" in md
    assert "| lm_head | lm_head | 32 | 100 | 320 |" in md
    speed_report.plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert pad_report.pad_lines(speed_result()) == [] and pad_report.ring_lines(speed_result()) == []


def test_bytes_per_row_follow_the_manifest():
    class Op:
        def __init__(self, d, o, pad_dim=None):
            self.d_in, self.d_out, self.pad_dim = d, o, pad_dim

    manifest = type("M", (), {"ops": [Op(4, 6, 5), Op(6, 4)]})()
    assert pad_bench.compute_bytes_per_row(manifest) == {"sent": 8 * (5 + 6), "received": 8 * (6 + 4)}
    assert pad_bench.dealer_bytes_per_row(manifest, 32) == {"sent": 2.0, "received": 80}


def test_outlier_rows_have_large_coordinates_and_keep_the_rest():
    x = torch.randn(20, 64)
    out = pad_precision.with_outliers(x)
    assert out.shape == (pad_precision.OUTLIER_ROWS, 64)
    changed = out != x[: pad_precision.OUTLIER_ROWS]
    assert (changed.sum(dim=1) == pad_precision.OUTLIERS).all()
    rms = x[: pad_precision.OUTLIER_ROWS].pow(2).mean(dim=1, keepdim=True).sqrt()
    assert torch.allclose(out[changed].abs(), (rms.expand_as(out)[changed] * pad_precision.OUTLIER_FACTOR), rtol=1e-5)


def test_pad_precision_path_is_exact_and_accurate_on_a_real_pad_service(tiny_model):
    from benchmarks.precision import build_mode, capture, make_prompts

    path = tiny_model("qwen2")
    _, _, sides = capture(path, make_prompts(2, 8, 3, 500, seed=1), extra=pad_precision.float_side)
    service = build_mode(path, "pad")
    per_op = pad_precision.pad_errors(service, sides)
    reduced = pad_precision.reduce_pad(per_op)
    assert reduced["exact"] and reduced["ops"] == len(service.manifest.ops)
    for kind in reduced["by_kind"].values():
        for rows in kind.values():
            assert 0 < rows["pad"]["rel"] < 1e-6 and 0 < rows["float32"]["rel"] < 1e-5
    # the study's shapes are the service's: d counts the folded bias row
    from benchmarks.speed import _arch

    shapes = ring_micro.op_shapes(_arch(path))
    by_name = {op.name: op for op in service.manifest.ops}
    for kind, (d, o) in shapes.items():
        op = by_name[f"0.{kind}"]
        assert (op.pad_dim or op.d_in, op.d_out) == (d, o)


def test_at_or_below_float32_compares_every_kind_and_row_set():
    def r(pad, f32):
        return {"pad": {"rel": pad, "row_max": pad}, "pad_float32_out": {"rel": pad, "row_max": pad},
                "float32": {"rel": f32, "row_max": f32}}

    good = {"by_kind": {"qkv": {"activations": r(1e-7, 2e-7), "outliers": r(1e-7, 1e-7)}}}
    assert pad_precision.at_or_below_float32(good)
    good["by_kind"]["down"] = {"activations": r(3e-7, 2e-7), "outliers": r(1e-7, 2e-7)}
    assert not pad_precision.at_or_below_float32(good)


def test_merge_keeps_the_modes_and_models_this_run_did_not_measure():
    from benchmarks.precision import carry_over

    def entry(modes):
        return {"errors": {m: {"none": 1} for m in modes}, "greedy": {m: {"none": 2} for m in modes}}

    report = {"models": {"0.5b": entry(["float32"])}}
    old = {"models": {"0.5b": entry(["float64", "float32"]), "tiny": entry(["mixed"])}}
    old["models"]["0.5b"]["errors"]["float32"] = {"none": "old"}
    carry_over(report, old)
    m = report["models"]["0.5b"]
    assert m["errors"]["float32"] == {"none": 1} and m["errors"]["float64"] == {"none": 1}  # new kept, old added
    assert m["carried"] == ["float64"] and report["models"]["tiny"]["carried"] == ["all"]
