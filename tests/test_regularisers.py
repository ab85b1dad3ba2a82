"""Penalties that keep a trained cell contractive: the spectral-radius penalty."""

import pytest
import torch
from torch import nn

from deq_petsc import DEQ
from deq_petsc.science.train import TrainConfig, Trainer

from helpers import synthetic


class LinearCell(nn.Module):
    """f(z, x) = A z + x with A = Q diag(lams) Q^T (same A for every sample)."""

    def __init__(self, lams):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(len(lams), len(lams), dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(0)))
        self.scale = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("a", q @ torch.diag(torch.tensor(lams, dtype=torch.float64)) @ q.T)

    def forward(self, z, x):
        return self.scale * z @ self.a.T + x


def test_spectral_penalty_measures_the_radius_and_its_gradient():
    cell = LinearCell([0.9, -0.5, 0.1])
    layer = DEQ(cell, prefix="specpen_", options={"snes_rtol": 1e-12})
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer(x)                                         # a forward with gradients
    g = torch.Generator().manual_seed(2)
    penalty = layer.spectral_penalty(target=0.5, steps=60, generator=g)
    assert layer.last_radius_estimate == pytest.approx(0.9, rel=1e-6)
    assert float(penalty.detach()) == pytest.approx(0.4 ** 2, rel=1e-5)
    penalty.backward()
    # d/ds (0.9 s - 0.5)^2 at s = 1
    assert float(cell.scale.grad) == pytest.approx(2 * 0.4 * 0.9, rel=1e-5)
    assert float(layer.spectral_penalty(target=0.95, steps=60).detach()) == 0.0
    layer.destroy()


def _trained_radius(spectral_reg, tmp_path):
    data = synthetic(n=200, channels=2, size=8, seed=3)
    cfg = TrainConfig(task="polarity", epochs=4, batch_size=32, width=8, cell="resnet", lr=1e-2,
                      seed=2, spectral_reg=spectral_reg, spectral_target=0.5)
    trainer = Trainer(cfg, data, tmp_path / f"reg{spectral_reg}", progress=False,
                      log=lambda *a: None)
    history = trainer.fit()
    model = trainer.model.eval()
    with torch.no_grad():
        model(data.images[:64])
    rho = model.equilibrium.spectral_radius()
    trainer.destroy()
    return rho, history


def test_the_resnet_cell_with_the_penalty_stays_more_contractive(tmp_path):
    free, free_history = _trained_radius(0.0, tmp_path)
    held, held_history = _trained_radius(100.0, tmp_path)
    assert held < 0.75 < 0.9 < free, (held, free)
    # and its solves stay short: the point of the penalty
    assert held_history[-1]["forward_its"] < 0.5 * free_history[-1]["forward_its"]
    assert held_history[-1]["spectral_penalty"] >= 0.0


def test_the_penalty_reads_the_radius_from_the_solves_residual_in_few_steps():
    """A spectrum with many eigenvalues near the top, as trained cells have: four power
    steps from random vectors read 0.93 here; from the residual a loose Picard solve
    leaves (what training's rtol 1e-2 solves leave), 0.97 within 1%."""
    lams = torch.linspace(0.97, 0.3, 60).tolist()
    cell = LinearCell(lams)
    layer = DEQ(cell, prefix="specres_", options={"snes_type": "nrichardson",
                                                  "snes_linesearch_type": "basic",
                                                  "snes_rtol": 1e-2, "snes_max_it": 500})
    x = torch.randn(4, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer(x)
    layer.spectral_penalty(target=0.5, steps=4, generator=torch.Generator().manual_seed(2))
    assert layer.last_radius_estimate == pytest.approx(0.97, rel=1e-2)
    assert layer.last_radius_estimate <= 0.97 + 1e-12
    layer.destroy()
