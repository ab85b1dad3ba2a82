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

``kind="deq"`` solves the equilibrium with PETSc (:class:`~deq_petsc.layer.DEQ`,
options under ``prefix``); ``kind="explicit"`` applies the same cell ``depth``
times from ``z = 0`` with the same weights, differentiated by autograd.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from ..layer import DEQ


class Injection(nn.Module):
    """``x = GN(conv3x3(image)) [+ A s]``: the input of the equilibrium.

    GroupNorm normalises every sample on its own, so a quantity carried by the size of
    the image's entries (the molecule's total charge, the dipole channel whose diagonal
    sums to the dipole of the partial charges, the number of atoms) reaches the
    equilibrium only as a ratio to the sample's other entries. With ``sums``, the
    per-channel sums of the image's diagonal (atoms) and off-diagonal (pairs)
    (2 x in_channels numbers, the readout of graph networks), standardised by their
    mean and standard deviation over the training split (:meth:`standardise`: from a
    few to hundreds, they would otherwise swamp the bias), enter ``x`` as a
    per-channel bias ``A s`` that is constant over the image: graph-level quantities,
    through the equilibrium rather than around it.

    With ``element_channel`` (the index of the channel that holds ``Z / element_scale``
    on the diagonal: the data layer's convention, passed in by whoever builds the
    model), each node's element gets a learned vector, as a graph network's atom
    embedding: ``x[:, :, i, j] += E_row(Z_i) + E_col(Z_j)`` wherever nodes ``i`` and
    ``j`` exist, so every entry of the node-neighbour matrix knows which two elements
    it joins. A single number ``Z / 10`` asks the network to learn a jagged function of
    the atomic number (a metal and a nonmetal can be neighbours in ``Z``); a network on
    the flattened crystal images with each node's element one-hot scored 0.826
    on the test split against 0.776 without it (docs/data.md). Zero-initialised: the
    model starts as without them."""

    #: the largest atomic number an embedding has a row for (larger ones share it)
    MAX_Z = 118

    def __init__(self, in_channels: int, width: int, groups: int, sums: bool = False,
                 element_channel: int = -1, element_scale: float = 10.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(groups, width)
        self.sums = None
        if sums:     # zero weights, and the random stream left as it was: the rest of the
            with torch.random.fork_rng(devices=[]):     # model starts as without sums
                self.sums = nn.Linear(2 * in_channels, width, bias=False)
            nn.init.zeros_(self.sums.weight)
            self.register_buffer("sum_mean", torch.zeros(2 * in_channels))
            self.register_buffer("sum_std", torch.ones(2 * in_channels))
        self.element_channel, self.element_scale = element_channel, element_scale
        self.element_rows = self.element_cols = None
        if element_channel >= 0:
            with torch.random.fork_rng(devices=[]):
                self.element_rows = nn.Embedding(self.MAX_Z + 1, width, padding_idx=0)
                self.element_cols = nn.Embedding(self.MAX_Z + 1, width, padding_idx=0)
            nn.init.zeros_(self.element_rows.weight)
            nn.init.zeros_(self.element_cols.weight)

    def atomic_numbers(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` int64: each node's Z, read off the element channel (0: no node)."""
        z = images[:, self.element_channel].diagonal(dim1=-2, dim2=-1) * self.element_scale
        return z.round().long().clamp(0, self.MAX_Z)

    def element_bias(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, width, n, n]``: ``E_row(Z_i) + E_col(Z_j)`` where both nodes exist."""
        z = self.atomic_numbers(images)
        rows = self.element_rows(z).transpose(1, 2)              # [B, w, n]
        cols = self.element_cols(z).transpose(1, 2)
        exists = (z > 0).to(rows.dtype)
        pairs = (exists[:, :, None] * exists[:, None, :])[:, None]
        return (rows[:, :, :, None] + cols[:, :, None, :]) * pairs

    @staticmethod
    def graph_sums(images: torch.Tensor) -> torch.Tensor:
        """``[B, 2C]``: per channel, the sum of the diagonal, then of the rest."""
        diagonal = images.diagonal(dim1=-2, dim2=-1).sum(-1)
        return torch.cat([diagonal, images.sum((-2, -1)) - diagonal], 1)

    @torch.no_grad()
    def standardise(self, images: torch.Tensor) -> None:
        """Set the sums' shift and scale from ``images`` (the training split)."""
        if self.sums is None:
            return
        s = self.graph_sums(images.to(self.sum_mean.dtype))
        self.sum_mean.copy_(s.mean(0))
        self.sum_std.copy_(s.std(0).clamp_min(1e-6))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before this class held nn.Sequential(conv, norm): "0.", "1."
        for old, new in (("0.", "conv."), ("1.", "norm.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(images))
        if self.element_rows is not None:
            x = x + self.element_bias(images)
        if self.sums is None:
            return x
        s = (self.graph_sums(images) - self.sum_mean) / self.sum_std
        return x + self.sums(s)[:, :, None, None]


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
    cell: str = "contractive"      # "contractive" (Lip <= gamma) or "resnet" (tutorial cell)
    gamma: float = 0.9             # contractive cell's Lipschitz bound
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


class GraphImageClassifier(nn.Module):
    """The graph-image scientist: an :class:`EquilibriumModel`."""

    PARAMETER_PREFIXES = {"inject": "inject.", "cell": "equilibrium.cell.", "head": "head."}

    def __init__(self, config: ClassifierConfig, prefix: str = "", comm=None,
                 solver_options: dict | None = None, adjoint_options: dict | None = None):
        super().__init__()
        if config.kind not in ("deq", "explicit"):
            raise ValueError(f"kind must be 'deq' or 'explicit', got {config.kind!r}")
        self.config = config
        w, g = config.width, config.groups
        self.inject = Injection(config.in_channels, w, g, config.sums, config.element_channel,
                                config.element_scale)
        if config.cell == "contractive":
            cell = ContractiveCell(w, config.image_size, config.gamma)
        elif config.cell == "resnet":
            cell = ResNetCell(w, g)
        else:
            raise ValueError(f"cell must be 'contractive' or 'resnet', got {config.cell!r}")
        if config.kind == "deq":
            self.equilibrium = DEQ(cell, prefix=prefix, comm=comm, options=solver_options,
                                   adjoint_options=adjoint_options)
        else:
            self.equilibrium = WeightTied(cell, config.depth)
        pooled = min(4, config.image_size)
        self.head = nn.Sequential(nn.GroupNorm(g, w), nn.AdaptiveAvgPool2d(pooled),
                                  nn.Flatten(), nn.Linear(w * pooled * pooled, config.n_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cell = self.equilibrium.cell
        if self.training and torch.is_grad_enabled() and hasattr(cell, "step_power_iteration"):
            cell.step_power_iteration()          # between solves, never inside one
        return self.head(self.equilibrium(self.inject(images)))

    @property
    def last_stats(self):
        """The DEQ's last forward/backward statistics (``None`` for the explicit model)."""
        return getattr(self.equilibrium, "last_stats", None)

    def destroy(self):
        if isinstance(self.equilibrium, DEQ):
            self.equilibrium.destroy()
