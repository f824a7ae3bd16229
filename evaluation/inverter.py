"""Learned inverters: a small network the attacker trains on its own text through the public model.

The cloud owns the weights, so it can produce unlimited pairs (op input x, token id) from any text
(`PublicModel.sequence_inputs`) and fit x -> token. Against ReMO (arXiv 2603.00196) it has three
options, all evaluated by the audit:
  * train on clean x, apply to the raw observations x~ = x + M_pvt M_pub;
  * train on x plus simulated masks c M_pub (it knows M_pub and can estimate the mask size), so the
    network learns to ignore span(M_pub);
  * train on P x and apply to P x~ = P x (P projects out span(M_pub)): the mask is gone exactly.
Learned inversion of intermediate states is the baseline attack family the Talaria paper reports
against; the model-aware matchers in `attacks` are the stronger ones ("Hidden No More",
arXiv 2505.18332).

Shape legend: n rows, d = d_in of the op, k rows of the basis U [k, d], C classes (candidate tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from evaluation.attacks import project_out


@dataclass
class InverterConfig:
    hidden: int = 256  # width of the single hidden layer
    epochs: int = 12  # passes over the attacker's training rows
    batch: int = 256  # rows per optimiser step
    lr: float = 2e-3  # AdamW learning rate
    seed: int = 0  # initialisation and shuffling


class Inverter(nn.Module):
    """Standardise -> Linear(d, hidden) -> GELU -> Linear(hidden, C)."""

    def __init__(self, d: int, classes: int, hidden: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        return torch.cat([self(x[i : i + chunk]).argmax(1) for i in range(0, x.shape[0], chunk)])


def attacker_token_ids(num_seqs: int, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    """The attacker's own 'text': uniform random token sequences [B, T] (a flat prior over tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (num_seqs, seq_len), generator=gen)


def simulate_remo(x: torch.Tensor, basis: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    """x + c U with c [n, k] ~ N(0, (scale |x_row| / sqrt(k))^2): ReMO's mask as the proxy draws it."""
    x = x.double()
    k = basis.shape[0]
    if k == 0 or scale <= 0:
        return x
    row = x.norm(dim=1, keepdim=True) * (scale / k**0.5)  # [n, 1]
    coeff = torch.randn(x.shape[0], k, generator=gen, dtype=torch.float64) * row
    return x + coeff @ basis.double()


def estimate_mask_scale(obs: torch.Tensor, basis: torch.Tensor) -> float:
    """Median |mask| / |x| per row, from the observations alone.

    With x spread evenly over directions, |P x~|^2 = |P x|^2 ~ (d-k)/d |x|^2 and
    |U x~|^2 ~ k/d |x|^2 + |mask|^2, so both |x| and |mask| follow from the two projections.
    """
    k, d = basis.shape
    if k == 0:
        return 0.0
    x = obs.double()
    outside = project_out(x, basis).pow(2).sum(1)  # |P x|^2 [n]
    inside = (x @ basis.double().T).pow(2).sum(1)  # |U x~|^2 [n]
    x_sq = outside * d / max(1, d - k)
    mask_sq = (inside - x_sq * k / d).clamp_min(0)
    return float((mask_sq / x_sq.clamp_min(1e-300)).sqrt().median())


def train_inverter(features: torch.Tensor, labels: torch.Tensor, classes: int, cfg: InverterConfig,
                   augment=None) -> Inverter:
    """Fit features [n, d] -> labels [n]; `augment(x, gen)` re-draws simulated masks every epoch."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    sample = (augment(features, gen) if augment else features.double()).float()
    mean, std = sample.mean(0), sample.std(0).clamp_min(1e-6)
    model = Inverter(features.shape[1], classes, cfg.hidden, mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * ((features.shape[0] + cfg.batch - 1) // cfg.batch))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(cfg.epochs):
        x_all = (augment(features, gen) if augment else features.double()).float()
        order = torch.randperm(features.shape[0], generator=gen)
        for i in range(0, order.numel(), cfg.batch):
            idx = order[i : i + cfg.batch]
            loss = loss_fn(model(x_all[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
