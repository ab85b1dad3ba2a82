"""Classifiers of graph images: a DEQ and its explicit, weight-tied counterpart.

    images --inject--> x --equilibrium z* = f(z*, x)--> z* --head--> logits

* injection: conv3x3 (in_channels -> width) + GroupNorm;
* cell (the implicit-layers tutorial's ResNet cell, GroupNorm so that samples
  stay independent of each other):
  ``f(z, x) = GN(relu(z + GN(x + conv2(GN(relu(conv1(z)))))))``,
  convolutions initialised at small weights (std 0.01) so that ``f`` starts
  well inside contraction;
* head: GroupNorm, 4x4 average pooling, linear.

``kind="deq"`` solves the equilibrium with PETSc (:class:`~deq_petsc.layer.DEQ`,
options under ``prefix``); ``kind="explicit"`` applies the same cell ``depth``
times from ``z = 0`` with the same weights, differentiated by autograd.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..layer import DEQ


class ResNetCell(nn.Module):
    def __init__(self, width: int, groups: int = 4, kernel_size: int = 3,
                 init_std: float = 0.01):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(width, width, kernel_size, padding=pad, bias=False)
        self.conv2 = nn.Conv2d(width, width, kernel_size, padding=pad, bias=False)
        self.norm1 = nn.GroupNorm(groups, width)
        self.norm2 = nn.GroupNorm(groups, width)
        self.norm3 = nn.GroupNorm(groups, width)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, init_std)

    def forward(self, z, x):
        y = self.norm1(torch.relu(self.conv1(z)))
        return self.norm3(torch.relu(z + self.norm2(x + self.conv2(y))))


class WeightTied(nn.Module):
    """The cell applied ``depth`` times from zero, one set of weights (the explicit baseline)."""

    def __init__(self, cell: nn.Module, depth: int):
        super().__init__()
        self.cell = cell
        self.depth = depth

    def forward(self, x):
        z = torch.zeros_like(x)
        for _ in range(self.depth):
            z = self.cell(z, x)
        return z


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild a classifier (stored in checkpoints)."""

    in_channels: int
    image_size: int
    n_classes: int
    width: int = 16
    groups: int = 4
    kind: str = "deq"              # "deq" or "explicit"
    depth: int = 8                 # explicit only

    def as_dict(self) -> dict:
        return asdict(self)


class GraphImageClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig, prefix: str = "", comm=None,
                 solver_options: dict | None = None, adjoint_options: dict | None = None):
        super().__init__()
        if config.kind not in ("deq", "explicit"):
            raise ValueError(f"kind must be 'deq' or 'explicit', got {config.kind!r}")
        self.config = config
        w, g = config.width, config.groups
        self.inject = nn.Sequential(nn.Conv2d(config.in_channels, w, 3, padding=1),
                                    nn.GroupNorm(g, w))
        cell = ResNetCell(w, g)
        if config.kind == "deq":
            self.equilibrium = DEQ(cell, prefix=prefix, comm=comm, options=solver_options,
                                   adjoint_options=adjoint_options)
        else:
            self.equilibrium = WeightTied(cell, config.depth)
        pooled = min(4, config.image_size)
        self.head = nn.Sequential(nn.GroupNorm(g, w), nn.AdaptiveAvgPool2d(pooled),
                                  nn.Flatten(), nn.Linear(w * pooled * pooled, config.n_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.equilibrium(self.inject(images)))

    @property
    def last_stats(self):
        """The DEQ's last forward/backward statistics (``None`` for the explicit model)."""
        return getattr(self.equilibrium, "last_stats", None)

    def destroy(self):
        if isinstance(self.equilibrium, DEQ):
            self.equilibrium.destroy()
