"""Report writers and verdicts of both benchmarks, on synthetic results."""

from __future__ import annotations

import pytest
import torch

from benchmarks import precision, precision_report, speed_report


def _decode(total, transport, gemm=1.0, attention=1.0):
    return {"total_ms": total, "cloud_gemm_ms": gemm, "transport_ms": transport, "serialise_ms": 0.5,
            "masking_ms": 1.0, "cvm_share_ms": 0.3, "attention_ms": attention, "sampling_ms": 0.1, "other_cvm_ms": 0.4,
            "calls_per_step": 9, "transport_ms_per_call": transport / 9, "payload_bytes_per_step": 2048,
            "cloud_cpu_ms_mean": 3.0, "wall_ms_mean": 12.0}


def _profile(mode, transport, threads, total):
    return {"compute_dtype": mode, "transport": transport, "cloud_threads": threads,
            "arch": {"num_layers": 2, "hidden_size": 64, "vocab_size": 1024},
            "batch=1": {"decode": _decode(total, total - 3.0)},
            "batch=8": {"decode": _decode(total + 2, total - 2.0, attention=2.0)}}


def speed_result():
    hf = {f"threads={t},batch={b}": {"threads": t, "batch": b, "ms_per_token": ms, "ttft_ms": 5.0,
                                      "tokens_per_s": tps}
          for t, b, ms, tps in [(1, 1, 2.0, 500.0), (2, 1, 20.0, 50.0), (1, 8, 2.5, 3200.0), (2, 8, 10.0, 800.0)]}
    talaria = {"streams=1": {"metrics": {"ms_per_token": 10.0, "ttft_ms": 30.0, "tokens_per_s": 100.0,
                                         "calls_per_token": 9.0, "bytes_per_token": 30720.0,
                                         "mask_share_of_proxy_cpu": 0.2}, "matches_hf_text": True},
               "streams=8": {"metrics": {"ms_per_token": 16.0, "ttft_ms": 60.0, "tokens_per_s": 480.0,
                                         "calls_per_token": 1.2, "bytes_per_token": 30720.0,
                                         "mask_share_of_proxy_cpu": float("nan")}},
               "streams=1,cloud_threads=2": {"metrics": {"ms_per_token": 12.0, "ttft_ms": 30.0, "tokens_per_s": 83.0,
                                                         "calls_per_token": 9.0, "bytes_per_token": 30720.0,
                                                         "mask_share_of_proxy_cpu": 0.2, "streams": 1,
                                                         "cloud_threads": 2}},
               "streams=8,cloud_threads=2": {"metrics": {"ms_per_token": 14.0, "ttft_ms": 50.0, "tokens_per_s": 560.0,
                                                         "calls_per_token": 1.2, "bytes_per_token": 30720.0,
                                                         "mask_share_of_proxy_cpu": 0.1, "streams": 8,
                                                         "cloud_threads": 2}}}
    profile = {"mixed, tcp, cloud 1 thread": {**_profile("mixed", "tcp", 1, 9.0),
                                              "gemm_ms_by_rows": {1: 0.5, 4: 0.7, 8: 1.0}},
               "mixed, websocket, cloud 1 thread": _profile("mixed", "websocket", 1, 14.0),
               "mixed, http, cloud 1 thread": _profile("mixed", "http", 1, 25.0),
               "mixed/full, tcp, cloud 1 thread": _profile("mixed/full", "tcp", 1, 11.0),
               "float64, tcp, cloud 1 thread": _profile("float64", "tcp", 1, 10.0)}
    micro = {"attention_b8": {"loop_ms_per_step": 1.0, "batched_ms_per_step": 0.1},
             "openmp_teams": {"threads": 2, "rows=1": {"compute_thread_ms": 5.0, "second_thread_ms": 7.5},
                              "rows=8": {"compute_thread_ms": 9.0, "second_thread_ms": 10.0}}}
    return {"hf": {"points": hf}, "talaria": talaria, "profile": profile, "micro": micro,
            "setup": {"compute_dtype": "mixed", "reply": "projected", "transport": "tcp", "mask_scale": 10.0,
                      "mask_rank": 64}}


def test_summary_uses_the_better_hf_thread_setting_and_checks_targets():
    s = speed_report.summary(speed_result())
    assert s["hf_b1"]["threads"] == 1 and s["hf_b8"]["tokens_per_s"] == 3200.0
    # best against best: the 1-thread cloud is faster for one stream, the 2-thread one for eight
    assert s["single_ratio"] == pytest.approx(5.0) and not s["single_ok"]
    assert s["multi_ratio"] == pytest.approx(560 / 3200) and not s["multi_ok"]
    assert s["tal_8"]["cloud_threads"] == 2
    # equal GEMM threads: HF 1 thread vs the 1-thread cloud
    assert s["equal_single_ratio"] == pytest.approx(5.0) and s["equal_multi_ratio"] == pytest.approx(480 / 3200)


def test_targets_can_be_met():
    result = speed_result()
    result["talaria"]["streams=1,cloud_threads=2"]["metrics"]["ms_per_token"] = 2.9
    result["talaria"]["streams=8,cloud_threads=2"]["metrics"]["tokens_per_s"] = 2600.0
    s = speed_report.summary(result)
    assert s["single_ok"] and s["multi_ok"] and s["single_ratio"] == pytest.approx(1.45)


def test_predictions_name_done_work_with_its_basis():
    rows = speed_report.predictions(speed_result())
    by = {(r["batch"], r["optimisation"]): r for r in rows}
    http = by[1, "(done) raw frames on one TCP socket instead of HTTP POSTs"]
    assert http["now_ms"] == 25.0 and http["saving_ms"] == pytest.approx(16.0)
    assert by[1, "(done) raw frames on one TCP socket instead of WebSocket messages"]["saving_ms"] == pytest.approx(5.0)
    projected = [r for r in rows if r["batch"] == 1 and r["optimisation"].startswith("(done) projected")][0]
    assert projected["saving_ms"] == pytest.approx(2.0)
    assert by[1, "(done) mixed precision instead of float64"]["saving_ms"] == pytest.approx(1.0)
    attn = by[8, speed_report.BATCHED]
    assert attn["predicted_ms"] == 11.0 and attn["now_ms"] == pytest.approx(11.9)  # without it: + loop - batched
    assert (1, speed_report.BATCHED) not in by  # nothing to batch with one sequence
    assert not any("float32 wire" in r["optimisation"] for r in rows)  # no float32 variant measured
    assert all(r["optimisation"].startswith("(done)") for r in rows)  # nothing predicted without a basis


def test_the_compute_thread_row_prices_the_two_thread_cloud():
    result = speed_result()
    result["profile"]["mixed, tcp, cloud 2 threads"] = _profile("mixed", "tcp", 2, 8.0)
    by = {(r["batch"], r["optimisation"]): r for r in speed_report.predictions(result)}
    one, eight = by[1, speed_report.TEAMS], by[8, speed_report.TEAMS]
    assert (one["now_ms"], one["predicted_ms"]) == (pytest.approx(10.5), 8.0)  # 2-thread step + (7.5 - 5)
    assert (eight["now_ms"], eight["predicted_ms"]) == (pytest.approx(11.0), 10.0)
    assert (1, speed_report.TEAMS) not in {(r["batch"], r["optimisation"]) for r in speed_report.predictions(speed_result())}


def test_speed_markdown_and_plot(tmp_path):
    report = {"mode": "quick", "config": {"prompt_len": 16, "new_tokens": 32, "repeats": {"tiny": 3}},
              "machine": {"cpu": "cpu", "cores": 2, "torch": "x", "cuda": False},
              "load_avg_start": 1.0, "load_avg_end": 2.0, "models": {"tiny": speed_result()}}
    md = speed_report.markdown(report)
    assert "| Talaria, 8 streams, cloud 1 thread | 1+1 | 16 | - | 60 | 480 | 0.15 | 1.2 | 30 | - |" in md
    assert "| Talaria, 8 streams, cloud 2 threads | 2+1 | 14 | - | 50 | 560 | 0.175 | 1.2 | 30 | 10% |" in md
    assert "target <= 1.5: NOT met" in md and "'mixed'" in md and "At equal GEMM threads" in md
    assert "| mixed, tcp, cloud 1 thread | 1 | 9 | 1 | 6 | 1 | 1 | 0.1 | 0.4 | 0.3 | - | 25% | 0.667 | 2 |" in md
    assert "| mixed, websocket, cloud 1 thread | 1 | 14 | 1 | 11 | 1 | 1 | 0.1 | 0.4 | 0.3 | 0.5 | 25% |" in md
    speed_report.plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_precision_helpers():
    ref = torch.tensor([[3.0, 4.0]])
    assert precision.rel_error(torch.tensor([[3.0, 4.5]]), ref) == pytest.approx(0.1)
    match = torch.tensor([[True, True, False], [True, True, True]])
    assert precision.first_divergence(match) == [2, 3]
    assert precision.min_margin(torch.tensor([[[1.0, 0.5, 0.9], [2.0, -1.0, 1.0]]])) == pytest.approx(0.1)
    red = precision.reduce_errors({"0.qkv": 1e-7, "1.qkv": 3e-7, "0.down": 2e-7, "lm_head": 5e-8})
    assert red["max"] == 3e-7 and red["max_by_kind"] == {"qkv": 3e-7, "down": 2e-7, "lm_head": 5e-8}


def test_bf16_service_rounds_weights_and_recovers_with_their_own_r_pub():
    class Op:
        def __init__(self, w):
            self.weight, self.bias = w, None

    class Base:
        manifest, model = None, type("M", (), {})()

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, generator=g)
    base = Base()
    base.model.ops = {"0.o": Op(w)}
    base.bases = {"0.o": torch.linalg.qr(torch.randn(16, 4, generator=g, dtype=torch.float64))[0].T.contiguous()}
    svc = precision.Bf16Service(base)
    x = torch.randn(3, 16, generator=g)
    assert torch.allclose(svc.linear("0.o", x), x @ w, rtol=0.05, atol=0.05)
    assert not torch.equal(svc.linear("0.o", x), x @ w)  # bf16, not float32
    assert torch.allclose(svc.recovery["0.o"].double(), base.bases["0.o"] @ w.bfloat16().double(), atol=1e-6)


def test_precision_markdown_verdict_and_plot(tmp_path):
    def greedy(ok):
        return {"identical_prompts": 8 if ok else 5, "prompts": 8, "first_divergence_min": 32 if ok else 4,
                "max_abs_logit_diff": 1e-5 if ok else 0.3}

    def errs(e):
        return {"max": e, "median": e / 2, "max_by_kind": {"qkv": e, "lm_head": e / 3}}

    m = {"margin_min": 0.002,
         "errors": {"float64": {s: errs(1e-14) for s in ("none", "1", "100")},
                    "bfloat16": {s: errs(1e-2) for s in ("none", "1", "100")}},
         "greedy": {"float64": {s: greedy(True) for s in ("none", "1", "100")},
                    "bfloat16": {"none": greedy(True), "1": greedy(True), "100": greedy(False)}}}
    assert precision_report.verdict(m) == ["float64"]
    report = {"mode": "quick", "config": {"scales": [1.0, 100.0], "mask_seed": 0, "num_prompts": 8,
                                          "prompt_len": 16, "tokens": 32},
              "machine": {"cpu": "cpu", "cores": 2, "torch": "x", "cuda": False}, "models": {"tiny": m}}
    md = precision_report.markdown(report)
    assert "| bfloat16 | 8/8 (1.00e-05) | 8/8 (1.00e-05) | 5/8, first diff @4 (0.3) |" in md
    assert "Identical at every scale: float64." in md
    precision_report.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_float32_predictions_take_components_from_the_float32_cloud():
    result = speed_result()
    f32 = _profile("float32", "tcp", 1, 7.0)
    for b in ("batch=1", "batch=8"):
        f32[b]["decode"].update(masking_ms=0.4, serialise_ms=0.3, cloud_gemm_ms=0.6)
    result["profile"]["float32, tcp, cloud 1 thread"] = f32
    by = {(r["batch"], r["optimisation"]): r for r in speed_report.predictions(result)}
    wire32 = by[1, "float32 wire + float32 GEMM (lossy with large masks)"]
    assert wire32["saving_ms"] == pytest.approx((1.0 - 0.6) + (1.0 - 0.4))  # GEMM + masking; not its noisy step


def test_speed_report_renders_from_its_json(tmp_path):
    """bench.md can be rebuilt from bench.json: NaN became null, integer keys became strings."""
    import json

    from benchmarks.common import write_json

    result = speed_result()
    result["profile"]["mixed, websocket, cloud 2 threads"] = _profile("mixed", "websocket", 2, 9.5)
    result["profile"]["mixed, websocket, cloud 2 threads"]["batch=1"]["decode"]["cloud_gemm_ms"] = float("nan")
    report = {"mode": "full", "config": {"prompt_len": 16, "new_tokens": 32},
              "machine": {"cpu": "cpu", "cores": 2, "torch": "x", "cuda": False},
              "load_avg_start": 1.0, "load_avg_end": 2.0, "models": {"tiny": result}}
    write_json(tmp_path / "bench.json", report)
    md = speed_report.markdown(json.loads((tmp_path / "bench.json").read_text()))
    assert md == speed_report.markdown(report)
    assert speed_report.BATCHED in md and "combined" not in md
