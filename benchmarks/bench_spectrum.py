"""Why Anderson gains 2-3x and not 10x: the spectrum of ``J_f`` at ``z*``.

On a linear fixed point ``u = A u + b`` Anderson with unlimited memory is
GMRES on ``(I - A) u = b`` (Walker & Ni, 2011), and Picard's residual is
``A^k r0``. So the best any Anderson/Krylov method can do against Picard, near
a trained model's equilibrium, is set by the eigenvalues of ``A = J_f(z*)``:
outliers near 1 with the rest well inside are what Krylov methods remove in a
few steps (large speed-ups); a spectrum that fills a disk around 0 gives GMRES
Picard's own rate (no speed-up at any radius).

For each checkpoint and each of ``--samples`` test samples (one sample's state
at a time, so ``J_f`` is the sample's own block of the batch Jacobian), this:

1. solves ``z*`` tightly (Anderson(20), rtol 1e-10) and forms ``J_f(z*)``
   densely with forward-mode autodiff;
2. takes all its eigenvalues;
3. counts, to ``--rtol`` from ``u = 0`` with a random ``b``, Picard's and full
   GMRES's iterations on the linearised problem, for the model's own ``J`` and
   for ``c J`` scaled to the spectral radii of ``--radii`` (the same spectrum
   shape, closer to or further from 1). ``GMRES`` is the ideal: no Anderson
   window, restart or safeguard does better on a linear problem;
4. solves the real (nonlinear) single-sample fixed point with Picard,
   Anderson(5), Anderson(20) and Newton-Krylov (the registry's ``jfnk``) to
   ``--rtol`` from ``z = 0``, and the same problem with its spectrum scaled to
   each of ``--nonlinear-radii`` (``g(z) = c f(z) + (1 - c) z*``: the same
   fixed point and nonlinearity, Jacobian ``c J_f`` there), and prints each
   solver's f evaluations (JVPs counted as one) and its ratio to Picard's.

Prints a table per model and the radius where the ideal ratio first reaches
5x and 10x; plots the eigenvalues of the first sample per model in the complex
plane and the ideal ratio against the (scaled) radius.

Run by hand (any checkpoints of a ResNet or contractive cell):
    .venv/bin/python benchmarks/bench_spectrum.py runs/demo/*/checkpoint.pt --samples 4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import deq_petsc

deq_petsc.init([sys.argv[0]])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deq_petsc.core import solver_sets  # noqa: E402
from deq_petsc.studies.compare import compare_solves, read_option_sets  # noqa: E402
from deq_petsc.science.data import load_task  # noqa: E402
from deq_petsc.core.problem import FixedPointProblem  # noqa: E402
from deq_petsc.core.solver import DEQSolver  # noqa: E402
from deq_petsc.science.train import load_model  # noqa: E402

#: The nonlinear solves, as the registry runs them: Picard, the paper's Anderson, a
#: deeper window, and Newton-Krylov on exact JVPs.
SOLVES = read_option_sets([f"{name}: {solver_sets.get(name).forward}"
                           for name in ("picard", "anderson", "jfnk")]
                          + [f"anderson20: {solver_sets.get('anderson').forward} "
                             "-snes_anderson_m 20"])


def jvp_operator(problem: FixedPointProblem, z: torch.Tensor):
    """``v -> J_f(z) v`` on flat float64 numpy vectors (forward-mode JVPs)."""
    lin = problem.linearize(z)

    def matvec(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lin.jvp(torch.from_numpy(v).reshape(z.shape)).reshape(-1).numpy()
    return matvec


def eigenvalues(matvec, n: int, dense_max: int, k: int) -> tuple[np.ndarray, bool]:
    """All eigenvalues of ``J`` (dense, ``n <= dense_max``) or the ``k`` of largest modulus.

    Returns them and whether they are all of them.
    """
    if n <= dense_max:
        cols = [matvec(e) for e in np.eye(n)]
        return np.linalg.eigvals(np.stack(cols, axis=1)), True
    from scipy.sparse.linalg import LinearOperator, eigs

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    return eigs(op, k=min(k, n - 2), which="LM", return_eigenvectors=False,
                tol=1e-4, ncv=min(n - 1, 2 * k + 1)), False


def picard_iterations(matvec, b: np.ndarray, scales, rtol: float, cap: int) -> list:
    """Iterations of ``u <- c J u + b`` from 0 to ``||r|| <= rtol ||b||`` for each scale ``c``.

    Picard's residual is ``(cJ)^k b``, so one sequence of ``||J^k b||`` serves
    every scale: ``||(cJ)^k b|| = c^k ||J^k b||``. Where ``cap`` iterations do
    not reach the tolerance, the count is extrapolated from the growth rate of
    the last fifth of the sequence, and returned negative to mark it.
    """
    logs, r = [0.0], b / np.linalg.norm(b)
    for _ in range(cap):
        r = matvec(r)
        n = np.linalg.norm(r)
        if n == 0:
            break
        logs.append(math.log(n))
        r = r / n
    cum = np.cumsum(logs)          # log ||J^k b|| / ||b||
    tail = max(2, len(cum) // 5)
    slope = (cum[-1] - cum[-tail]) / (tail - 1)
    out = []
    for c in scales:
        path = cum + np.arange(len(cum)) * math.log(c)
        hit = np.nonzero(path <= math.log(rtol))[0]
        if len(hit):
            out.append(int(hit[0]))
        else:
            rate = slope + math.log(c)
            out.append(-int(len(cum) - 1 + (math.log(rtol) - path[-1]) / rate)
                       if rate < 0 else None)
    return out


def gmres_iterations(matvec, b: np.ndarray, scales, rtol: float, cap: int) -> list:
    """Full GMRES's iterations on ``(I - c J) u = b`` from 0, for each scale ``c``.

    Krylov spaces are invariant under ``J -> I - cJ``, so one Arnoldi
    factorisation ``J V_k = V_{k+1} H_k`` serves every scale: the GMRES
    residual at step ``k`` is ``min_y || beta e1 - (I_{k+1,k} - c H_k) y ||``.
    ``None`` where ``cap`` steps do not reach the tolerance.
    """
    n = len(b)
    cap = min(cap, n)
    v = np.zeros((n, cap + 1))
    h = np.zeros((cap + 1, cap))
    beta = np.linalg.norm(b)
    v[:, 0] = b / beta
    out = [None] * len(scales)
    for k in range(cap):
        w = matvec(v[:, k])
        for _ in range(2):                       # classical Gram-Schmidt, twice
            coeff = v[:, :k + 1].T @ w
            w -= v[:, :k + 1] @ coeff
            h[:k + 1, k] += coeff
        h[k + 1, k] = np.linalg.norm(w)
        breakdown = h[k + 1, k] < 1e-14 * beta
        if not breakdown:
            v[:, k + 1] = w / h[k + 1, k]
        eye = np.eye(k + 2, k + 1)
        rhs = np.zeros(k + 2)
        rhs[0] = beta
        for i, c in enumerate(scales):
            if out[i] is None:
                m = eye - c * h[:k + 2, :k + 1]
                y = np.linalg.lstsq(m, rhs, rcond=None)[0]
                if np.linalg.norm(rhs - m @ y) <= rtol * beta or breakdown:
                    out[i] = k + 1
        if all(o is not None for o in out) or breakdown:
            break
    return out


def sample_problems(checkpoint: str, samples: int):
    """The model's cell (float64), ``samples`` single-sample injections from its test split,
    and the equilibrium's ``fixed_point_problem`` (the pair cell's state is not shaped like ``x``)."""
    model, state = load_model(checkpoint)
    cfg = state["train_config"]
    data = load_task(cfg["task"], limit=cfg["limit"] or None, seed=cfg["seed"],
                     split_by=cfg.get("split_by", "random"), progress=False)
    images = data.images[data.indices("test")][:samples]
    model = model.double().eval()
    with torch.no_grad():
        xs = [model.inject(images[i:i + 1].double()) for i in range(len(images))]
    cell, problem_of = model.equilibrium.cell, model.equilibrium.fixed_point_problem
    model.destroy()
    return cfg, cell, xs, problem_of


def analyse(checkpoint: str, args, rng) -> dict:
    cfg, cell, xs, problem_of = sample_problems(checkpoint, args.samples)
    rows, eigs_first = [], None
    for i, x in enumerate(xs):
        problem = problem_of(x)
        with DEQSolver(prefix="spectrum_ref_", options={
                "snes_type": "anderson", "snes_anderson_m": 20, "snes_rtol": 1e-10,
                "snes_atol": 1e-14, "snes_max_it": 2000}, check_convergence=False) as solver:
            z, _ = solver.solve(problem)
        matvec = jvp_operator(problem, z)
        n = z.numel()
        eig, complete = eigenvalues(matvec, n, args.dense_max, args.eigs)
        rho = float(np.abs(eig).max())
        if eigs_first is None:
            eigs_first = eig
        scales = [1.0] + [r / rho for r in args.radii]
        b = rng.standard_normal(n)
        pic = picard_iterations(matvec, b, scales, args.rtol, args.cap)
        gm = gmres_iterations(matvec, b, scales, args.rtol, args.max_krylov)
        nonlinear = [_nonlinear(cell, x, z, c, rho, args) for c in
                     [1.0] + [r / rho for r in args.nonlinear_radii]]
        mags = np.sort(np.abs(eig))[::-1]
        row = {"sample": i, "unknowns": n, "spectral_radius": rho,
               "eigenvalues": "all" if complete else f"{len(eig)} of largest modulus",
               "eigs_above_half_radius": int((mags > 0.5 * rho).sum()),
               "eigs_above_0.9_radius": int((mags > 0.9 * rho).sum()),
               "real_fraction_top50": float(np.mean(np.abs(
                   eig[np.argsort(-np.abs(eig))][:50].imag) < 1e-8)),
               "linear": [{"radius": rho * c, "picard": p, "gmres": g}
                          for c, p, g in zip(scales, pic, gm)],
               "nonlinear": nonlinear}
        rows.append(row)
        print(f"  sample {i}: n {row['unknowns']}, rho {rho:.4f}, |lambda| > rho/2: "
              f"{row['eigs_above_half_radius']}, > 0.9 rho: {row['eigs_above_0.9_radius']}; "
              f"linearised Picard {_n(pic[0])} / GMRES {_n(gm[0])} "
              f"(ideal {_ratio(pic[0], gm[0])})", flush=True)
        for run in nonlinear:
            ref_name, ref = next(iter(run["solves"].items()))
            print(f"    nonlinear, radius {run['radius']:.3f}: " + " | ".join(
                f"{name} {_cost(r)}" + ("" if name == ref_name else _speedup(ref, r))
                for name, r in run["solves"].items()), flush=True)
    return {"checkpoint": checkpoint, "task": cfg["task"], "cell": cfg.get("cell"),
            "samples": rows, "eigenvalues_sample0": [[float(e.real), float(e.imag)]
                                                      for e in eigs_first]}


def _nonlinear(cell, x, z_star, c: float, rho: float, args) -> dict:
    """Every nonlinear solver on ``g(z) = c f(z) + (1 - c) z*`` from ``z = 0``.

    ``g`` has the same fixed point ``z*`` and the Jacobian ``c J_f(z*)`` there: the
    model's own nonlinearity with its spectrum scaled to radius ``c rho``.
    """
    def g(z, x):
        return c * cell(z, x) + (1.0 - c) * z_star

    problem = FixedPointProblem(cell if c == 1.0 else g, x, z_shape=z_star.shape)
    runs = compare_solves(problem, args.sets, defaults={"snes_rtol": args.rtol,
                                                        "snes_max_it": args.cap})
    return {"radius": c * rho, "solves": {r.name: {
        "iterations": r.iterations, "f_and_jvps": r.function_evals + r.jvps,
        "converged": r.converged} for r in runs}}


def _cost(r) -> str:
    return f"{r['f_and_jvps']}" + ("" if r["converged"] else " (cap)")


def _speedup(picard, r) -> str:
    if not r["converged"]:
        return ""
    bound = "" if picard["converged"] else ">"
    return f" ({bound}{picard['f_and_jvps'] / r['f_and_jvps']:.1f}x)"


def _n(k):
    """An iteration count; ``~`` marks an extrapolated one, ``>cap`` none."""
    if k is None:
        return ">cap"
    return f"~{-k}" if k < 0 else str(k)


def _ratio(p, g):
    if p is None or g is None:
        return "n/a"
    return f"{'~' if p < 0 else ''}{abs(p) / g:.2f}x"


def _ratios(result, j):
    """Picard / GMRES at radius index ``j`` over the samples (extrapolated Picard included)."""
    return [abs(s["linear"][j]["picard"]) / s["linear"][j]["gmres"]
            for s in result["samples"] if s["linear"][j]["picard"] and s["linear"][j]["gmres"]]


def summarise(result, radii):
    print(f"{result['checkpoint']} ({result['task']}): ideal Picard / GMRES iterations by radius "
          "(median over samples; ~ extrapolated)")
    for j, r in enumerate(["own"] + [f"{x:g}" for x in radii]):
        ratios = _ratios(result, j)
        rho = np.median([s["linear"][j]["radius"] for s in result["samples"]])
        pic = " ".join(_n(s["linear"][j]["picard"]) for s in result["samples"])
        gm = " ".join(_n(s["linear"][j]["gmres"]) for s in result["samples"])
        med = f"{np.median(ratios):.2f}x" if ratios else "n/a"
        print(f"  radius {r:>5s} ({rho:.4f}): Picard [{pic}]  GMRES [{gm}]  ratio {med}")


def plot(results, radii, path):
    from deq_petsc.science.plots import finish_figure, subplots

    fig, axes = subplots(1, len(results) + 1, figsize=(4.2 * (len(results) + 1), 4),
                         constrained_layout=True)
    t = np.linspace(0, 2 * np.pi, 400)
    for ax, res in zip(axes, results):
        e = np.array(res["eigenvalues_sample0"])
        rho = res["samples"][0]["spectral_radius"]
        ax.plot(np.cos(t), np.sin(t), "k-", lw=0.8, label="|lambda| = 1")
        ax.plot(rho * np.cos(t), rho * np.sin(t), "r--", lw=0.8, label=f"rho = {rho:.3f}")
        ax.plot(e[:, 0], e[:, 1], ".", ms=2)
        ax.set(aspect="equal", xlabel="Re", ylabel="Im",
               title=f"{res['task']}: {Path(res['checkpoint']).parent.name}")
        ax.legend(loc="lower left", fontsize=7)
    ax = axes[-1]
    for res in results:
        pts = []
        for j in range(1, len(radii) + 1):
            ratios = _ratios(res, j)
            if ratios:
                pts.append((radii[j - 1], float(np.median(ratios))))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                    label=f"{res['task']}: {Path(res['checkpoint']).parent.name}")
    for level in (5, 10):
        ax.axhline(level, color="k", lw=0.6, ls=":")
    ax.set(xlabel="spectral radius (J scaled)", ylabel="Picard / GMRES iterations (ideal)",
           yscale="log", title="best possible Anderson speed-up")
    ax.legend(fontsize=7)
    return finish_figure(fig, list(axes), path,
                         "eigenvalues of J_f at z* (first test sample) and the ideal ratio")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--samples", type=int, default=4, help="test samples per checkpoint")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--radii", default="0.5,0.8,0.9,0.95,0.98,0.99,0.995,0.999",
                   help="spectral radii the spectrum is scaled to")
    p.add_argument("--sets-file", help="nonlinear option sets, one 'name: options' per line "
                   "(the first is the reference; default: picard, anderson, jfnk, anderson20)")
    p.add_argument("--nonlinear-radii", default="0.95,0.98,0.99",
                   help="radii the nonlinear problem is scaled to (besides its own)")
    p.add_argument("--cap", type=int, default=3000,
                   help="Picard iterations at most; longer ones are extrapolated")
    p.add_argument("--dense-max", type=int, default=4096,
                   help="all eigenvalues (dense J) up to this many unknowns per sample")
    p.add_argument("--eigs", type=int, default=200,
                   help="eigenvalues of largest modulus above --dense-max (ARPACK)")
    p.add_argument("--max-krylov", type=int, default=600, help="GMRES iterations at most")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/spectrum")
    args = p.parse_args()
    args.radii = [float(r) for r in args.radii.split(",")]
    args.sets = (read_option_sets(Path(args.sets_file).read_text().splitlines())
                 if args.sets_file else SOLVES)
    args.nonlinear_radii = [float(r) for r in args.nonlinear_radii.split(",") if r.strip()]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    results = []
    for ckpt in args.checkpoints:
        print(f"{ckpt}:", flush=True)
        results.append(analyse(ckpt, args, rng))
        summarise(results[-1], args.radii)
        # after every model: a long run stopped half-way keeps what it measured
        (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.radii, out / "spectrum.png")
    print(f"wrote {out}/results.json, spectrum.png")


if __name__ == "__main__":
    main()
