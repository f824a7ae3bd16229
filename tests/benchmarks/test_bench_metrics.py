"""The benchmark's own arithmetic on synthetic input: prompts, HF and stream metrics, /metrics parsing."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.common import (StreamRecord, fmt, hf_metrics, make_prompts, markdown_table, median_of_runs,
                               metric_delta, parse_prometheus, per_token_from_metrics, stream_metrics, write_json)

EXPOSITION = """\
# HELP talaria_cloud_call_seconds Round trip of masked linear calls.
# TYPE talaria_cloud_call_seconds summary
talaria_cloud_call_seconds_count 97.0
talaria_cloud_call_seconds_sum 0.5
talaria_requests_total{endpoint="completions",status="200"} 3.0
talaria_completion_tokens_total 10.0
talaria_cloud_bytes_sent_total 1000.0
talaria_cloud_bytes_received_total 3000.0
talaria_mask_seconds_total 0.25
talaria_engine_step_seconds_total 2.0
talaria_engine_steps_total 10.0
"""


def test_prompts_are_deterministic_equal_length_and_in_range():
    a = make_prompts(8, 16, 3, 50, seed=0)
    assert a == make_prompts(8, 16, 3, 50, seed=0)
    assert a != make_prompts(8, 16, 3, 50, seed=1)
    assert len(a) == 8 and {len(p) for p in a} == {16}
    assert all(3 <= t < 50 for p in a for t in p)
    with pytest.raises(ValueError):
        make_prompts(1, 4, 10, 10)


def test_hf_metrics_separate_prefill_from_decode():
    m = hf_metrics(first_s=0.1, total_s=1.65, batch=8, new_tokens=32)
    assert m["ttft_ms"] == pytest.approx(100.0)
    assert m["ms_per_token"] == pytest.approx(1550.0 / 31)
    assert m["tokens_per_s"] == pytest.approx(256 / 1.65)
    with pytest.raises(ValueError):
        hf_metrics(0.1, 0.2, 1, 1)


def test_stream_metrics_use_medians_and_the_wall_clock_of_all_streams():
    recs = [StreamRecord(0.0, 0.2, 3.2, 31), StreamRecord(0.5, 0.6, 2.1, 16), StreamRecord(0.0, None, 1.0, 0)]
    m = stream_metrics(recs)
    assert m["ttft_ms"] == pytest.approx(150.0)  # median of 200 ms and 100 ms; the stream without text is skipped
    assert m["ms_per_token"] == pytest.approx(100.0)  # 3.0 s / 30 and 1.5 s / 15
    assert m["tokens_per_s"] == pytest.approx(47 / 3.2)
    with pytest.raises(ValueError):
        stream_metrics([])


def test_prometheus_text_is_parsed_with_labels_and_deltas():
    before = parse_prometheus(EXPOSITION)
    assert before["talaria_cloud_call_seconds_count"] == 97.0
    assert before['talaria_requests_total{endpoint="completions",status="200"}'] == 3.0
    assert not any(k.startswith("#") for k in before)
    after = dict(before, talaria_completion_tokens_total=30.0)
    assert metric_delta(before, after)["talaria_completion_tokens_total"] == 20.0
    assert metric_delta(before, after)["talaria_cloud_call_seconds_count"] == 0.0


def test_per_token_figures_from_a_metrics_delta():
    delta = parse_prometheus(EXPOSITION)
    m = per_token_from_metrics(delta, proxy_cpu_s=1.0, cloud_cpu_s=0.5)
    assert m["calls_per_token"] == pytest.approx(9.7)
    assert m["bytes_per_token"] == pytest.approx(400.0)
    assert m["mask_share_of_proxy_cpu"] == pytest.approx(0.25)
    assert m["mask_share_of_step_time"] == pytest.approx(0.125)
    assert m["ms_per_step_server"] == pytest.approx(200.0)
    assert m["cloud_cpu_ms_per_token"] == pytest.approx(50.0)
    assert per_token_from_metrics({}, 1.0, 1.0) == {}  # no tokens: nothing to divide by


def test_median_of_runs_is_key_wise():
    assert median_of_runs([{"a": 1, "b": 10}, {"a": 3, "b": 30}, {"a": 2, "b": float("nan")}]) == {"a": 2, "b": 20}


def test_markdown_table_and_number_format():
    table = markdown_table(["x", "y"], [["a", 1234.5678], [None, float("nan")], ["c", 1.5e-7]])
    lines = table.splitlines()
    assert lines[0] == "| x | y |" and lines[1] == "|---|---|"
    assert lines[2] == "| a | 1.23e+03 |"
    assert lines[3] == "| - | - |"
    assert lines[4] == "| c | 1.50e-07 |"
    assert fmt(0.5) == "0.5" and fmt(7) == "7"
    with pytest.raises(ValueError):
        markdown_table(["x"], [[1, 2]])


def test_json_output_is_strict(tmp_path):
    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, math.inf], "c": {"d": 2}})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data == {"a": None, "b": [1.0, None], "c": {"d": 2}}
