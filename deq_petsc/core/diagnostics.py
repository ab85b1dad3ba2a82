"""Diagnosing a DEQ that does not converge: how contractive is ``f`` at ``z*``?

Forward iteration converges locally when the spectral radius of ``J_f(z*)``
is below 1, and Anderson/Newton stay fast when it is not too close to 1; the
adjoint fixed point ``u = J_f^T u + g`` has the same rate.
"""

from __future__ import annotations

import math

import torch

from .problem import FixedPointProblem


@torch.no_grad()
def spectral_radius(problem: FixedPointProblem, z: torch.Tensor, iters: int = 50,
                    seed: int = 0) -> float:
    """Estimate ``rho(J_f(z))`` by power iteration with JVPs.

    Uses the growth rate of ``||J^k v||`` over the second half of the
    iterations (Gelfand's formula), which also settles when the dominant
    eigenvalues are a complex pair, where the plain Rayleigh-type ratio
    oscillates. Costs ``iters`` JVPs.
    """
    lin = problem.linearize(z)
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(z.shape, generator=g, dtype=z.dtype).to(z.device)
    v /= v.norm()
    log_growth = []
    for _ in range(iters):
        w = lin.jvp(v)
        norm = float(w.norm())
        if norm == 0.0 or not math.isfinite(norm):
            return 0.0 if norm == 0.0 else math.inf
        log_growth.append(math.log(norm))
        v = w / norm
    tail = log_growth[len(log_growth) // 2:]
    return math.exp(sum(tail) / len(tail))


def sample_radii(fz: torch.Tensor, z: torch.Tensor, steps: int = 4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample estimates of ``rho(J_f)`` at ``z``, differentiable: ``||J_f u_i||``.

    ``fz = f(z)`` with ``z`` a leaf that requires grad (and ``fz`` a graph to whatever
    should receive gradients). Power iteration per sample from the residual
    ``f(z) - z``: where ``z`` is a solve's last iterate, its error is what ``J_f``
    damps slowest, so the residual already points along the dominant eigenvectors
    and ``steps`` products refine it; a ``1e-3`` random part (from ``generator``)
    covers an exactly converged solve. From random vectors, four steps read 0.82 on
    average where the radius was 0.955 (docs/solvers.md). JVPs are the transposes
    of VJPs through one double-backward graph (no forward-mode AD needed): one
    graph and ``steps + 1`` backward passes; the last product keeps its graph.
    """
    noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    u = unit_per_sample(unit_per_sample((fz - z).detach()) + 1e-3 * unit_per_sample(noise))
    dummy = torch.zeros_like(fz, requires_grad=True)
    (vjp_of_dummy,) = torch.autograd.grad(fz, z, dummy, create_graph=True)
    for _ in range(steps):
        (w,) = torch.autograd.grad(vjp_of_dummy, dummy, u, retain_graph=True)
        u = unit_per_sample(w.detach())
    (w,) = torch.autograd.grad(vjp_of_dummy, dummy, u, create_graph=True)
    return w.flatten(1).norm(dim=1)


def unit_per_sample(u: torch.Tensor) -> torch.Tensor:
    """``u`` with each sample (first index) scaled to norm 1 (a zero sample stays 0)."""
    return u / u.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (u.dim() - 1)))


class SavedTensorBytes:
    """Count the bytes autograd saves for backward inside a ``with`` block.

    The memory a training step keeps alive until ``backward()``: constant for a
    DEQ layer, proportional to the iterations for unrolled autograd. Exact
    (saved-tensor hooks), unlike process RSS.
    """

    def __enter__(self):
        self.total = 0

        def pack(t):
            self.total += t.numel() * t.element_size()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
