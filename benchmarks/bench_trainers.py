"""Trainer benchmark: Adam vs PETSc TAO methods on a regression, same model, data and time.

PETScML's claim to check: on smooth scientific-ML regression, Gauss-Newton with a
trust region reaches a lower test error than Adam. Each method trains the same
initial network (same seed) on the same QM9 dipole-moment regression (graph
images of ``--limit`` molecules, targets standardised) until its training time
passes ``--budget`` seconds (checked after each epoch; an Adam epoch is one
pass of mini-batches, a TAO epoch one solve of ``--tao-its`` iterations on the
whole training split), side by side in one process. Reported: final training
loss (MSE, standardised), test MAE (Debye), time, and objective / gradient /
Hessian-product counts.

Methods (``--methods`` picks a subset):
  adam            torch Adam, lr 3e-3, batch 64 (float64, like the rest)
  lmvm            L-BFGS, More-Thuente line search
  nls-gn          Newton-CG line search, Gauss-Newton products
  ntr-gn          Newton trust region, Gauss-Newton products
  bntr-gn         bounded Newton trust region (no bounds), Gauss-Newton products
  ntr-exact       Newton trust region, exact Hessian (explicit model only)
  brgn            TAO's regularised Gauss-Newton for least squares

Run by hand:  .venv/bin/python benchmarks/bench_trainers.py [--model deq] [--budget 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc.science.data import load_task  # noqa: E402
from deq_petsc.science.train import TaoTrainer, TrainConfig, Trainer  # noqa: E402

METHODS = {
    "adam": None,
    "lmvm": {"tao_type": "lmvm"},
    "nls-gn": {"tao_type": "nls", "train_hessian": "gauss-newton"},
    "ntr-gn": {"tao_type": "ntr", "train_hessian": "gauss-newton"},
    "bntr-gn": {"tao_type": "bntr", "train_hessian": "gauss-newton"},
    "ntr-exact": {"tao_type": "ntr", "train_hessian": "exact"},
    "brgn": {"tao_type": "brgn"},
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=600, help="QM9 molecules (80%% train)")
    p.add_argument("--model", choices=["explicit", "deq"], default="explicit")
    p.add_argument("--depth", type=int, default=4, help="explicit model's depth")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--budget", type=float, default=90.0, help="training seconds per method")
    p.add_argument("--tao-its", type=int, default=10, help="TAO iterations per epoch")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--cache-dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.model == "deq" and "ntr-exact" in methods:
        methods.remove("ntr-exact")          # no second derivatives through a DEQ
    data = load_task("polarity", limit=args.limit, seed=0, cache_dir=args.cache_dir,
                     progress=False)
    print(f"QM9 dipole regression: {len(data.indices('train'))} train / "
          f"{len(data.indices('test'))} test molecules; {args.model} model, width "
          f"{args.width}; {args.budget:.0f} s of training per method; torch threads "
          f"{args.threads}")
    opts = PETSc.Options()
    rows = []
    for name in methods:
        cfg = TrainConfig(task="polarity", epochs=10_000, batch_size=64, lr=3e-3, seed=0,
                          width=args.width, kind=args.model, depth=args.depth,
                          objective="regress", dtype="float64")
        prefix = name.replace("-", "_") + "_"
        out = tempfile.mkdtemp(prefix=f"bench_trainers_{name}_")
        if METHODS[name] is None:
            trainer = Trainer(cfg, data, out, prefix=prefix, progress=False, log=lambda *a: None,
                              solver_options={"snes_rtol": 1e-6},
                              adjoint_options={"ksp_rtol": 1e-6})
        else:
            for key, value in {**METHODS[name], "tao_max_it": args.tao_its}.items():
                opts.setValue(prefix + key, str(value))
            trainer = TaoTrainer(cfg, data, out, prefix=prefix, progress=False,
                                 log=lambda *a: None)
        try:
            history = trainer.fit(time_budget=args.budget)
            report = trainer.finish()
        finally:
            trainer.destroy()
        last = history[-1]
        row = dict(method=name, epochs=len(history), train_loss=last["train_loss"],
                   val_mae=last["val_mae"], test_mae=report["mae"], test_r2=report["r2"],
                   baseline_mae=report["baseline_mae"], time=last["elapsed"],
                   objective_evals=sum(h.get("objective_evals", 0) + h.get("residual_evals", 0)
                                       for h in history),
                   gradient_evals=sum(h.get("gradient_evals", 0) for h in history),
                   hessian_products=sum(h.get("hessian_products_evals", 0)
                                        + h.get("jacobian_products_evals", 0) for h in history),
                   tao_its=sum(h.get("tao_its", 0) for h in history),
                   reasons=sorted({h["tao_reason"] for h in history if "tao_reason" in h}))
        rows.append(row)
        print(f"  {name:10s} done: {row['epochs']} epochs, test MAE {row['test_mae']:.4f}",
              flush=True)
    print(f"\n{'method':10s} {'epochs':>6s} {'train MSE':>9s} {'test MAE':>8s} {'R^2':>6s} "
          f"{'time s':>7s} {'f evals':>7s} {'grads':>6s} {'Hv/Jv':>6s} {'TAO its':>7s}  reasons")
    for r in rows:
        print(f"{r['method']:10s} {r['epochs']:6d} {r['train_loss']:9.4f} {r['test_mae']:8.4f} "
              f"{r['test_r2']:6.3f} {r['time']:7.1f} {r['objective_evals']:7d} "
              f"{r['gradient_evals']:6d} {r['hessian_products']:6d} {r['tao_its']:7d}  "
              f"{','.join(r['reasons'])}")
    adam = next((r for r in rows if r["method"] == "adam"), None)
    if adam is not None:
        print(f"test MAE relative to Adam (< 1: better than Adam); predicting the training "
              f"mean gives {adam['baseline_mae']:.4f} D")
        for r in rows:
            if r is not adam:
                print(f"  {r['method']:10s} {r['test_mae'] / adam['test_mae']:.3f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
