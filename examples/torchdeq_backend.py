"""PETSc solvers inside a TorchDEQ model: register once, pick with f_solver= / b_solver=.

A TorchDEQ DEQ around a dense tanh cell (batch 64, 512 units, Lipschitz 0.95,
float64) takes one training step (forward fixed point + implicit backward fixed
point, ift=True) and one inference solve with TorchDEQ's own ``anderson`` and
``fixed_point_iter`` and with PETSc (``-petsc_snes_type`` picks the method; the
default is Anderson, m = 5), all to TorchDEQ's rule ``max_b ||f(z_b) - z_b|| <
tol`` (stop_mode abs). Prints forward/backward iterations and times, best of
``--repeat``, and the gradient's distance from the first solver's.

    python examples/torchdeq_backend.py [--repeat 3] [-petsc_snes_type newtonls -petsc_ksp_type gmres]
"""

import argparse
import sys
import time

import deq_petsc

deq_petsc.init([sys.argv[0]] + [a for a in sys.argv[1:] if a.startswith("-petsc")
                                 or not a.startswith("--")])

import torch  # noqa: E402
from torchdeq import get_deq  # noqa: E402

from deq_petsc.layer import torchdeq as petsc_torchdeq  # noqa: E402
from deq_petsc.science.models import TanhCell  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--units", type=int, default=512)
    args, _ = p.parse_known_args()
    torch.set_num_threads(2)
    petsc = petsc_torchdeq.register("petsc")
    cell = TanhCell(args.units, 64, contraction=0.95, seed=0)
    x = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randn(64, args.units, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(2))
    z0 = torch.zeros(64, args.units, dtype=torch.float64)
    results = {}
    for _ in range(args.repeat):
        for name in ("anderson", "fixed_point_iter", "petsc"):
            deq = get_deq(f_solver=name, b_solver=name, ift=True, f_max_iter=500,
                          b_max_iter=500, f_tol=args.tol, b_tol=args.tol)
            cell.zero_grad()
            start = time.perf_counter()
            z_out, info = deq(lambda z: cell(z, x), z0)
            forward = time.perf_counter() - start
            loss = ((z_out[-1] - target) ** 2).mean()
            start = time.perf_counter()
            loss.backward()
            backward = time.perf_counter() - start
            b_its = petsc.last_stats.iterations if name == "petsc" else None
            deq.eval()
            start = time.perf_counter()
            with torch.no_grad():
                deq(lambda z: cell(z, x), z0)
            infer = time.perf_counter() - start
            grad = torch.cat([q.grad.reshape(-1) for q in cell.parameters()])
            row = dict(f_its=int(info["nstep"].max()), forward=forward, backward=backward,
                       infer=infer, grad=grad, b_its=b_its)
            old = results.get(name)
            if old is None or forward + backward < old["forward"] + old["backward"]:
                results[name] = row
    ref = results["anderson"]["grad"]
    print(f"TorchDEQ model, tanh cell {args.units} units x batch 64, Lipschitz 0.95, float64, "
          f"tol {args.tol:g} (abs), best of {args.repeat}; PETSc method: "
          f"{petsc._get_solver().snes.getType()}")
    print(f"{'solver':18s} {'fwd its':>7s} {'train fwd s':>11s} {'train bwd s':>11s} "
          f"{'infer s':>8s} {'grad vs anderson':>16s}")
    for name, r in results.items():
        err = float((r["grad"] - ref).norm() / ref.norm())
        print(f"{name:18s} {r['f_its']:7d} {r['forward']:11.4f} {r['backward']:11.4f} "
              f"{r['infer']:8.4f} {err:16.2e}")
    petsc.destroy()


if __name__ == "__main__":
    main()
