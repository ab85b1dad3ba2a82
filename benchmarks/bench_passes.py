"""Passes over the state per solver iteration: PETSc's own event log, our torch side, and
what each algorithm needs (issue 36, item 2).

A pass is one state-sized vector read or written once (``VecAXPY`` ``y += a x`` reads 2
and writes 1: 3 passes). On a state larger than the caches every pass runs at memory
bandwidth, so passes per iteration, against a bare ``f``, are what an iteration costs
beyond ``f``. Counted for each solver on the benchmark conv cell, float64 and float32
models, each configuration in a PETSc log stage of its own:

* PETSc's side, from its event log (``PETSc.Log.Event(name).getPerfInfo(stage)``: calls
  and flops per event), each event turned into vectors read and written by
  :data:`PASSES` (fixed per call) or by its flops (``VecMDot``, ``VecMAXPY`` and the
  split-phase reductions: their flops give how many vectors they combine);
* our torch side, around ``f`` (the callbacks' casts, ``F = X - f``, the NaN check, the
  Jacobian products' ``v - J v``), by a torch dispatch mode that sees every aten op on a
  state-sized tensor outside the cell and its autograd products (:class:`TorchPasses`);
* what the algorithm needs (:func:`needed`), and the ratio.

Counts are deterministic (same options, same sizes: same counts on any machine); the
times per iteration beside a bare ``f`` are indicative only on a loaded machine.

Run by hand:  .venv/bin/python benchmarks/bench_passes.py [--batch 32] [--its 30]
              [--out passes.json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import deq_petsc

if __name__ == "__main__":
    _PETSC_ARGS = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    deq_petsc.init([sys.argv[0]] + sys.argv[_PETSC_ARGS + 1:])

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from common import add_cell_arguments, bare_f, conv_cell  # noqa: E402
from deq_petsc import DEQSolver, FixedPointProblem  # noqa: E402
from deq_petsc.core.adjoint import DEFAULT_KSP_OPTIONS, ImplicitKSP  # noqa: E402
from deq_petsc.core.problem import Linearization  # noqa: E402
from deq_petsc.core.solver_sets import SOLVER_SETS, parse_options  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: (vectors read, vectors written) per call of a PETSc vector event (src/vec/vec/interface
#: /rvector.c). VecAXPY is absent: VecAXPBY is logged under it (see :func:`petsc_passes`).
PASSES = {
    "VecNorm": (1, 0), "VecDot": (2, 0), "VecTDot": (2, 0), "VecDotNorm2": (2, 0),
    "VecMax": (1, 0), "VecMin": (1, 0), "VecAYPX": (2, 1), "VecWAXPY": (2, 1),
    "VecAXPBYCZ": (3, 1), "VecCopy": (1, 1), "VecSet": (0, 1), "VecScale": (1, 1),
    "VecShift": (1, 1), "VecPointwiseMult": (2, 1), "VecSwap": (2, 2), "VecSetRandom": (0, 1),
}
#: Events whose vector count comes from their flops: ``VecMDot`` of ``k`` vectors logs
#: ``k (2n - 1)`` flops and reads ``k + 1``; ``VecMAXPY`` logs ``2 k n``, reads ``k + 1``
#: and writes 1; ``VecReduceArith`` is the local part of the split-phase ``VecNormBegin``
#: (``2n - 1`` flops, reads 1), ``VecDotBegin`` and ``VecMDotBegin`` (read one more).
MULTI = ("VecMDot", "VecMTDot", "VecMAXPY", "VecAXPY", "VecReduceArith")
#: Vec events that move no state-sized data of their own: communication, assembly, and
#: VecNormalize, whose VecNorm and VecScale are logged as such (nested events).
NO_PASSES = ("VecNormalize", "VecReduceComm", "VecAssemblyBegin", "VecAssemblyEnd", "VecScatterBegin",
             "VecScatterEnd", "VecSetValues", "VecView", "VecLoad", "VecOps")


def _forward_sets() -> dict:
    """PETSc's own forward solvers, built from the registry's options (solver_sets); the
    lean types' passes are counted by bench_lean.py."""
    anderson = parse_options(SOLVER_SETS["petsc-anderson"].forward)
    sets = {"Picard": parse_options(SOLVER_SETS["petsc-picard"].forward)}
    for m in (1, 5, 20):
        sets[f"Anderson({m})"] = {**anderson, "snes_anderson_m": m}
    sets["NGMRES"] = parse_options(SOLVER_SETS["ngmres"].forward)
    sets["Newton-Krylov"] = parse_options(SOLVER_SETS["jfnk"].forward)
    return sets


FORWARD = _forward_sets()
ADJOINT = "adjoint GMRES"
def split_dots(name: str, its: int) -> int:
    """Split-phase dot products in a solve, the one thing PETSc's log cannot tell from a
    split-phase norm (both ``2n - 1`` flops per vector pair). NGMRES and Anderson share
    ``SNESNGMRESFormCombinedSolution_Private`` (src/snes/impls/ngmres/ngmresfunc.c): two
    ``VecMDotBegin`` per iteration once a vector is stored, from the first iteration in
    NGMRES (snesngmres.c stores ``X0``), from the second in Anderson (anderson.c)."""
    if name == "NGMRES":
        return 2 * its
    return 2 * max(its - 1, 0) if name.startswith("Anderson") else 0


# -- PETSc's side ----------------------------------------------------------------------
def petsc_passes(stage: int, n: int, dots: int = 0) -> dict:
    """``event -> {"calls", "reads", "writes"}`` of PETSc's vector events in ``stage``, on
    vectors of ``n`` local entries. ``dots``: the split-phase dot/mdot calls among
    the ``VecReduceArith`` ones (each reads its ``x`` besides the vectors its flops count)."""
    out = {}
    for name in (*PASSES, *MULTI):
        info = PETSc.Log.Event(name).getPerfInfo(stage)
        calls, flops = int(info["count"]), float(info["flops"])
        if not calls:
            continue
        if name in PASSES:
            reads, writes = (calls * k for k in PASSES[name])
        elif name == "VecMAXPY":
            reads, writes = flops / (2 * n) + calls, calls
        elif name == "VecAXPY":      # VecAXPY (2n flops) or VecAXPBY logged here: b == 0
            # (n flops, reads 1), b == 1 or general (2n or 3n, reads 2), a == 1 and b == 0
            # (a copy, 0 flops, reads 1)
            reads, writes = max(calls, min(round(flops / n), 2 * calls)), calls
        elif name == "VecReduceArith":
            reads, writes = flops / (2 * n - 1) + dots, 0
        else:                        # VecMDot, VecMTDot
            reads, writes = flops / (2 * n - 1) + calls, 0
        out[name] = {"calls": calls, "reads": round(reads, 3), "writes": writes}
    return out


def petsc_event_names(stage: int) -> list[str]:
    """Every event with calls in ``stage``, read from PETSc's own ``-log_view`` text
    (petsc4py lists none): what :data:`PASSES` and :data:`MULTI` must cover."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as fh:
        viewer = PETSc.Viewer().createASCII(fh.name)
        PETSc.Log.view(viewer)
        viewer.destroy()
        text = fh.read()
    names = set(re.findall(r"^(\w+)\s+\d+ \d\.\d ", text, flags=re.M))
    return sorted(n for n in names if PETSc.Log.Event(n).getPerfInfo(stage)["count"])


def unmodelled(stage: int) -> list[str]:
    """Vec events with calls in ``stage`` that no pass model covers (should be none)."""
    known = (*PASSES, *MULTI, *NO_PASSES)
    return [n for n in petsc_event_names(stage) if n.startswith("Vec") and n not in known]


# -- our torch side --------------------------------------------------------------------
@dataclass
class TorchPasses(TorchDispatchMode):
    """Counts the passes of every aten op on a tensor of ``numel`` entries, outside the
    cell and its autograd products (those are ``f``'s own work, :meth:`pause`).

    An op reads its state-sized arguments and writes its state-sized results; an argument
    it writes in place (``copy_``'s destination, an ``out=``) is written, not read (an
    in-place update such as ``add_`` both); views and ``*_like`` constructors read nothing. A copy between dtypes is
    a crossing between torch and PETSc (``F = X - f`` promoting a float32 ``f`` inside
    its kernel is not: it makes no copy).
    """

    numel: int
    paused: int = 0
    ops: dict = field(default_factory=dict)       # "op" -> [reads, writes, bytes]

    def __post_init__(self):
        super().__init__()

    @contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused:
            self._count(func, args, kwargs, out)
        return out

    def _count(self, func, args, kwargs, out):
        schema = func._schema
        if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
            return                                           # a view
        reads, writes, dtypes = 0, 0, set()
        name = func.overloadpacket.__name__
        for i, arg in enumerate(schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            for t in self._state_sized(value):
                written = arg.alias_info is not None and arg.alias_info.is_write
                only_written = written and (arg.name == "out" or name in ("copy_", "fill_",
                                                                          "zero_"))
                reads += not only_written and not name.endswith("_like")   # shape only
                writes += written
                dtypes.add(t.dtype)
        if not any(r.alias_info for r in schema.returns):
            for t in self._state_sized(out):
                writes += 1
                dtypes.add(t.dtype)
        if reads or writes:
            cast = len(dtypes) > 1 and name in ("copy_", "_to_copy", "to")
            key = f"{name} (cast)" if cast else name
            entry = self.ops.setdefault(key, [0, 0])
            entry[0] += reads
            entry[1] += writes

    def _state_sized(self, value):
        values = value if isinstance(value, (list, tuple)) else (value,)
        return [v for v in values if isinstance(v, torch.Tensor) and v.numel() == self.numel]


class _PausedLinearization(Linearization):
    """A linearization whose products count as ``f``'s work (not as vector passes)."""

    counter: TorchPasses | None = None

    def vjp(self, u):
        with self.counter.pause():
            return super().vjp(u)

    def jvp(self, v):
        with self.counter.pause():
            return super().jvp(v)


class CountedProblem(FixedPointProblem):
    """The fixed-point problem with ``f`` (and its products) hidden from the counter."""

    def __init__(self, cell, x, counter: TorchPasses):
        self.counter = counter

        def f(z, inputs):
            with counter.pause():
                return cell(z, inputs)
        super().__init__(f, x)

    def linearize(self, z, jvp_mode=None):
        lin = _PausedLinearization(self, z, jvp_mode or "reverse")
        lin.counter = self.counter
        return lin


# -- what the algorithm needs ----------------------------------------------------------
def _window(k: int, m: int, first: int = 0) -> int:
    """Stored vectors Anderson (``first`` 0) or NGMRES (1) mixes at iteration ``k``."""
    return min(k - 1 + first, m)


def needed(name: str, its: int, linear_its: int = 0) -> float:
    """Passes per iteration (outside ``f``) of a lean implementation of the algorithm.

    Picard: one sweep reads ``X`` and ``f``, writes ``F`` and takes its norm (3).
    Anderson(m) with stored differences updated in place: ``2 l + 3`` (issue 36: the ``l``
    stored residual differences read for the inner products, the ``l`` stored update
    differences for the new iterate, the new ones written), ``l`` the window in use.
    NGMRES: the same plus a second residual sweep (its second ``f``): ``2 l + 6``.
    GMRES(k), Arnoldi step ``j``: classical Gram-Schmidt's dots read ``j + 1``, the
    update ``j + 2``, the normalisation 2 (its norm fused), the product ``w = v - J^T v``
    3: ``2 j + 8``. Newton-Krylov per Newton step: residual 3, update 3, the KSP's start
    2 and its steps as GMRES's, ``linear_its / its`` per Newton step.
    """
    if name == "Picard":
        return 3.0
    m = re.fullmatch(r"Anderson\((\d+)\)", name)
    if m:
        return sum(2 * _window(k, int(m.group(1))) + 3 for k in range(1, its + 1)) / its
    if name == "NGMRES":
        window = int(FORWARD["NGMRES"].get("snes_ngmres_m", 30))
        return sum(2 * _window(k, window, 1) + 6 for k in range(1, its + 1)) / its
    if name == ADJOINT:
        restart = int(DEFAULT_KSP_OPTIONS["ksp_gmres_restart"])
        return sum(2 * ((i - 1) % restart + 1) + 8 for i in range(1, its + 1)) / its
    if name == "Newton-Krylov":
        per_step = linear_its / its
        return 8 + per_step * (per_step + 1) + 8 * per_step
    raise KeyError(name)


# -- one configuration ------------------------------------------------------------------
@dataclass
class Row:
    """One solver and precision: counts per iteration and the times beside a bare f."""

    solver: str
    dtype: str
    iterations: int
    f_evals: int
    linear_its: int
    petsc: dict            # event -> {"calls", "reads", "writes"}
    torch_ops: dict        # op -> [reads, writes]
    needed: float
    ms_per_iteration: float = math.nan
    bare_f_ms: float = math.nan
    unmodelled: list = field(default_factory=list)

    @property
    def petsc_per_it(self) -> float:
        return sum(e["reads"] + e["writes"] for e in self.petsc.values()) / self.iterations

    @property
    def torch_per_it(self) -> float:
        return sum(r + w for r, w in self.torch_ops.values()) / self.iterations

    @property
    def crossing_per_it(self) -> float:
        return sum(r + w for k, (r, w) in self.torch_ops.items()
                   if k.endswith("(cast)")) / self.iterations

    @property
    def total_per_it(self) -> float:
        return self.petsc_per_it + self.torch_per_it

    def as_dict(self) -> dict:
        return {**self.__dict__, "petsc_per_iteration": self.petsc_per_it,
                "torch_per_iteration": self.torch_per_it,
                "crossing_per_iteration": self.crossing_per_it,
                "total_per_iteration": self.total_per_it,
                "ratio_to_needed": self.total_per_it / self.needed}


_STAGES: dict = {}


def stage(name: str) -> PETSc.Log.Stage:
    """One PETSc log stage per configuration, registered once per process."""
    if name not in _STAGES:
        _STAGES[name] = PETSc.Log.Stage(name)
    return _STAGES[name]


def fixed_its_options(options: dict, its: int) -> dict:
    """The solver's options with the convergence test off: every solve runs ``its``."""
    return {**options, "snes_rtol": 0, "snes_atol": 0, "snes_stol": 0, "snes_max_it": its}


def count_forward(name: str, options: dict, cell, x, its: int, prefix: str) -> Row:
    """Solve once, fixed iterations, in a stage of its own: PETSc's and our passes."""
    n = x.numel()
    counter = TorchPasses(n)
    solver = DEQSolver(prefix=prefix, check_convergence=False,
                       options=fixed_its_options(options, its))
    st = stage(f"{name} {x.dtype}".replace("torch.", ""))
    st.push()
    try:
        with counter:
            _, stats = solver.solve(CountedProblem(cell, x, counter))
    finally:
        st.pop()
        solver.destroy()
    dots = split_dots(name, stats.iterations)
    return Row(name, str(x.dtype).replace("torch.", ""), stats.iterations,
               stats.function_evals, stats.linear_iterations,
               petsc_passes(st.id, n, dots), counter.ops,
               needed(name, stats.iterations, stats.linear_iterations),
               unmodelled=unmodelled(st.id))


def adjoint_ksp(its: int, prefix: str) -> ImplicitKSP:
    """The adjoint's KSP (the anderson-gmres set's: GMRES, restart 10) for ``its`` steps."""
    return ImplicitKSP(prefix, PETSc.COMM_SELF, {**DEFAULT_KSP_OPTIONS, "ksp_rtol": 0,
                                                 "ksp_atol": 0, "ksp_max_it": its},
                       transpose=True)


def count_adjoint(cell, x, z_star, its: int, prefix: str) -> Row:
    """The adjoint KSP on ``(I - J_f(z*))^T u = g`` for ``its`` GMRES steps."""
    counter = TorchPasses(x.numel())
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x.dtype)
    ksp = adjoint_ksp(its, prefix)
    st = stage(f"{ADJOINT} {x.dtype}".replace("torch.", ""))
    st.push()
    try:
        with counter:
            _, stats = ksp.solve(CountedProblem(cell, x, counter), z_star, g)
    finally:
        st.pop()
        ksp.destroy()
    return Row(ADJOINT, str(x.dtype).replace("torch.", ""), stats.iterations,
               0, stats.iterations, petsc_passes(st.id, x.numel()), counter.ops,
               needed(ADJOINT, stats.iterations), unmodelled=unmodelled(st.id))


def time_forward(options: dict, cell, x, its: int, prefix: str) -> float:
    """Seconds per iteration of a plain solve (no counting), ``its`` iterations."""
    with DEQSolver(prefix=prefix, check_convergence=False,
                   options=fixed_its_options(options, its)) as solver:
        _, stats = solver.solve(FixedPointProblem(cell, x))
    return stats.time / max(stats.iterations, 1)


def time_adjoint(cell, x, z_star, its: int, prefix: str) -> float:
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x.dtype)
    ksp = adjoint_ksp(its, prefix)
    try:
        _, stats = ksp.solve(FixedPointProblem(cell, x), z_star, g)
    finally:
        ksp.destroy()
    return stats.time / max(stats.iterations, 1)


# -- the run ----------------------------------------------------------------------------
def measure(args) -> list[Row]:
    """Every solver in both precisions: counts once, times best of ``args.repeat``."""
    rows = []
    for d, dtype in DTYPES.items():
        cell, x = conv_cell(args, dtype)
        its = {name: args.newton_its if name == "Newton-Krylov" else args.its
               for name in FORWARD}
        for i, (name, options) in enumerate(FORWARD.items()):
            rows.append(count_forward(name, options, cell, x, its[name], f"c{i}{d}_"))
        with DEQSolver(prefix=f"z{d}_", options={"snes_type": "anderson"}) as solver:
            z_star, _ = solver.solve(FixedPointProblem(cell, x))
        rows.append(count_adjoint(cell, x, z_star, args.its, f"ca{d}_"))
        times = {}
        for _ in range(args.repeat):
            for i, (name, options) in enumerate(FORWARD.items()):
                t = time_forward(options, cell, x, its[name], f"t{i}{d}_")
                times[name] = min(times.get(name, math.inf), t)
            t = time_adjoint(cell, x, z_star, args.its, f"ta{d}_")
            times[ADJOINT] = min(times.get(ADJOINT, math.inf), t)
            times["bare f"] = min(times.get("bare f", math.inf), bare_f(cell, x, args.its))
        for row in rows:
            if row.dtype == d:
                row.ms_per_iteration = 1e3 * times[row.solver]
                row.bare_f_ms = 1e3 * times["bare f"]
    return rows


def print_table(rows: list[Row], args) -> None:
    n = args.batch * args.channels * args.size ** 2
    print(f"conv cell {args.batch}x{args.channels}x{args.size}x{args.size} ({n} unknowns), "
          f"PETSc scalars {PETSc.ScalarType.__name__}; {args.its} iterations per solve "
          f"({args.newton_its} for Newton-Krylov), {args.threads} torch thread(s).\n"
          f"Passes over state-sized vectors per iteration (a vector read or written once); "
          f"counts are deterministic,\ntimes (best of {args.repeat}) indicative only on a "
          f"loaded machine.")
    head = (f"{'solver':14s} {'dtype':7s} {'its':>4s} {'f/it':>5s} {'PETSc':>6s} "
            f"{'torch':>6s} {'cast':>5s} {'total':>6s} {'needed':>6s} {'ratio':>6s} "
            f"{'ms/it':>7s} {'vs f':>5s}")
    print(head)
    for r in rows:
        print(f"{r.solver:14s} {r.dtype:7s} {r.iterations:4d} "
              f"{r.f_evals / r.iterations:5.2f} {r.petsc_per_it:6.1f} {r.torch_per_it:6.1f} "
              f"{r.crossing_per_it:5.1f} {r.total_per_it:6.1f} {r.needed:6.1f} "
              f"{r.total_per_it / r.needed:5.1f}x {r.ms_per_iteration:7.2f} "
              f"{r.ms_per_iteration / r.bare_f_ms:4.2f}x")
    print("\nPETSc passes per iteration by event (reads + writes), float64 model:")
    for r in rows:
        if r.dtype == "float64":
            parts = ", ".join(f"{k} {(e['reads'] + e['writes']) / r.iterations:.1f}"
                              for k, e in r.petsc.items())
            ours = ", ".join(f"{k} {(a + b) / r.iterations:.1f}"
                             for k, (a, b) in r.torch_ops.items())
            print(f"  {r.solver:14s} {parts}; torch: {ours}")
    missing = sorted({e for r in rows for e in r.unmodelled})
    if missing:
        print(f"Vec events without a pass model (not counted): {', '.join(missing)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cell_arguments(p)
    p.add_argument("--its", type=int, default=30, help="iterations per solve (default 30)")
    p.add_argument("--newton-its", type=int, default=4,
                   help="Newton steps per Newton-Krylov solve (default 4)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(sys.argv[1:_PETSC_ARGS])
    torch.set_num_threads(args.threads)
    PETSc.Log.begin()
    rows = measure(args)
    print_table(rows, args)
    if args.out or args.json:
        with open(args.out or args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": [r.as_dict() for r in rows]}, fh, indent=1)


if __name__ == "__main__":
    main()
