"""Surrogates of a parametric PDE: parameters -> solution field, as SciML trains them.

    theta --inject--> x --(equilibrium or hidden layers)--> z --head--> u on the grid

* ``kind="explicit"``: a multilayer perceptron with ``depth`` tanh layers of
  ``width`` units (separate weights), the usual SciML surrogate;
* ``kind="deq"``: one implicit layer ``z* = tanh(gamma W z* / ||W||_2 + x)`` solved
  by PETSc (:class:`~deq_petsc.layer.deq.DEQ`), contractive by construction
  (``Lip <= gamma``; ``||W||_2`` by one power-iteration vector that advances between
  training steps, as :class:`~.graph_classifier.ContractiveCell` does), so the
  equilibrium exists and ``I - J_f`` stays invertible however training moves ``W``.

Both are :class:`~.graph_classifier.EquilibriumModel`s (``inject``, ``equilibrium``,
``head`` and their parameter prefixes), so the TAO trainer's Gauss-Newton products
reach through the DEQ with a tangent and an adjoint solve. The inputs are
standardised by the training split's mean and deviation (buffers, in checkpoints).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from deq_petsc.layer.deq import DEQ
from .graph_classifier import EquilibriumModule

FAMILY = "surrogate"


@dataclass
class SurrogateConfig:
    """Everything needed to rebuild a surrogate (stored in checkpoints)."""

    in_dim: int
    out_dim: int
    width: int = 64
    kind: str = "deq"           # "deq" or "explicit"
    depth: int = 3              # explicit: hidden layers
    gamma: float = 0.9          # deq: the cell's Lipschitz bound
    family: str = FAMILY

    def as_dict(self) -> dict:
        return asdict(self)


class ParameterInjection(nn.Module):
    """``x = A (theta - mean) / std + b``: the draws standardised, then one linear map."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.linear = nn.Linear(in_dim, width)

    @torch.no_grad()
    def standardise(self, inputs: torch.Tensor) -> None:
        self.mean.copy_(inputs.mean(0))
        self.std.copy_(inputs.std(0).clamp_min(1e-12))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.linear((theta - self.mean) / self.std)


class DenseContractiveCell(nn.Module):
    """``f(z, x) = tanh(gamma W z / ||W||_2 + x)``, ``Lip(f) <= gamma < 1``."""

    def __init__(self, width: int, gamma: float = 0.9):
        super().__init__()
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        self.gamma = gamma
        self.weight = nn.Parameter(torch.empty(width, width))
        nn.init.orthogonal_(self.weight)
        v = torch.randn(width, generator=torch.Generator().manual_seed(1))
        self.register_buffer("v", v / v.norm())
        for _ in range(50):              # converge once; then one step per training step
            self.step_power_iteration()

    @torch.no_grad()
    def step_power_iteration(self):
        w = self.weight.T @ (self.weight @ self.v.to(self.weight.dtype))
        self.v.copy_(w / w.norm().clamp_min(1e-12))

    def forward(self, z, x):
        sigma = (self.weight @ self.v.to(self.weight.dtype)).norm().clamp_min(1e-12)
        return torch.tanh(z @ (self.gamma * self.weight / sigma).T + x)


class HiddenLayers(nn.Sequential):
    """The explicit surrogate's ``depth`` tanh layers (the first is the injection's tanh)."""

    def __init__(self, width: int, depth: int):
        layers = [nn.Tanh()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.Tanh()]
        super().__init__(*layers)


class FieldSurrogate(EquilibriumModule):
    """A DEQ or MLP surrogate of a PDE's solution: an EquilibriumModel (its forward,
    statistics and destroy are :class:`EquilibriumModule`'s)."""

    def __init__(self, config: SurrogateConfig, prefix: str = "", comm=None,
                 solver_options: dict | None = None, adjoint_options: dict | None = None):
        super().__init__()
        if config.kind not in ("deq", "explicit"):
            raise ValueError(f"kind must be 'deq' or 'explicit', got {config.kind!r}")
        if config.width < 1 or config.depth < 1:
            raise ValueError(f"width and depth must be positive, got {config.width}, "
                             f"{config.depth}")
        self.config = config
        self.inject = ParameterInjection(config.in_dim, config.width)
        if config.kind == "deq":
            self.equilibrium = DEQ(DenseContractiveCell(config.width, config.gamma),
                                   prefix=prefix, comm=comm, options=solver_options,
                                   adjoint_options=adjoint_options)
        else:
            self.equilibrium = HiddenLayers(config.width, config.depth)
        self.head = nn.Linear(config.width, config.out_dim)
