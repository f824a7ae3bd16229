"""End to end: `talaria eval privacy` on the tiny model through real recording cloud subprocesses
(one remo cloud per setting; for pad/dealer a compute cloud and a dealer)."""

from __future__ import annotations

import json

import torch

from talaria_cli.main import main


def test_record_then_attack_through_the_real_cloud(tiny_model, tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "out"
    code = main(["eval", "privacy", "--model", str(tiny_model("qwen2")), "--num-prompts", "3", "--ranks", "16",
                 "--ops", "0.qkv,1.down", "--attacks", "nn,nn-proj,nn-pca,match,inv-proj", "--inverter-seqs", "8",
                 "--schemes", "none,remo,pad/dealer",
                 "--inverter-epochs", "1", "--out", str(out), "--workdir", str(tmp_path / "work"), "--threads", "0"])
    assert torch.get_num_threads() == threads
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"privacy.md", "privacy.json", "privacy.png"}
    report = json.loads((out / "privacy.json").read_text())
    none, remo, pad_compute, pad_dealer, pad_both = report["settings"]
    assert (none["label"], remo["label"]) == ("none", "remo-m16")
    assert [s["view"] for s in (pad_compute, pad_dealer, pad_both)] == ["compute", "dealer", "both"]
    truth = json.loads((tmp_path / "work" / "none" / "truth.json").read_text())
    assert none["rows"] == sum(len(p) for p in truth["prompt_ids"]) + sum(len(o) - 1 for o in truth["outputs"])
    # unmasked: plain nearest neighbour reads layer 0; the matcher reads layer 1
    assert none["results"]["nn"]["0.qkv"]["accuracy"] == 1.0
    assert none["results"]["match"]["1.down"]["accuracy"] == 1.0
    # ReMO hides the rows from the plain attack, not from the projection or the PCA estimate
    assert remo["results"]["nn"]["0.qkv"]["accuracy"] < 0.2
    assert remo["results"]["nn-proj"]["0.qkv"]["accuracy"] == 1.0
    assert remo["results"]["nn-pca"]["0.qkv"]["pca_rank"] == 16
    assert remo["results"]["match"]["1.down"]["projected"] is True
    # pad: each cloud alone reads nothing beyond chance (a few rows of 193 at most); both together read all
    for alone in (pad_compute, pad_dealer):
        assert "nn-proj" not in alone["results"] and "inv-proj" not in alone["results"]
        assert max(c["accuracy"] for p in alone["results"].values() for c in p.values()) < 0.05
    assert pad_both["results"]["nn"]["0.qkv"]["accuracy"] == 1.0
    assert pad_both["results"]["match"]["1.down"]["accuracy"] == 1.0
    (uniform,) = report["uniformity"]
    assert uniform["collusion_exact"] is True
    assert uniform["summary"]["control_frac_p_below_0.01"] == 1.0  # the test rejects unpadded rows
    assert uniform["summary"]["corr_lifted_max_abs"] < 0.5
    assert report["sanity"]["passed"] is True and report["sanity"]["collusion_best_layer0"] == 1.0
    md = (out / "privacy.md").read_text()
    assert "| remo-m16 | nn-proj | 100.0 |" in md and "| pad/dealer: both | nn | 100.0 |" in md
