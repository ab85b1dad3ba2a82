"""Do the pinned kernels compute on this CPU what an AVX2 CPU computes? Bit for bit.

A probe (a float32 convolution, linear map, group norm, sum and softmax in
torch; a float64 matrix product in NumPy; a PETSc ``VecNorm``/``VecAXPY`` on
OpenBLAS) prints a digest of each result, in fresh processes:

* ``native``: the libraries' own kernel choice on this CPU (``DEQ_PETSC_KERNELS=native``);
* ``pinned``: :func:`deq_petsc.process.kernels.pin`'s AVX2 paths (the command line's default);
* ``haswell``: the probe unpinned under ``qemu-x86_64 -cpu Haswell`` (Debian's
  ``qemu-user``), an AVX2 CPU without AVX-512: what an AVX2 machine computes.

``pinned == haswell`` on an AVX-512 machine is the claim of docs/reproducibility.md;
``native != pinned`` shows that the pins do something here. The emulated run
takes about a minute.

``--time``: what the pins cost. One ``f`` evaluation of the demo's cell (the
implicit-layers ResNet cell, width 16, a batch of 64 polarity images of 32 x 32,
float32, 1 thread) timed natively and pinned, in alternating fresh processes,
best of ``--rounds`` each (the machine's noise is one-sided).

    .venv/bin/python benchmarks/bench_kernels.py [--time]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

PROBE = r"""
import hashlib, numpy as np, torch
import petsc4py; petsc4py.init([])
from petsc4py import PETSc
torch.manual_seed(0)
conv, lin = torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Linear(256, 64)
x, y = torch.randn(64, 16, 32, 32), torch.randn(128, 256)
with torch.no_grad():
    a = torch.tanh(conv(x))
    out = {"conv": a, "linear": lin(y), "group_norm": torch.nn.functional.group_norm(a, 4),
           "sum": a.sum().reshape(1), "softmax": torch.softmax(lin(y), 1)}
A = np.random.default_rng(0).standard_normal((300, 300))
out = {k: v.numpy() for k, v in out.items()}
out["numpy_matmul"] = A @ A
v = PETSc.Vec().createWithArray(np.random.default_rng(1).standard_normal(100003))
w = v.duplicate(); w.set(0.1); w.axpy(np.pi, v)
out["petsc_norm_axpy"] = np.array([v.norm(), w.norm()])
print(torch.backends.cpu.get_cpu_capability(), " ".join(
    f"{k}={hashlib.md5(np.ascontiguousarray(v).tobytes()).hexdigest()[:10]}"
    for k, v in out.items()))
"""


TIMING = r"""
import time, torch
torch.set_num_threads(1)
from deq_petsc.science.models.graph_classifier import ResNetCell
torch.manual_seed(0)
cell = ResNetCell(16)
x, z = torch.randn(64, 16, 32, 32), torch.zeros(64, 16, 32, 32)
with torch.no_grad():
    for _ in range(5):
        z = cell(z, x)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            z = cell(z, x)
        best = min(best, (time.perf_counter() - start) / 10)
print(best)
"""


def time_f(environ: dict) -> float:
    done = subprocess.run([sys.executable, "-c", TIMING], capture_output=True, text=True,
                          env=environ, timeout=600, check=True)
    return float(done.stdout.split()[-1])


def timing(base: dict, pinned_env: dict, rounds: int) -> None:
    times = {"native": [], "pinned": []}
    for _ in range(rounds):                       # alternate, so drifts hit both alike
        times["native"].append(time_f(base))
        times["pinned"].append(time_f(pinned_env))
    native, pinned = min(times["native"]), min(times["pinned"])
    print(f"one f of the demo's cell (64 x 16 x 32 x 32, float32, 1 thread), best of "
          f"{rounds}: native {1e3 * native:.2f} ms, pinned {1e3 * pinned:.2f} ms; "
          f"pinned / native {pinned / native:.2f}x")


def run(environ: dict, emulate: str | None = None) -> tuple[str, dict]:
    cmd = [sys.executable, "-c", PROBE]
    if emulate:
        cmd = ["qemu-x86_64", "-cpu", emulate] + cmd
    done = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"probe failed ({' '.join(cmd[:3])}): {done.stderr[-2000:]}")
    capability, *pairs = done.stdout.split()
    return capability, dict(p.split("=") for p in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emulate", default="Haswell",
                        help="qemu CPU model of the reference AVX2 machine (default Haswell)")
    parser.add_argument("--time", action="store_true",
                        help="time one f of the demo's cell natively and pinned instead")
    parser.add_argument("--rounds", type=int, default=7, help="with --time (default 7)")
    args = parser.parse_args()
    from deq_petsc.process.kernels import PORTABLE, pin

    base = {k: v for k, v in os.environ.items() if k not in PORTABLE and
            k != "DEQ_PETSC_KERNELS"}
    pinned_env = dict(base)
    pinned = pin(pinned_env)
    print(f"pinned here: {pinned or 'nothing (no AVX2/FMA, or unknown CPU)'}")
    if args.time:
        timing(base, pinned_env, args.rounds)
        return 0
    results = {"native": run(base), "pinned": run(pinned_env)}
    if shutil.which("qemu-x86_64"):
        results["haswell"] = run(base, emulate=args.emulate)
    else:
        print("qemu-x86_64 not found (apt-get install qemu-user): no emulated AVX2 reference")
    names = list(results["native"][1])
    print(f"{'run':8s} {'ATen':8s} " + " ".join(f"{n:>15s}" for n in names))
    for label, (capability, digests) in results.items():
        print(f"{label:8s} {capability:8s} " + " ".join(f"{digests[n]:>15s}" for n in names))
    if "haswell" in results:
        same = results["pinned"][1] == results["haswell"][1]
        differ = [n for n in names if results["native"][1][n] != results["pinned"][1][n]]
        print(f"pinned == emulated {args.emulate}: {same}; native differs from pinned in: "
              f"{', '.join(differ) or 'nothing (this CPU already takes the AVX2 paths)'}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
