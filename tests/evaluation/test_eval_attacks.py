"""Attack primitives on synthetic data where the right answer is known (no model, no server)."""

from __future__ import annotations

import torch

from evaluation import attacks as A
from evaluation import inverter as inv


def _basis(rank: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, rank, generator=gen, dtype=torch.float64))
    return q.T.contiguous()  # [m, d], orthonormal rows


def _masked(x: torch.Tensor, basis: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    # x~ = x + M_pvt M_pub with |mask| ~ scale |x|, as RemoMask draws it
    return inv.simulate_remo(x, basis, scale, torch.Generator().manual_seed(seed))


def test_nearest_neighbour_recovers_every_unmasked_row():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(500, 32, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 500, (2000,), generator=gen)
    assert torch.equal(A.nearest(table[ids], table), ids)


def test_projection_removes_an_in_subspace_mask_exactly():
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(300, 48, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 300, (1000,), generator=gen)
    basis = _basis(40, 48, seed=2)  # only 8 directions left outside the mask subspace
    x = table[ids]
    obs = _masked(x, basis, scale=10.0, seed=3)
    # P x~ = P x: the mask vanishes up to float64 rounding of a 10x larger vector
    assert torch.allclose(A.project_out(obs, basis), A.project_out(x, basis), atol=1e-10)
    assert torch.equal(A.nearest(obs, table, basis), ids)
    # without the projection the mask does hide the rows (the attack above is not trivially true)
    assert (A.nearest(obs, table) == ids).float().mean() < 0.2


def test_pca_finds_a_planted_mask_subspace_and_nothing_when_there_is_none():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4000, 32, generator=gen, dtype=torch.float64)
    basis = _basis(8, 32, seed=5)
    obs = _masked(x, basis, scale=10.0, seed=6)
    for est in (A.estimate_mask_subspace(obs), A.estimate_mask_subspace(obs, rank=8)):
        assert est.basis.shape == (8, 32)
        # principal angles ~0: |U_est U^T|_F^2 = m exactly when the spans coincide
        assert (est.basis @ basis.T).pow(2).sum() > 8 - 1e-2
    assert A.estimate_mask_subspace(x).basis.shape[0] == 0
    # repeated rows (a token seen many times at layer 0) span fewer than d directions: no mask either
    few = torch.randn(20, 32, generator=gen, dtype=torch.float64)[torch.randint(0, 20, (500,), generator=gen)]
    assert A.estimate_mask_subspace(few).basis.shape[0] == 0
    est = A.estimate_mask_subspace(_masked(few, basis, scale=10.0, seed=7))
    assert est.basis.shape[0] == 8 and (est.basis @ basis.T).pow(2).sum() > 8 - 1e-2


def test_mask_energy_ratio_tells_masked_from_plain_traffic():
    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    basis = _basis(16, 64, seed=8)
    assert 0.7 < A.mask_energy_ratio(x, basis) < 1.4
    assert A.mask_energy_ratio(_masked(x, basis, 10.0, seed=9), basis) > 100


def test_mask_scale_is_estimated_from_observations():
    x = torch.randn(3000, 64, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    basis = _basis(16, 64, seed=11)
    assert abs(inv.estimate_mask_scale(_masked(x, basis, 10.0, seed=12), basis) - 10.0) < 1.0
    assert inv.estimate_mask_scale(x, basis) < 0.5


def test_inverter_learns_a_separable_problem_and_projection_undoes_the_mask():
    gen = torch.Generator().manual_seed(13)
    prototypes = torch.randn(20, 24, generator=gen)
    labels = torch.randint(0, 20, (3000,), generator=gen)
    feats = prototypes[labels] + 0.1 * torch.randn(3000, 24, generator=gen)
    cfg = inv.InverterConfig(hidden=64, epochs=8)
    model = inv.train_inverter(feats[:2000], labels[:2000], 20, cfg)
    assert (model.predict(feats[2000:]) == labels[2000:]).float().mean() > 0.95
    basis = _basis(12, 24, seed=14)
    obs = _masked(feats[2000:].double(), basis, 10.0, seed=15)
    proj = inv.train_inverter(A.project_out(feats[:2000], basis).float(), labels[:2000], 20, cfg)
    assert (proj.predict(A.project_out(obs, basis).float()) == labels[2000:]).float().mean() > 0.9
