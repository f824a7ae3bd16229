"""`--append`: an audit continues an earlier report of the same model and configuration only."""

from __future__ import annotations

import json

import pytest

from evaluation.cli import _append
from evaluation.harness import Setting


def _report(num_prompts: int = 100) -> dict:
    return {"model": {"name": "tiny-qwen2", "hidden_size": 64}, "runtime_seconds": 50.0, "majority": {"share": 0.1},
            "config": {"quick": False, "prompts_file": "pii.txt", "num_prompts": num_prompts, "max_tokens": 4,
                       "ranks": [16, 32], "attacks": ["nn"], "ops": None, "inverter": {}, "inverter_seqs": 400,
                       "inverter_len": 48},
            "settings": [{"label": "none"}, {"label": "remo-m16"}, {"label": "pad/dealer: compute"}],
            "uniformity": [{"label": "pad/dealer"}]}


def test_append_keeps_the_earlier_settings_and_runs_only_new_ones(tmp_path):
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps(_report()))
    report = _report()
    report.update(settings=[], uniformity=[], runtime_seconds=0.0)
    report["config"]["ranks"] = [16]
    other = _report()
    other["settings"] = [{"label": "none", "from": "other"}, {"label": "pad/he: cloud"}]
    other["uniformity"] = [{"label": "pad/dealer", "from": "other"}, {"label": "pad/he"}]
    (tmp_path / "other.json").write_text(json.dumps(other))
    todo = _append(report, [path, tmp_path / "other.json"], [Setting("none"), Setting("remo", 16), Setting("pad", pad_source="dealer"),
                                  Setting("pad", pad_source="he")])
    assert todo == []
    assert [s["label"] for s in report["settings"]] == ["none", "remo-m16", "pad/dealer: compute", "pad/he: cloud"]
    assert "from" not in report["settings"][0]  # the first report's setting wins
    assert report["uniformity"] == [{"label": "pad/dealer"}, {"label": "pad/he"}]
    assert report["previous_runtime_seconds"] == 100.0
    assert [(src["file"], src["labels"]) for src in report["sources"]] == [
        (str(path), ["none", "remo-m16", "pad/dealer: compute"]), (str(tmp_path / "other.json"), ["pad/he: cloud"])]


def test_append_keeps_where_each_setting_was_measured(tmp_path):
    first = _report()
    first["settings"] = [{"label": "remo-m16"}]
    (tmp_path / "first.json").write_text(json.dumps(first))
    second = _report()
    second["settings"] = [{"label": "remo-m16"}, {"label": "pad/he: cloud"}]
    second["sources"] = [{"file": "first.json", "labels": ["remo-m16"], "runtime_seconds": 7.0},
                         {"file": "this run", "labels": ["pad/he: cloud"], "runtime_seconds": 9.0}]
    (tmp_path / "second.json").write_text(json.dumps(second))
    report = _report()
    _append(report, [tmp_path / "second.json"], [])
    assert [(src["file"], src["labels"], src["runtime_seconds"]) for src in report["sources"]] == [
        ("first.json", ["remo-m16"], 7.0), (str(tmp_path / "second.json"), ["pad/he: cloud"], 9.0)]
    assert report["config"]["ranks"] == [16, 32]


def test_append_refuses_another_configuration(tmp_path):
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps(_report(num_prompts=8)))
    with pytest.raises(SystemExit):
        _append(_report(), [path], [Setting("pad", pad_source="he")])


def test_binomial_tail_of_blind_guessing():
    from evaluation.report import binomial_tail

    assert binomial_tail(0, 10, 0.5) == 1.0
    assert abs(binomial_tail(10, 10, 0.5) - 2.0**-10) < 1e-15
    assert abs(binomial_tail(1, 5219, 1 / 1024) - (1 - (1 - 1 / 1024) ** 5219)) < 1e-9
    assert binomial_tail(60, 5219, 1 / 1024) < 1e-20  # 60 hits of 5219 is far above chance
