"""MPI throughput: training samples per second on 1 and 2 ranks, polarity task.

Each configuration trains the default DEQ polarity classifier (width 16, Adam,
batch 64, forward Anderson to rtol 1e-3) for ``--epochs`` epochs on the same
``--limit`` QM9 molecules, launched as ``mpiexec -n N`` of this script, and
reports training samples per second (training time only, validation
excluded). Configurations, run one after the other in one invocation:

  1 rank x 1 thread, 1 rank x 2 threads (torch's own intra-op parallelism),
  2 ranks x 1 thread (data-parallel through PETSc/MPI: the cores split the batch)

Run by hand:  .venv/bin/python benchmarks/bench_mpi.py [--limit 2000 --epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def worker(args):
    import deq_petsc
    deq_petsc.init([sys.argv[0]])
    import torch
    from petsc4py import PETSc

    from deq_petsc.science.parallel import DataParallel, load_task_collectively
    from deq_petsc.science.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    dp = DataParallel()
    data = load_task_collectively("polarity", limit=args.limit, seed=0,
                                  cache_dir=args.cache_dir, progress=False)
    out = Path(tempfile.mkdtemp(prefix="bench_mpi_")) if dp.is_root else None
    out = dp.mpi.bcast(out, root=0)
    trainer = Trainer(TrainConfig(task="polarity", epochs=args.epochs, seed=0), data, out,
                      progress=False, log=lambda *a: None)
    history = trainer.fit()
    trainer.destroy()
    n = len(data.indices("train")) * len(history)
    seconds = sum(h["epoch_time"] for h in history)
    PETSc.Sys.Print(f"RESULT {json.dumps(dict(samples=n, seconds=seconds, loss=history[-1]['train_loss'], fwd_its=history[-1]['forward_its']))}")
    if dp.is_root:
        shutil.rmtree(out, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cache-dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    configs = [(1, 1), (1, 2), (2, 1)]
    rows = []
    for ranks, threads in configs:
        cmd = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", "--limit",
               str(args.limit), "--epochs", str(args.epochs), "--threads", str(threads)]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        m = re.search(r"^RESULT (.*)$", r.stdout, re.M)
        if r.returncode or not m:
            sys.exit(f"{ranks} rank(s) x {threads} failed:\n{r.stdout}\n{r.stderr}")
        res = json.loads(m.group(1))
        rows.append(dict(ranks=ranks, threads=threads, **res,
                         rate=res["samples"] / res["seconds"]))
        print(f"  {ranks} rank(s) x {threads} thread(s): {rows[-1]['rate']:.1f} samples/s",
              flush=True)
    print(f"\npolarity DEQ training, {args.limit} molecules, {args.epochs} epoch(s)")
    print(f"{'ranks':>5s} {'threads':>7s} {'samples/s':>9s} {'train s':>8s} {'loss':>8s} "
          f"{'fwd its':>7s}")
    for r in rows:
        print(f"{r['ranks']:5d} {r['threads']:7d} {r['rate']:9.1f} {r['seconds']:8.1f} "
              f"{r['loss']:8.4f} {r['fwd_its']:7.1f}")
    base = rows[0]["rate"]
    print(f"2 ranks x 1 thread / 1 rank x 1 thread: {rows[2]['rate'] / base:.2f}x; "
          f"2 ranks x 1 thread / 1 rank x 2 threads: {rows[2]['rate'] / rows[1]['rate']:.2f}x")


if __name__ == "__main__":
    main()
