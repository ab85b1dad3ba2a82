"""Classifiers of graph images: a DEQ and its explicit, weight-tied counterpart.

    images --inject--> x --equilibrium z* = f(z*, x)--> z* --head--> logits

* injection: conv3x3 (in_channels -> width) + GroupNorm; with ``sums`` (the
  ``train`` command's default) plus a per-channel bias linear in the image's graph
  sums (:class:`Injection`);
* cell, by default :class:`ContractiveCell`,
  ``f(z, x) = tanh(gamma W2 relu(W1 z) + x)`` with ``Lip(f) <= gamma = 0.9``
  by construction; or (``cell="resnet"``) the implicit-layers tutorial's cell
  ``f(z, x) = GN(relu(z + GN(x + conv2(GN(relu(conv1(z)))))))``, which starts
  contractive (spectral radius of ``J_f`` 0.75 at initialisation here) but
  which training drove to 0.99-1.19 on the polarity task within 2-4 epochs,
  with or without a Jacobian penalty: its outer GroupNorm is scale-invariant,
  so ``J_f`` stays close to a projection;
* head: GroupNorm, 4x4 average pooling, linear.

``cell="pair"`` replaces all three by :mod:`.pair_network`'s: an injection, cell and
readout that map every entry of the node-neighbour matrix with its two elements through
shared weights and couple entries only through their rows and columns (relabelling the
nodes leaves the output unchanged), contractive by construction as the default cell.

``kind="deq"`` solves the equilibrium with PETSc (:class:`~deq_petsc.layer.deq.DEQ`,
options under ``prefix``); ``kind="explicit"`` applies the same cell ``depth``
times from ``z = 0`` with the same weights, differentiated by autograd.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from deq_petsc.layer.deq import DEQ
from deq_petsc.core.problem import FixedPointProblem
from .injection import Injection
from .pair_network import NodeReadout, PairCell, PairInjection
from .pair_network import state_shape as pair_state_shape


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


class ContractiveCell(nn.Module):
    """``f(z, x) = tanh(gamma * W2 relu(W1 z) + x)`` with ``Lip(f) <= gamma < 1`` by construction.

    Each convolution is divided by its operator norm on ``image_size`` images
    (zero padding), estimated by power iteration with one image-sized vector per
    convolution; tanh and relu are 1-Lipschitz. So the equilibrium exists, is
    unique, Picard converges, and ``I - J_f`` stays invertible however training
    moves the weights -- unlike cells that only start out contractive. The
    power-iteration vectors advance once per training step
    (:meth:`step_power_iteration`), never inside a solve, so ``f`` is one fixed
    function for the whole forward and backward solve; the norm itself,
    ``||conv(v)||`` at the current vector, is differentiable in the weights.
    """

    def __init__(self, width: int, image_size: int, gamma: float = 0.9, kernel_size: int = 3):
        super().__init__()
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        self.gamma = gamma
        self.pad = kernel_size // 2
        self.conv1 = nn.Conv2d(width, width, kernel_size, padding=self.pad, bias=False)
        self.conv2 = nn.Conv2d(width, width, kernel_size, padding=self.pad, bias=False)
        for i in (1, 2):
            v = torch.randn(1, width, image_size, image_size,
                            generator=torch.Generator().manual_seed(i))
            self.register_buffer(f"v{i}", v / v.norm())
        for _ in range(100):           # converge once; then one step per training step
            self.step_power_iteration()

    @torch.no_grad()
    def step_power_iteration(self):
        for conv, name in ((self.conv1, "v1"), (self.conv2, "v2")):
            v = getattr(self, name)
            w = nn.functional.conv_transpose2d(
                nn.functional.conv2d(v, conv.weight, padding=self.pad), conv.weight,
                padding=self.pad)
            v.copy_(w / w.norm().clamp_min(1e-12))

    def _normalized(self, conv, v):
        sigma = nn.functional.conv2d(v, conv.weight, padding=self.pad).norm()
        return conv.weight / sigma.clamp_min(1e-12)

    def forward(self, z, x):
        w1 = self._normalized(self.conv1, self.v1)
        w2 = self._normalized(self.conv2, self.v2)
        y = torch.relu(nn.functional.conv2d(z, w1, padding=self.pad))
        return torch.tanh(self.gamma * nn.functional.conv2d(y, w2, padding=self.pad) + x)


class WeightTied(nn.Module):
    """The cell applied ``depth`` times from zero, one set of weights (the explicit baseline)."""

    def __init__(self, cell: nn.Module, depth: int, z_shape=None):
        super().__init__()
        self.cell = cell
        self.depth = depth
        self.z_shape = z_shape           # as the DEQ's: a function of x (None: x's shape)

    def state_shape(self, x) -> tuple[int, ...] | None:
        """As :meth:`DEQ.state_shape`: the state's shape for ``x`` (``None``: ``x``'s)."""
        return None if self.z_shape is None else tuple(self.z_shape(x))

    def fixed_point_problem(self, x) -> FixedPointProblem:
        """As :meth:`DEQ.fixed_point_problem`: the cell's problem for ``x``."""
        return FixedPointProblem(self.cell, x.detach(), z_shape=self.state_shape(x),
                                 independent_samples=True)

    def forward(self, x):
        z = x.new_zeros(self.state_shape(x) or x.shape)
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
    cell: str = "contractive"      # "contractive" (Lip <= gamma), "resnet" (tutorial cell)
                                   # or "pair" (pair_network: its injection and readout too)
    gamma: float = 0.9             # contractive and pair cells' Lipschitz bound
    sums: bool = False             # the image's graph sums in the injection (Injection)
    element_channel: int = -1      # learned element embeddings from this channel (-1: none)
    element_scale: float = 10.0    # it holds Z / element_scale (data.graph_image.ELEMENT_SCALE)

    def as_dict(self) -> dict:
        return asdict(self)


class EquilibriumModel(Protocol):
    """What the trainers, the TAO curvature products and the demo need of a model:
    ``head(equilibrium(inject(images)))``, where ``equilibrium`` is a :class:`DEQ` (or an
    explicit stack) with a ``cell``, and the parameter-name prefixes of the three parts
    (Gauss-Newton products differentiate the parts separately)."""

    PARAMETER_PREFIXES: ClassVar[dict]
    inject: nn.Module
    equilibrium: nn.Module
    head: nn.Module


class EquilibriumModule(nn.Module):
    """What every :class:`EquilibriumModel` does alike: ``head(equilibrium(inject(.)))``,
    the cell's norm estimates advanced once per training step (between solves, never
    inside one, so ``f`` is one function for a forward and its backward solve), the DEQ's
    statistics and its PETSc objects."""

    PARAMETER_PREFIXES = {"inject": "inject.", "cell": "equilibrium.cell.", "head": "head."}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        cell = getattr(self.equilibrium, "cell", None)
        if self.training and torch.is_grad_enabled() and hasattr(cell, "step_power_iteration"):
            cell.step_power_iteration()
        return self.head(self.equilibrium(self.inject(inputs)))

    @property
    def last_stats(self):
        """The DEQ's last forward/backward statistics (``None`` for an explicit model)."""
        return getattr(self.equilibrium, "last_stats", None)

    def destroy(self):
        if isinstance(self.equilibrium, DEQ):
            self.equilibrium.destroy()


class GraphImageClassifier(EquilibriumModule):
    """The graph-image scientist: an :class:`EquilibriumModel`."""

    def __init__(self, config: ClassifierConfig, prefix: str = "", comm=None,
                 solver_options: dict | None = None, adjoint_options: dict | None = None):
        super().__init__()
        if config.kind not in ("deq", "explicit"):
            raise ValueError(f"kind must be 'deq' or 'explicit', got {config.kind!r}")
        self.config = config
        w, g = config.width, config.groups
        if config.cell not in ("contractive", "resnet", "pair"):
            raise ValueError(f"cell must be 'contractive', 'resnet' or 'pair', "
                             f"got {config.cell!r}")
        z_shape = None
        if config.cell == "pair":
            self.inject = PairInjection(config.in_channels, w, config.sums,
                                        config.element_channel, config.element_scale)
            cell, z_shape = PairCell(w, 2 * w, config.gamma), pair_state_shape
        else:
            self.inject = Injection(config.in_channels, w, g, config.sums,
                                    config.element_channel, config.element_scale)
            cell = (ContractiveCell(w, config.image_size, config.gamma)
                    if config.cell == "contractive" else ResNetCell(w, g))
        if config.kind == "deq":
            self.equilibrium = DEQ(cell, prefix=prefix, comm=comm, options=solver_options,
                                   adjoint_options=adjoint_options, z_shape=z_shape)
        else:
            self.equilibrium = WeightTied(cell, config.depth, z_shape)
        if config.cell == "pair":
            self.head = NodeReadout(w, 4 * w, config.n_classes)
        else:
            pooled = min(4, config.image_size)
            self.head = nn.Sequential(nn.GroupNorm(g, w), nn.AdaptiveAvgPool2d(pooled),
                                      nn.Flatten(),
                                      nn.Linear(w * pooled * pooled, config.n_classes))


