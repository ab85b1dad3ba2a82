"""Small DEQ cells with a known contraction factor, for demos, tests and benchmarks.

``tanh`` is 1-Lipschitz, so ``z -> tanh(W z + U x + b)`` is a contraction with
factor ``||W||_2`` in the 2-norm. Scaling ``W`` to a chosen spectral norm
``gamma < 1`` gives a cell whose fixed point exists, is unique, and whose
Picard iteration converges like ``gamma^k`` -- slowly when ``gamma`` is near 1,
which is where Anderson acceleration pays off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _power_iteration(apply, apply_t, shape, iters, generator, dtype, device):
    v = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    v /= v.norm()
    sigma = torch.zeros((), dtype=dtype, device=device)
    for _ in range(iters):
        w = apply_t(apply(v))
        sigma = w.norm().sqrt()
        v = w / w.norm()
    return sigma


@torch.no_grad()
def conv_operator_norm(weight: torch.Tensor, image_size: int, padding: int,
                       iters: int = 100, seed: int = 0) -> float:
    """Spectral norm of the linear map ``z -> conv2d(z, weight)`` on ``image_size`` images."""
    channels = weight.shape[1]
    g = torch.Generator().manual_seed(seed)
    sigma = _power_iteration(
        lambda v: F.conv2d(v, weight, padding=padding),
        lambda w: F.conv_transpose2d(w, weight, padding=padding),
        (1, channels, image_size, image_size), iters, g, weight.dtype, weight.device)
    return float(sigma)


class TanhCell(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``||W||_2 = contraction``."""

    def __init__(self, n: int, n_in: int | None = None, contraction: float = 0.9,
                 seed: int = 0, dtype=torch.float64):
        super().__init__()
        n_in = n if n_in is None else n_in
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=dtype)
        W *= contraction / torch.linalg.matrix_norm(W, ord=2)
        self.W = nn.Parameter(W)
        self.U = nn.Parameter(torch.randn(n, n_in, generator=g, dtype=dtype) / n_in ** 0.5)
        self.b = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=dtype))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


class ConvTanhCell(nn.Module):
    """``f(z, x) = tanh(conv(z) + x)`` on ``(batch, channels, size, size)`` states.

    The convolution is scaled so that its operator norm on ``image_size``
    images equals ``contraction`` (power iteration at construction), so the
    cell is a contraction with that factor. A random kernel's spectral radius
    is well below its norm, so Picard converges faster than the factor
    suggests; ``symmetric=True`` makes the two equal.
    """

    def __init__(self, channels: int = 16, image_size: int = 32, kernel_size: int = 3,
                 contraction: float = 0.9, seed: int = 0, dtype=torch.float64,
                 symmetric: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.padding = kernel_size // 2
        weight = torch.randn(channels, channels, kernel_size, kernel_size, generator=g,
                             dtype=dtype)
        if symmetric:
            # Self-adjoint convolution (its transpose is the channel-swapped, flipped
            # kernel): spectral radius = operator norm, so Picard's rate is the full
            # `contraction`, the hard case for forward iteration.
            weight = weight + weight.transpose(0, 1).flip(2, 3)
        weight *= contraction / conv_operator_norm(weight, image_size, self.padding, seed=seed)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(0.1 * torch.randn(channels, generator=g, dtype=dtype))

    def forward(self, z, x):
        return torch.tanh(F.conv2d(z, self.weight, self.bias, padding=self.padding) + x)
