"""Run every attack on one recorded transcript and score it against the harness's ground truth.

The `Attacker` is built from what the cloud knows (checkpoint path: weights, architecture,
tokenizer) and is handed a record directory (`evaluation.transcript`); it never sees truth.json.
Scoring happens afterwards, in `score`, on the attacker's predicted token id per received row.

Attacks (names used in the tables); A1-A5 as in the audit issue. On a pad transcript (read as unit
rows, evaluation.pad_views) every comparison is by direction, PCA ranks are read off the spectrum,
and inv-aug trains on simulated pads; nn-proj and inv-proj need public bases and do not apply:
    nn         A1  layer-0 qkv rows vs. rmsnorm(E), full space
    nn-proj    A2  the same in the complement of span(M_pub)                  (public basis)
    nn-pca     A4  the same in the complement of the top-m principal directions of the observed
                   rows (m: the public rank of the op; M_pub itself unused)
    match      A3  token-by-token matching with the public model (arXiv 2505.18332), in the
                   complement of span(M_pub) when the transcript shows a mask there, else full space
    match-pca  A3+A4  the matcher in the complement of the PCA-estimated subspace
    inv        A5  learned inverter trained on clean inputs, applied to the raw rows
    inv-aug    A5  trained on inputs plus simulated ReMO masks, applied to the raw rows
    inv-proj   A5  trained and applied after projecting out span(M_pub)

Shape legend: n rows of one op, d = d_in, C candidate tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evaluation import attacks as A
from evaluation import inverter as inv
from evaluation.transcript import Transcript, load_transcript
from talaria_wire import OpKey
from talaria_wire.ops import BLOCK_OPS

LAYER0_ATTACKS = ("nn", "nn-proj", "nn-pca")
OP_ATTACKS = ("match", "match-pca", "inv", "inv-aug", "inv-proj")
ALL_ATTACKS = LAYER0_ATTACKS + OP_ATTACKS


@dataclass
class AuditConfig:
    attacks: tuple[str, ...] = ALL_ATTACKS
    ops: list[str] | None = None  # block ops to attack (None: all); layer-0 attacks use '0.qkv'
    inverter: inv.InverterConfig = field(default_factory=inv.InverterConfig)
    inverter_seqs: int = 400  # attacker's own random sequences for inverter training
    inverter_len: int = 48  # tokens per such sequence


class Attacker:
    """The honest-but-curious cloud: public model, tokenizer, and its own training data."""

    def __init__(self, model_dir: str | Path, cfg: AuditConfig, progress=print):
        from transformers import AutoTokenizer

        from evaluation.public_model import PublicModel

        self.cfg = cfg
        self.progress = progress
        self.model = PublicModel(model_dir)
        # Candidates: every id the (public) tokenizer can produce; = the whole vocab of the tiny models.
        vocab = min(self.model.arch.vocab_size, len(AutoTokenizer.from_pretrained(str(model_dir))))
        self.candidates = torch.arange(vocab)  # [C]
        self.table = self.model.normalized_embeddings()[self.candidates].double()  # rmsnorm(E): [C, d]
        self._train: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
        self._clean_inverters: dict[tuple, inv.Inverter] = {}  # per (op, reading): trained once per audit

    # -- the attacker's own data -------------------------------------------------------------
    def training_rows(self, ops: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Inputs of `ops` on the attacker's random sequences, and the token id of each row."""
        if self._train is None or any(op not in self._train[0] for op in ops):
            ids = inv.attacker_token_ids(self.cfg.inverter_seqs, self.cfg.inverter_len,
                                         len(self.candidates), seed=1234)
            feats: dict[str, list[torch.Tensor]] = {op: [] for op in ops}
            stop = max((OpKey.parse(op) for op in ops), key=lambda k: (k.layer, BLOCK_OPS.index(k.op)))
            for i in range(0, ids.shape[0], 32):
                captured = self.model.sequence_inputs(ids[i : i + 32], stop)
                for op in ops:
                    feats[op].append(captured[op])
            self._train = ({op: torch.cat(v) for op, v in feats.items()}, ids.reshape(-1))
        return self._train

    def _inverter(self, op: str, features: torch.Tensor, labels: torch.Tensor, augment=None) -> inv.Inverter:
        return inv.train_inverter(features, labels, len(self.candidates), self.cfg.inverter, augment)

    # -- one transcript ------------------------------------------------------------------------
    def attack(self, record: str | Path | Transcript) -> dict[str, dict[str, dict]]:
        """{attack: {op: {'pred': [n] token ids, ...details}}} for a record directory, or for a
        transcript already read the way its attacker reads it (evaluation.pad_views).

        Attacks that need material the transcript lacks are left out: without public bases (pad
        clouds) nn-proj and inv-proj; inv-aug needs a mask to simulate (ReMO's bases or pads)."""
        tr: Transcript = record if isinstance(record, Transcript) else load_transcript(record)
        ops = self.cfg.ops or tr.block_ops
        segments = tr.segments()
        wanted = set(self.cfg.attacks)
        if not tr.bases:
            wanted -= {"nn-proj", "inv-proj"}
        if not tr.bases and tr.mask != "pad":
            wanted.discard("inv-aug")
        results: dict[str, dict[str, dict]] = {a: {} for a in self.cfg.attacks if a in wanted}
        say = self.progress
        norm = tr.scale_free

        def rank(op: str) -> int | None:  # the public rank m of a remo op; None: read it off the spectrum
            return tr.manifest.op(op).rank if tr.bases else None

        layer0 = tr.block_ops[0]
        if wanted & set(LAYER0_ATTACKS):
            obs = tr.observations(layer0)
            t0 = time.monotonic()
            if "nn" in wanted:
                results["nn"][layer0] = {"pred": self.candidates[A.nearest(obs, self.table, normalize=norm)]}
            if "nn-proj" in wanted:
                results["nn-proj"][layer0] = {"pred": self.candidates[A.nearest(obs, self.table, tr.bases[layer0])]}
            if "nn-pca" in wanted:
                est = A.estimate_mask_subspace(obs, rank(layer0))
                results["nn-pca"][layer0] = {"pred": self.candidates[A.nearest(obs, self.table, est.basis, normalize=norm)],
                                             "pca_rank": est.basis.shape[0], "pca_gap": est.gap}
            say(f"  layer-0 nearest-neighbour attacks ({time.monotonic() - t0:.1f}s)")

        t0 = time.monotonic()
        variants, slots = [], []  # every (attack, op) matcher, run together (shared passes)
        for op in ops:
            obs, basis = tr.observations(op), tr.bases.get(op)
            if "match" in wanted:
                ratio = A.mask_energy_ratio(obs, basis) if basis is not None else None
                remove = basis if ratio is not None and ratio > A.MASK_ENERGY_RATIO else None
                variants.append(A.MatchVariant(op, obs, remove, norm))
                info = {} if ratio is None else {"projected": remove is not None, "energy_ratio": ratio}
                slots.append(("match", op, info))
            if "match-pca" in wanted:
                est = A.estimate_mask_subspace(obs, rank(op))
                info = {"pca_rank": est.basis.shape[0], "pca_gap": est.gap}
                if est.basis.shape[0] == 0 and "match" in wanted and variants[-1].remove is None:
                    slots.append(("match-pca", op, {**info, "same_as": len(variants) - 1}))  # the same matcher
                    continue
                variants.append(A.MatchVariant(op, obs, est.basis, norm))
                slots.append(("match-pca", op, info))
        if variants:
            preds = A.match_tokens(self.model, variants, segments, self.candidates, say)
            k = 0
            for attack, op, info in slots:
                if "same_as" in info:  # PCA found no subspace: the full-space matcher's answer
                    results[attack][op] = {"pred": preds[info.pop("same_as")], **info}
                    continue
                results[attack][op] = {"pred": preds[k], **info}
                k += 1
            say(f"  matchers: {len(variants)} variants in {time.monotonic() - t0:.1f}s")

        if wanted & {"inv", "inv-aug", "inv-proj"}:
            self._inverters(tr, ops, wanted, results)
        return results

    def _inverters(self, tr: Transcript, ops: list[str], wanted: set[str], results: dict) -> None:
        from evaluation.pad_views import simulate_pad

        feats, labels = self.training_rows(ops)
        norm = tr.scale_free
        for op in ops:
            obs = tr.observations(op)  # [n, d]
            basis = tr.bases.get(op)  # M_pub [m, d] (remo clouds)
            x_train = feats[op]
            t1 = time.monotonic()
            if "inv" in wanted:
                key = (op, norm)
                if key not in self._clean_inverters:
                    self._clean_inverters[key] = self._inverter(op, A.unit_rows(x_train).float() if norm else x_train, labels)
                results["inv"][op] = {"pred": self.candidates[self._clean_inverters[key].predict(obs)]}
            if "inv-aug" in wanted and tr.mask == "pad":
                spec = tr.manifest.op(op)

                def augment(x, gen, spec=spec):
                    return simulate_pad(x, spec.w_norm_bits, spec.bias, gen, spec.bias_bits)

                key = (op, "pad-aug")  # the same training (seeded) for every pad view: train once
                if key not in self._clean_inverters:
                    self._clean_inverters[key] = self._inverter(op, x_train, labels, augment)
                results["inv-aug"][op] = {"pred": self.candidates[self._clean_inverters[key].predict(obs)]}
            elif "inv-aug" in wanted:
                scale = inv.estimate_mask_scale(obs, basis)

                def augment(x, gen, basis=basis, scale=scale):
                    return inv.simulate_remo(x, basis, scale, gen)

                model = self._inverter(op, x_train, labels, augment)
                results["inv-aug"][op] = {"pred": self.candidates[model.predict(obs)], "mask_scale_est": scale}
            if "inv-proj" in wanted:
                model = self._inverter(op, A.project_out(x_train, basis).float(), labels)
                pred = model.predict(A.project_out(obs, basis).float())
                results["inv-proj"][op] = {"pred": self.candidates[pred]}
            say = self.progress
            say(f"  {op}: inverters {time.monotonic() - t1:.1f}s")


def score(results: dict[str, dict[str, dict]], truth: dict) -> dict[str, dict[str, dict]]:
    """Token reconstruction accuracy per attack and op; rows are compared in call order."""
    rows = torch.tensor([t for step in truth["steps"] for t in step], dtype=torch.long)  # [n]
    table: dict[str, dict[str, dict]] = {}
    for attack, per_op in results.items():
        table[attack] = {}
        for op, res in per_op.items():
            pred = res["pred"]
            if pred.shape != rows.shape:
                raise ValueError(f"{attack} {op}: {pred.shape[0]} predictions for {rows.shape[0]} rows")
            correct = int((pred == rows).sum())
            extra = {k: v for k, v in res.items() if k != "pred"}
            table[attack][op] = {"accuracy": correct / max(1, rows.numel()), "correct": correct,
                                 "rows": int(rows.numel()), **extra}
    return table
