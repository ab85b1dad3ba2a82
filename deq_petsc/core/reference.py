"""Pure-torch reference solvers, independent of PETSc, to validate and benchmark it.

Not used by the solvers themselves: tests compare PETSc's ``anderson`` against
:func:`torch_anderson`, and ``benchmarks/bench_forward.py`` times both.
"""

from __future__ import annotations

import torch


def torch_anderson(f, z0, m=5, beta=1.0, rtol=1e-6, max_it=1000, per_sample=False):
    """Type-II Anderson acceleration (Walker & Ni 2011) in plain torch.

    Residual ``r = f(z) - z``; history of the last ``m`` differences of
    iterates and residuals; least-squares coefficients from the m x m normal
    equations, either for the whole batch as one vector or per sample.
    Stops on the global 2-norm ``||r|| <= rtol ||r0||`` (SNES's rule).
    Returns (z, iterations, f evaluations, residual history).
    """
    batch = z0.shape[0]
    flat = (lambda t: t.reshape(batch, -1)) if per_sample else (lambda t: t.reshape(1, -1))
    z = z0.clone()
    fz = f(z)
    r = fz - z
    evals = 1
    history = [r.norm().item()]
    dX, dR = [], []
    z_prev = r_prev = None
    its = 0
    while history[-1] > rtol * history[0] and its < max_it:
        if z_prev is not None:
            dX.append(z - z_prev)
            dR.append(r - r_prev)
            if len(dX) > m:
                dX.pop(0)
                dR.pop(0)
        z_prev, r_prev = z, r
        step = z + beta * r
        if dR:
            R = torch.stack([flat(d) for d in dR], dim=1)          # (B', k, n)
            gram = R @ R.transpose(1, 2)                            # (B', k, k)
            rhs = R @ flat(r).unsqueeze(2)                          # (B', k, 1)
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            scale = gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-300)
            gamma = torch.linalg.solve(gram + 1e-14 * scale[:, None, None] * eye, rhs)
            D = torch.stack([flat(dx + beta * dr) for dx, dr in zip(dX, dR)], dim=1)
            step = step - (D.transpose(1, 2) @ gamma).squeeze(2).reshape(z.shape)
        z = step
        fz = f(z)
        r = fz - z
        evals += 1
        its += 1
        history.append(r.norm().item())
    return z, its, evals, history
