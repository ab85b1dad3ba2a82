"""The injection ``x = inject(images)``: what the equilibrium of a graph-image classifier
is driven by (:class:`Injection`; the pair cell's own is ``pair_network.PairInjection``)."""

from __future__ import annotations

import torch
from torch import nn


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
                 element_channel: int = -1, element_scale: float = 10.0, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, kernel_size, padding=kernel_size // 2)
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
