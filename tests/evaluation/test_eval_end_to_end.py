"""End to end: `talaria eval privacy` on the tiny model through a real recording cloud subprocess."""

from __future__ import annotations

import json

import torch

from talaria_cli.main import main


def test_record_then_attack_through_the_real_cloud(tiny_model, tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "out"
    code = main(["eval", "privacy", "--model", str(tiny_model("qwen2")), "--num-prompts", "3", "--ranks", "16",
                 "--ops", "0.qkv,1.down", "--attacks", "nn,nn-proj,nn-pca,match,inv-proj", "--inverter-seqs", "8",
                 "--inverter-epochs", "1", "--out", str(out), "--workdir", str(tmp_path / "work"), "--threads", "0"])
    assert torch.get_num_threads() == threads
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"privacy.md", "privacy.json", "privacy.png"}
    report = json.loads((out / "privacy.json").read_text())
    none, remo = report["settings"]
    assert (none["label"], remo["label"]) == ("none", "remo-m16")
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
    assert report["sanity"]["passed"] is True
    assert "| remo-m16 | nn-proj | 100.0 |" in (out / "privacy.md").read_text()
