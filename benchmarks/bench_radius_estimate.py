"""How well does a few-step estimate read the spectral radius the penalty acts on?

Per sample of a batch of test images through a trained model, at the iterate a
training-tolerance forward solve leaves (Picard, ``--its`` steps from 0, the demo's
rtol-1e-2 regime): power iteration from random vectors with VJPs (the spectral
penalty before commit c32bbcf), from the solve's last residual
(``diagnostics.sample_radii``, the penalty's estimate since), and the truth, the growth rate of 60 JVP
steps over their second half (``diagnostics.spectral_radius``'s rule per sample).
Prints mean, max and the share above ``--target`` for each.

Run by hand:
    .venv/bin/python benchmarks/bench_radius_estimate.py runs/demo/picard/checkpoint.pt --seed 0
"""

from __future__ import annotations

import argparse
import sys

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402

from deq_petsc.science.data import load_task  # noqa: E402
from deq_petsc.core.diagnostics import sample_radii, unit_per_sample as unit  # noqa: E402
from deq_petsc.science.train import load_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--task", default="polarity")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="the split's seed (the demo's --seed)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--its", type=int, default=24, help="Picard steps before the estimates")
    p.add_argument("--target", type=float, default=0.95)
    args = p.parse_args()
    data = load_task(args.task, limit=args.limit or None, seed=args.seed, progress=False)
    images = data.images[data.indices("test")][:args.batch]
    model, _ = load_model(args.checkpoint)
    cell = model.equilibrium.cell
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        x = model.inject(images.to(dtype))
        z = x.new_zeros(model.equilibrium.state_shape(x) or x.shape)
        for _ in range(args.its):
            z = cell(z, x)
    g = torch.Generator().manual_seed(1)

    def jvp(u):
        return torch.func.jvp(lambda zz: cell(zz, x), (z,), (u,))[1]

    def vjp_from_random(steps):
        zl = z.detach().requires_grad_(True)
        fz = cell(zl, x)
        u = unit(torch.randn(z.shape, generator=g, dtype=z.dtype))
        for _ in range(steps):
            (w,) = torch.autograd.grad(fz, zl, u, retain_graph=True)
            u = unit(w)
        (w,) = torch.autograd.grad(fz, zl, u)
        return w.flatten(1).norm(dim=1)

    def from_residual(steps):
        zl = z.detach().requires_grad_(True)
        return sample_radii(cell(zl, x), zl, steps, generator=g).detach()

    @torch.no_grad()
    def truth(iters=60):
        v, logs = unit(torch.randn(z.shape, generator=g, dtype=z.dtype)), []
        for _ in range(iters):
            w = jvp(v)
            logs.append(w.flatten(1).norm(dim=1).log())
            v = unit(w)
        return torch.stack(logs[iters // 2:]).mean(0).exp()

    rows = [(f"{s} VJP steps from random vectors", vjp_from_random(s)) for s in (4, 10, 30)]
    rows += [(f"{s} JVP steps from the solve's residual", from_residual(s)) for s in (0, 4)]
    rows.append(("truth: 60 JVP steps, growth rate", truth()))
    print(f"{len(images)} test samples, {args.its} Picard steps from 0, {args.checkpoint}")
    print(f"| estimate of rho_i | mean | max | share above {args.target} |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r.mean():.3f} | {r.max():.3f} | {(r > args.target).float().mean():.0%} |")


if __name__ == "__main__":
    main()
