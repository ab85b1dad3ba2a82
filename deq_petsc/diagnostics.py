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
