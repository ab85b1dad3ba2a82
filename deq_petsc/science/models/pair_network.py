"""The pair cell: a DEQ that reads the node-neighbour matrix as a graph network does.

The convolutional cells of :mod:`.graph_classifier` mix each entry ``(i, j)`` of the
image with its eight neighbours in the image, i.e. with the species that happen to
sit next to ``i`` and ``j`` once the nodes are sorted by atomic number: a metal and a
nonmetal can be neighbours in ``Z``. On the crystals that cell tops out at 0.827
test accuracy, while a one-pass network that maps every entry, with learned vectors
of its two elements, through one shared MLP and sums the entries into nodes reaches
0.845 (``benchmarks/bench_image_probe.py --pairs``; docs/data.md). This module is that
reading as an equilibrium:

    x_ij  = m_ij (W_in s(image_ij) + E_row(Z_i) + E_col(Z_j) [+ A sums])
    z*_ij = m_ij tanh(gamma D relu(P z*_ij + R mean_k z*_ik + C mean_k z*_kj + b) + x_ij)
    out   = MLP([sum_i g_i, max_i g_i]),  g_i = relu(G [sum_j z*_ij, z*_ii])

``m_ij`` is 1 where nodes ``i`` and ``j`` both exist (``Z > 0`` on the element
channel) and 0 on the padding, ``s`` standardises each channel over the training
split's existing entries, the means run over existing nodes. Every map is shared by
all entries (a 1x1 convolution) and the only coupling between entries is through
their rows' and columns' means, so relabelling the nodes permutes the state and
leaves the output unchanged (tested). Each fixed-point iteration is one round of
message passing between the pairs that share a node.

Contractive by construction, as :class:`~.graph_classifier.ContractiveCell`: the
pre-activation ``P z + R rowmean(z) + C colmean(z)`` is divided by its exact operator
norm on masked states (:meth:`PairCell.normalised_weights`: spectral norms of four
small matrices, no power iteration) and ``D`` by ``||D||``; relu and tanh are
1-Lipschitz and the mask only zeroes entries, so ``Lip(f) <= gamma``.

The state has ``width`` channels; the injection returns ``width + 1``: the last is the
mask, which the cell and nothing else reads (``state_shape``). The readout needs no
mask: padded entries of ``z*`` are exactly zero, so are their nodes' ``g_i`` (no bias
before the relu), and neither a sum nor a max over relu outputs sees them.
"""

from __future__ import annotations

import torch
from torch import nn

from .injection import Injection


def state_shape(x: torch.Tensor) -> tuple[int, ...]:
    """The pair cell's state for an injection ``x``: ``x`` less its mask channel."""
    return (x.shape[0], x.shape[1] - 1, *x.shape[2:])


class PairInjection(Injection):
    """``x = [m (W_in s(image) + E_row(Z_i) + E_col(Z_j) [+ A sums]), m]``.

    :class:`Injection` with a 1x1 convolution and, instead of its GroupNorm (which
    normalises each sample by its own entries, padding included), a fixed per-channel
    standardisation over the training split's existing entries (:meth:`standardise`):
    a crystal with two species and one with five then share one scale. The element
    channel is required: it tells the nodes from the padding."""

    def __init__(self, in_channels: int, width: int, sums: bool = False,
                 element_channel: int = -1, element_scale: float = 10.0):
        if element_channel < 0:
            raise ValueError("the pair cell needs the images' element channel (its nodes' Z) "
                             "to tell nodes from padding: train with --elements")
        super().__init__(in_channels, width, groups=1, sums=sums,
                         element_channel=element_channel, element_scale=element_scale,
                         kernel_size=1)
        self.norm = None
        self.register_buffer("entry_mean", torch.zeros(in_channels))
        self.register_buffer("entry_std", torch.ones(in_channels))

    def pair_mask(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, n, n]``: 1 where both nodes exist."""
        exists = (self.atomic_numbers(images) > 0).to(images.dtype)
        return (exists[:, :, None] * exists[:, None, :])[:, None]

    @torch.no_grad()
    def standardise(self, images: torch.Tensor) -> None:
        super().standardise(images)
        images = images.to(self.entry_mean.dtype)
        on = self.pair_mask(images)[:, 0].bool()                       # [M, n, n]
        entries = images.permute(0, 2, 3, 1)[on]                       # [pairs, C]
        if len(entries) > 1:
            self.entry_mean.copy_(entries.mean(0))
            self.entry_std.copy_(entries.std(0).clamp_min(1e-6))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.pair_mask(images)
        scaled = (images - self.entry_mean[:, None, None]) / self.entry_std[:, None, None]
        x = self.conv(scaled) + self.element_bias(images)
        if self.sums is not None:
            s = (self.graph_sums(images) - self.sum_mean) / self.sum_std
            x = x + self.sums(s)[:, :, None, None]
        return torch.cat([x * mask, mask], 1)


class PairCell(nn.Module):
    """``f(z, x) = m tanh(gamma D relu(P z + R rowmean(z) + C colmean(z) + b) + x)``,
    ``Lip(f) <= gamma`` (module docstring)."""

    def __init__(self, width: int, hidden: int, gamma: float = 0.9):
        super().__init__()
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        self.gamma = gamma
        self.entry = nn.Parameter(torch.empty(hidden, width))
        self.row = nn.Parameter(torch.empty(hidden, width))
        self.col = nn.Parameter(torch.empty(hidden, width))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Parameter(torch.empty(width, hidden))
        for w in (self.entry, self.row, self.col, self.out):
            nn.init.kaiming_uniform_(w, a=5 ** 0.5)        # nn.Linear's default

    def normalised_weights(self):
        """``(P, R, C, D)`` scaled so that ``Lip(f) <= gamma``; differentiable.

        Split a masked state into four parts, orthogonal whatever their channels: its
        global mean ``g``, its row means less ``g`` (``r``), its column means less ``g``
        (``c``) and the rest ``a``. The pre-activation is then
        ``P a + (P + R) r + (P + C) c + (P + R + C) g``, four fields that are again
        orthogonal, so its norm is at most ``max(||P||, ||P + R||, ||P + C||,
        ||P + R + C||) ||z||``: the exact bound of a linear map, tighter than the sum of
        the three norms (which on random weights halves the room the messages get)."""
        P, R, C, D = self.entry, self.row, self.col, self.out
        norm = lambda w: torch.linalg.matrix_norm(w, ord=2)    # noqa: E731
        inner = torch.stack([norm(P), norm(P + R), norm(P + C), norm(P + R + C)]).amax()
        inner = inner.clamp_min(1e-12)
        return P / inner, R / inner, C / inner, D / norm(D).clamp_min(1e-12)

    def messages(self, z: torch.Tensor, mask: torch.Tensor, weights=None) -> torch.Tensor:
        """``P z + R rowmean(z) + C colmean(z)`` with the normalised weights (``weights``:
        those of :meth:`normalised_weights`, if already computed) on the existing entries
        (zero on the padding): the cell's linear part, of norm 1."""
        z = z * mask                          # f reads nothing off the padding
        P, R, C, _ = weights or self.normalised_weights()
        rows = mask.sum(3).clamp_min(1)                        # existing entries per row
        cols = mask.sum(2).clamp_min(1)
        pre = (torch.einsum("hw,bwij->bhij", P, z)
               + torch.einsum("hw,bwi->bhi", R, z.sum(3) / rows)[..., None]
               + torch.einsum("hw,bwj->bhj", C, z.sum(2) / cols)[:, :, None, :])
        return pre * mask

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mask, u = x[:, -1:], x[:, :-1]
        weights = self.normalised_weights()
        D = weights[3]
        y = torch.relu(self.messages(z, mask, weights) + self.bias[:, None, None]) * mask
        return mask * torch.tanh(self.gamma * torch.einsum("wh,bhij->bwij", D, y) + u)


class NodeReadout(nn.Module):
    """``MLP([sum_i g_i, max_i g_i])`` with ``g_i = relu(G [sum_j z_ij, z_ii])``: node
    states from their rows, pooled by sum and max (padding-blind, module docstring)."""

    def __init__(self, width: int, hidden: int, n_classes: int):
        super().__init__()
        self.node = nn.Linear(2 * width, hidden, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        nodes = torch.cat([z.sum(3), z.diagonal(dim1=-2, dim2=-1)], 1)   # [B, 2w, n]
        g = torch.relu(self.node(nodes.transpose(1, 2)))                  # [B, n, hidden]
        return self.mlp(torch.cat([g.sum(1), g.amax(1)], 1))
