"""Backward-pass benchmark: implicit gradients by PETSc vs unrolled autograd.

On the forward benchmark's conv DEQ cell, after one Anderson forward solve:

* ``ksp``      adjoint (I - J^T) u = g by PETSc GMRES (the exact implicit gradient)
* ``snes``     adjoint fixed point u = J^T u + g by PETSc Anderson
* ``phantom``  5 unrolled adjoint steps (phantom gradient)
* ``jfb``      Jacobian-free backprop, u = g
* ``unrolled`` autograd through as many Picard steps as Anderson took iterations

Times are measured side by side in one process (best of ``--repeat``
interleaved runs). Memory is what autograd saves for backward (saved-tensor
hooks, exact), and the peak resident memory of one forward+backward in a fresh
subprocess per method, minus that of a no-grad forward (``--rss``).
Gradient error is relative to a tight GMRES adjoint (rtol 1e-12).

Run by hand:  .venv/bin/python benchmarks/bench_backward.py [--rss]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from common import add_cell_arguments  # noqa: E402
from deq_petsc import DEQ  # noqa: E402
from deq_petsc.core.diagnostics import SavedTensorBytes  # noqa: E402
from deq_petsc.science.models import ConvTanhCell  # noqa: E402

METHODS = {
    "ksp": {"adjoint_deq_method": "ksp"},
    "snes": {"adjoint_deq_method": "snes", "adjoint_snes_type": "anderson",
             "adjoint_snes_anderson_m": 5, "adjoint_snes_rtol": 1e-8, "adjoint_snes_atol": 0,
             "adjoint_snes_stol": 0, "adjoint_snes_max_it": 500},
    "phantom": {"adjoint_deq_method": "phantom", "adjoint_deq_phantom_steps": 5},
    "jfb": {"adjoint_deq_method": "jfb"},
}
FORWARD = {"snes_type": "anderson", "snes_anderson_m": 5, "snes_rtol": 1e-6, "snes_atol": 0,
           "snes_stol": 0, "snes_max_it": 2000}


def build(args):
    cell = ConvTanhCell(args.channels, args.size, contraction=args.contraction, seed=0,
                        symmetric=True)
    x = 0.1 * torch.randn(args.batch, args.channels, args.size, args.size, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))
    target = torch.randn_like(x, memory_format=torch.contiguous_format)
    return cell, x, target


def make_layer(cell, method):
    opts = PETSc.Options()
    for k, v in METHODS[method].items():
        opts.setValue(k, v)
    layer = DEQ(cell, options=FORWARD, adjoint_options={"ksp_rtol": 1e-8})
    return layer, list(METHODS[method])


def clear(names):
    opts = PETSc.Options()
    for k in names:
        opts.delValue(k)


def implicit_run(layer, cell, x, target):
    with SavedTensorBytes() as saved:
        t0 = time.perf_counter()
        loss = ((layer(x) - target) ** 2).mean()
        t1 = time.perf_counter()
    grads = torch.autograd.grad(loss, list(cell.parameters()))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, saved.total, grads


def unrolled_run(cell, x, target, steps):
    with SavedTensorBytes() as saved:
        t0 = time.perf_counter()
        z = torch.zeros_like(x)
        for _ in range(steps):
            z = cell(z, x)
        loss = ((z - target) ** 2).mean()
        t1 = time.perf_counter()
    grads = torch.autograd.grad(loss, list(cell.parameters()))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, saved.total, grads


def peak_rss_bytes() -> int:
    """High-water RSS of this process's own address space (VmHWM).

    Not ``ru_maxrss``: Linux carries that across exec, so a child started by a
    big parent would report the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_child(args):
    """One forward+backward of one method in this (fresh) process; print peak RSS."""
    torch.set_num_threads(args.threads)
    cell, x, target = build(args)
    if args.child == "baseline":
        layer, names = make_layer(cell, "jfb")
        with torch.no_grad():
            layer(x)
    elif args.child == "unrolled":
        unrolled_run(cell, x, target, args.steps)
    else:
        layer, names = make_layer(cell, args.child)
        implicit_run(layer, cell, x, target)
    print(f"PEAK_RSS_BYTES {peak_rss_bytes()}", flush=True)


def main():
    p = add_cell_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--rss", action="store_true", help="also measure peak RSS per method")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return rss_child(args)
    torch.set_num_threads(args.threads)
    cell, x, target = build(args)

    # Reference gradient: tight GMRES adjoint.
    opts = PETSc.Options()
    opts.setValue("ref_adjoint_deq_method", "ksp")
    ref_layer = DEQ(cell, prefix="ref_", options={**FORWARD, "snes_rtol": 1e-10},
                    adjoint_options={"ksp_rtol": 1e-12, "ksp_max_it": 1000})
    _, _, _, g_ref = implicit_run(ref_layer, cell, x, target)
    ref_layer.destroy()

    layers = {m: make_layer(cell, m) for m in METHODS}
    rows = {m: [] for m in list(METHODS) + ["unrolled"]}
    steps = None
    for _ in range(args.repeat):
        for m, (layer, _) in layers.items():
            fwd, bwd, saved, g = implicit_run(layer, cell, x, target)
            fs, bs = layer.last_stats.forward, layer.last_stats.backward
            steps = fs.iterations
            rows[m].append(dict(forward_s=fwd, backward_s=bwd, saved_bytes=saved, grads=g,
                                forward_its=fs.iterations, backward_its=bs.iterations,
                                vjps=bs.vjp_count))
        fwd, bwd, saved, g = unrolled_run(cell, x, target, steps)
        rows["unrolled"].append(dict(forward_s=fwd, backward_s=bwd, saved_bytes=saved, grads=g,
                                     forward_its=steps, backward_its=steps, vjps=steps))
    for layer, names in layers.values():
        layer.destroy()
        clear(names)

    best = {m: min(r, key=lambda d: d["backward_s"]) for m, r in rows.items()}
    rss = {}
    if args.rss:
        common = [sys.executable, __file__, "--batch", str(args.batch), "--channels",
                  str(args.channels), "--size", str(args.size), "--contraction",
                  str(args.contraction), "--threads", str(args.threads), "--steps", str(steps)]
        for m in ["baseline"] + list(rows):
            out = subprocess.run(common + ["--child", m], capture_output=True, text=True,
                                 check=True).stdout
            rss[m] = int(re.search(r"^PEAK_RSS_BYTES (\d+)$", out, re.M).group(1))

    n = args.batch * args.channels * args.size ** 2
    print(f"conv DEQ cell (self-adjoint kernel, Lipschitz {args.contraction}, x ~ 0.1 N(0,1)): "
          f"batch {args.batch}, {args.channels} ch, {args.size}x{args.size}, float64, {n} "
          f"unknowns; forward: PETSc anderson m=5 to rtol 1e-6 ({steps} its); best of "
          f"{args.repeat}; torch threads {args.threads}")
    print(f"{'method':10s} {'backward s':>10s} {'vs ksp':>7s} {'adj its':>7s} {'VJPs':>5s} "
          f"{'saved MB':>9s} {'grad rel err':>12s}" + ("  peak RSS over baseline MB" if rss else ""))
    base = best["ksp"]["backward_s"]
    results = {}
    for m, d in best.items():
        err = max(((a - b).norm() / b.norm()).item() for a, b in zip(d["grads"], g_ref))
        extra = (rss[m] - rss["baseline"]) / 2 ** 20 if rss else None
        results[m] = dict(backward_s=d["backward_s"], forward_s=d["forward_s"],
                          adjoint_its=d["backward_its"], vjps=d["vjps"],
                          saved_MB=d["saved_bytes"] / 2 ** 20, grad_rel_err=err,
                          rss_over_baseline_MB=extra)
        print(f"{m:10s} {d['backward_s']:10.3f} {d['backward_s'] / base:7.2f} "
              f"{d['backward_its']:7d} {d['vjps']:5d} {d['saved_bytes'] / 2 ** 20:9.1f} "
              f"{err:12.2e}" + (f"  {extra:10.1f}" if rss else ""))
    u = results["unrolled"]
    k = results["ksp"]
    print(f"\nunrolled autograd through {steps} steps saves {u['saved_MB'] / k['saved_MB']:.0f}x "
          f"the memory of the implicit layer ({u['saved_MB']:.0f} vs {k['saved_MB']:.0f} MB) and "
          f"its backward takes {u['backward_s'] / k['backward_s']:.2f}x the time of the GMRES "
          f"adjoint; its gradient is off by {u['grad_rel_err']:.1e} (Picard has not converged "
          f"in {steps} steps)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "forward_its": steps, "results": results}, fh,
                      indent=2)


if __name__ == "__main__":
    main()
