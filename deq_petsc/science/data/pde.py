"""A SciML regression task whose data PETSc makes: the generalised Bratu problem.

    -Laplace(u) - lambda exp(u) = s(x, y; c)   on the unit square,  u = 0 on its boundary

with ``s = S sum_{i,j <= M} c_ij sin(i pi x) sin(j pi y) / (i^2 + j^2)``. A draw
is ``theta = (lambda, c_11, ..., c_MM)``: ``lambda ~ U[0, lambda_max]`` and
``c_ij ~ U[-1, 1]``. The map theta -> u is smooth but strongly nonlinear: without
a source the problem has solutions only for ``lambda`` below about 6.81, where
the lower branch folds (``u`` grows steeply near it), the regime of PETSc's own
SNES tutorial ex5. Surrogates learn theta -> u on the grid's interior (and the
mean of ``u``, a scalar quantity of interest), as in PETScML's regression problems.

The grid is a ``DMDA`` (5-point stencil, the residual scaled by ``h^2`` as ex5
does); every draw is one SNES solve from ``u = 0`` (Newton with a line search and
a direct solve by default; any ``-pde_snes_*``, ``-pde_ksp_*``, ``-pde_pc_*``
option applies) with its Jacobian assembled in one CSR call. Under ``mpiexec``
each rank solves its share of the draws on its own DMDA (``PETSC_COMM_SELF``) and
rank 0 caches the whole set. A draw whose solve does not converge (lambda past
the fold for its source) ends the build with one line naming it: skipping it
would bias the data set toward the easy draws in silence.

The task's own options are read from the options database (:data:`PDE_OPTIONS`,
listed under ``-help``); every ``-pde_*`` option typed is part of the cache key.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from deq_petsc.core.errors import DEQCacheError, DEQInputError
from deq_petsc.core.registry import Registry
from .cache import DatasetCache, cache_key
from .tasks import SPLITS, random_split

#: bump when the discretisation or the drawing of parameters changes (new cache keys)
PDE_VERSION = 2
#: the SNES of every draw, under the prefix ``pde_`` (the command line wins)
PDE_SNES_DEFAULTS = {"snes_type": "newtonls", "snes_rtol": 1e-12, "snes_atol": 1e-13,
                     "snes_stol": 0.0, "snes_max_it": 50, "ksp_type": "preonly",
                     "pc_type": "lu"}
PDE_PREFIX = "pde_"
PDE_ARRAYS = ("inputs", "fields", "qoi", "ids", "split")


@dataclass(frozen=True)
class BratuSettings:
    """The parameters of one Bratu data set (the ``-pde_*`` options)."""

    grid: int = 17               # nodes per side, boundary included
    lambda_max: float = 5.0
    modes: int = 3               # sine modes per direction in the source
    source: float = 10.0         # the source's scale S

    @classmethod
    def from_options(cls, comm=None) -> "BratuSettings":
        from deq_petsc.core.options_spec import PDE
        values = PDE.read("")
        PDE.print_help("", comm)
        return cls(grid=values["pde_grid"], lambda_max=values["pde_lambda_max"],
                   modes=values["pde_modes"], source=values["pde_source"])

    @property
    def h(self) -> float:
        return 1.0 / (self.grid - 1)

    @property
    def n_params(self) -> int:
        return 1 + self.modes * self.modes

    @property
    def n_outputs(self) -> int:
        return (self.grid - 2) ** 2

    def parameter_names(self) -> tuple[str, ...]:
        return ("lambda",) + tuple(f"c{i}_{j}" for i in range(1, self.modes + 1)
                                   for j in range(1, self.modes + 1))

    def draws(self, count: int, seed: int) -> np.ndarray:
        """``count`` parameter draws ``[count, 1 + M^2]``, the same on every rank; drawn
        row by row, so draw ``k`` is the same whatever ``count`` (a smaller build is a
        prefix of a larger one, and a draw's id names it)."""
        unit = np.random.default_rng(seed).uniform(0.0, 1.0, size=(count, self.n_params))
        return np.hstack([self.lambda_max * unit[:, :1], 2.0 * unit[:, 1:] - 1.0])

    def as_options(self) -> dict:
        """These settings as the ``-pde_*`` options that give them."""
        return {"pde_grid": self.grid, "pde_lambda_max": self.lambda_max,
                "pde_modes": self.modes, "pde_source": self.source}

    def source_field(self, theta: np.ndarray) -> np.ndarray:
        """``s`` on the grid (``[grid, grid]``, index ``[j, i]`` = ``(y_j, x_i)``)."""
        x = np.linspace(0.0, 1.0, self.grid)
        k = np.arange(1, self.modes + 1)
        sines = np.sin(np.pi * k[:, None] * x[None, :])          # [M, grid]
        c = np.asarray(theta[1:], dtype=float).reshape(self.modes, self.modes)
        weights = c / (k[:, None] ** 2 + k[None, :] ** 2)         # c_ij, i along x
        return self.source * np.einsum("ij,ix,jy->yx", weights, sines, sines)


def bratu_residual(u: np.ndarray, lam: float, s: np.ndarray, h: float) -> np.ndarray:
    """The discrete residual on the grid, scaled by ``h^2``: ``u`` on the boundary,
    ``4 u - (neighbours) - h^2 (lambda e^u + s)`` inside. A solution makes it zero."""
    r = np.array(u, dtype=float, copy=True)
    inner = u[1:-1, 1:-1]
    # a diverging Newton step overflows exp: Inf, which the SNES names (DIVERGED_FNORM_NAN)
    with np.errstate(over="ignore", invalid="ignore"):
        r[1:-1, 1:-1] = (4 * inner - u[:-2, 1:-1] - u[2:, 1:-1] - u[1:-1, :-2]
                         - u[1:-1, 2:] - h * h * (lam * np.exp(inner) + s[1:-1, 1:-1]))
    return r


class BratuSolver:
    """One DMDA, SNES, Jacobian and vectors for many draws on one grid (owned here)."""

    def __init__(self, settings: BratuSettings, comm=None):
        from petsc4py import PETSc

        from deq_petsc.core.petsc_options import inserted_defaults, options_checked
        self.settings = settings
        n = settings.grid
        self.da = PETSc.DMDA().create(dim=2, sizes=(n, n), dof=1, stencil_width=1,
                                      stencil_type=PETSc.DMDA.StencilType.STAR,
                                      comm=comm or PETSc.COMM_SELF)
        self.indptr, self.cols, self.base, self.diagonal = _stencil_csr(n, PETSc.IntType)
        self.inside = np.zeros((n, n), dtype=bool)
        self.inside[1:-1, 1:-1] = True
        self.inside = self.inside.ravel()
        self.J = self.da.createMat()
        self.R, self.U = self.da.createGlobalVec(), self.da.createGlobalVec()
        self.snes = PETSc.SNES().create(comm=self.da.getComm())
        self.snes.setOptionsPrefix(PDE_PREFIX)
        self.snes.setDM(self.da)
        self.snes.setFunction(self._function, self.R)
        self.snes.setJacobian(self._jacobian, self.J, self.J)
        with inserted_defaults(PDE_PREFIX, PDE_SNES_DEFAULTS), \
                options_checked(self.snes, "the Bratu data SNES"):
            self.snes.setFromOptions()
        self._lam, self._s = 0.0, None

    def _function(self, snes, U, R):
        n, h = self.settings.grid, self.settings.h
        u = U.getArray(readonly=True).reshape(n, n)
        R.getArray()[:] = bratu_residual(u, self._lam, self._s, h).ravel()

    def _jacobian(self, snes, U, J, P):
        h = self.settings.h
        u = U.getArray(readonly=True)
        values = self.base.copy()
        with np.errstate(over="ignore"):
            values[self.diagonal] -= h * h * self._lam * np.exp(u[self.inside])
        P.setValuesCSR(self.indptr, self.cols, values)
        P.assemble()

    def solve(self, theta: np.ndarray) -> tuple[np.ndarray, str | None, int]:
        """``(u on the grid [grid, grid], None or why the solve failed, iterations)``: a
        negative converged reason, or PETSc's error (``-pde_snes_error_if_not_converged``),
        is a failure of this draw, never an exception out of here."""
        from petsc4py import PETSc

        from deq_petsc.core.petsc_options import petsc_message, snes_reason_name
        self._lam = float(theta[0])
        self._s = self.settings.source_field(theta)
        self.U.set(0.0)
        try:
            self.snes.solve(None, self.U)
        except PETSc.Error as err:
            return None, petsc_message(err), int(self.snes.getIterationNumber())
        n = self.settings.grid
        u = self.U.getArray(readonly=True).reshape(n, n).copy()
        reason = int(self.snes.getConvergedReason())
        failure = snes_reason_name(reason) if reason <= 0 else (
            None if np.all(np.isfinite(u)) else "non-finite solution")
        return u, failure, int(self.snes.getIterationNumber())

    def destroy(self):
        for obj in (self.snes, self.J, self.R, self.U, self.da):
            obj.destroy()


def _stencil_csr(n: int, int_type):
    """The 5-point operator's CSR structure on an ``n x n`` grid (natural ordering, as a
    DMDA on one process numbers it), its values (``h^2``-scaled Laplacian, identity on the
    boundary) and the positions of the interior diagonal entries in them."""
    index = np.arange(n * n).reshape(n, n)
    indptr, cols, values, diagonal = [0], [], [], []
    for j in range(n):
        for i in range(n):
            if 0 < i < n - 1 and 0 < j < n - 1:
                diagonal.append(len(cols) + 2)
                cols += [index[j - 1, i], index[j, i - 1], index[j, i], index[j, i + 1],
                         index[j + 1, i]]
                values += [-1.0, -1.0, 4.0, -1.0, -1.0]
            else:
                cols.append(index[j, i])
                values.append(1.0)
            indptr.append(len(cols))
    return (np.asarray(indptr, dtype=int_type), np.asarray(cols, dtype=int_type),
            np.asarray(values), np.asarray(diagonal))


@dataclass
class FieldData:
    """Parameter draws and the PDE's solutions, split 80/10/10 as the graph-image tasks are.

    ``images`` holds the draws (``[M, P]`` float64) under the name the trainers and
    :func:`~deq_petsc.science.inference.predict` read inputs by; ``fields`` the interior of
    each solution (``[M, (grid-2)^2]``) and ``qoi`` its mean over the square.
    """

    task: str
    channels: tuple[str, ...]       # the parameters' names
    images: "torch.Tensor"          # noqa: F821
    fields: np.ndarray
    qoi: np.ndarray
    ids: list[str]
    split_of: np.ndarray
    params: dict
    attempted: int
    skipped: list = field(default_factory=list)
    from_cache: bool = False
    cache_path: str = ""
    task_options: dict = field(default_factory=dict)
    classes: tuple = ()
    newton_its: float = math.nan

    @property
    def targets(self) -> np.ndarray:
        """The scalar target (the QoI): what a regression baseline is scored on."""
        return self.qoi

    @property
    def grid(self) -> int:
        return int(self.params["grid"])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split_of == SPLITS.index(split))

    def summary(self) -> str:
        p = self.params
        counts = ", ".join(f"{s} {len(self.indices(s))}" for s in SPLITS)
        return "\n".join([
            f"task {self.task}: {len(self.ids)} solutions of -Laplace(u) - lambda e^u = s on a "
            f"{p['grid']}x{p['grid']} DMDA ({'cache' if self.from_cache else 'built'}: "
            f"{self.cache_path})",
            f"  inputs: {len(self.channels)} parameters (lambda in [0, {p['lambda_max']:g}], "
            f"{p['modes']}x{p['modes']} source modes of scale {p['source']:g}); targets: "
            f"{self.fields.shape[1]} interior values of u and their mean",
            f"  {counts}; u from {self.fields.min():.3f} to {self.fields.max():.3f}"
            + (f"; {self.newton_its:.1f} Newton iterations per draw"
               if math.isfinite(self.newton_its) else "")])


def solve_draws(settings: BratuSettings, thetas: np.ndarray, progress: bool = True,
                desc: str = "bratu solves"):
    """Solve each draw; ``(fields [K, (grid-2)^2], qoi [K], iterations [K], failures)``
    where ``failures`` lists ``(row, lambda, why)`` of the draws that did not converge
    (their rows are NaN)."""
    from deq_petsc.process.progress import progress as progress_bar

    solver = BratuSolver(settings)
    n_out = settings.n_outputs
    fields = np.full((len(thetas), n_out), np.nan)
    qoi = np.full(len(thetas), np.nan)
    its = np.zeros(len(thetas), dtype=np.int64)
    failures = []
    try:
        for k in progress_bar(range(len(thetas)), desc=desc, unit="solve", enabled=progress):
            u, failure, its[k] = solver.solve(thetas[k])
            if failure is not None:
                failures.append((k, float(thetas[k][0]), failure))
                continue
            fields[k] = u[1:-1, 1:-1].ravel()
            qoi[k] = float(mean_over_square(u))
    finally:
        solver.destroy()
    return fields, qoi, its, failures


def mean_over_square(u):
    """The integral of ``u`` (``[..., n, n]`` grid values, a NumPy array or a torch tensor)
    over the unit square by the trapezoidal rule: the task's quantity of interest."""
    n = u.shape[-1]
    w = np.full(n, 1.0 / (n - 1))
    w[[0, -1]] *= 0.5
    weights = np.outer(w, w)
    if isinstance(u, np.ndarray):
        return (u * weights).sum((-2, -1))
    import torch
    return (u * torch.as_tensor(weights, dtype=u.dtype)).sum((-2, -1))


class _Ranks:
    """The communicator's rank, size and mpi4py handle (``PETSC_COMM_WORLD`` by default).

    The few lines of :class:`deq_petsc.science.parallel.DataParallel` a data build needs: that
    class lives a layer above the data (with the trainers' gradient sums), which data
    modules may not import (tests/test_layers.py)."""

    def __init__(self, comm=None):
        from petsc4py import PETSc
        self.comm = PETSc.COMM_WORLD if comm is None else comm
        self.mpi = self.comm.tompi4py()
        self.rank, self.size = self.comm.getRank(), self.comm.getSize()
        self.is_root = self.rank == 0


def _build(settings: BratuSettings, limit: int, seed: int, comm, progress: bool):
    """Every rank solves the draws ``rank::size``; all get the whole set (rows in draw order)."""
    dp = _Ranks(comm)
    thetas = settings.draws(limit, seed)
    mine = np.arange(dp.rank, limit, dp.size)
    fields, qoi, its, failures = solve_draws(settings, thetas[mine], progress and dp.is_root,
                                             desc=f"bratu solves (rank 0 of {dp.size})"
                                             if dp.size > 1 else "bratu solves")
    failures = [(int(mine[k]), lam, reason) for k, lam, reason in failures]
    if dp.size > 1:
        parts = dp.mpi.allgather((mine, fields, qoi, its, failures))
        fields = np.empty((limit, settings.n_outputs))
        qoi, its, failures = np.empty(limit), np.empty(limit, dtype=np.int64), []
        for rows, f, q, i, bad in parts:
            fields[rows], qoi[rows], its[rows] = f, q, i
            failures += bad
    if failures:
        failures.sort()
        k, lam, reason = failures[0]
        raise DEQInputError(
            f"bratu: {len(failures)} of {limit} draws have no solution the SNES found (first: "
            f"draw {k}, lambda {lam:.3f}: {reason}); past the fold (lambda about 6.8 without "
            f"a source) the lower branch ends: lower -pde_lambda_max (now "
            f"{settings.lambda_max:g}) or -pde_source (now {settings.source:g})")
    arrays = {"inputs": thetas, "fields": fields, "qoi": qoi,
              "ids": np.asarray([f"bratu-{seed}-{k}" for k in range(limit)]),
              "split": random_split(limit)}
    return arrays, {"attempted": limit, "skipped": [], "newton_its": float(its.mean())}


#: draws when --limit is not given (the full data set of this task)
DEFAULT_DRAWS = 4000


def _cache_options(settings: BratuSettings) -> dict:
    """The typed ``-pde_*`` options that change the data beyond :class:`BratuSettings`
    (the data SNES's tolerances, type, ...): part of the cache key. Monitors and views
    change nothing and are left out; each is marked used (a cache hit reads none)."""
    from petsc4py import PETSc

    from deq_petsc.core.petsc_options import changes_no_number
    opts = PETSc.Options()
    declared = set(settings.as_options())
    typed = {}
    for key in sorted(opts.getAll()):
        if key.startswith(PDE_PREFIX) and key not in declared:
            value = opts.getString(key, "")           # marks it used
            if not changes_no_number(key[len(PDE_PREFIX):]):
                typed[key] = value
    return typed


def options_of(params: dict) -> dict:
    """The ``-pde_*`` options a build's ``params`` were made with: what ``evaluate`` and
    ``--resume`` put back (beneath the command line) to rebuild a checkpoint's data."""
    return {**BratuSettings(params["grid"], params["lambda_max"], params["modes"],
                            params["source"]).as_options(), **params.get("pde_options", {})}


def load_field_task(name: str = "bratu", limit: int | None = None, seed: int = 0,
                    cache_dir=None, progress: bool = True, rebuild: bool = False,
                    comm=None, split_by: str = "random", n_jobs=None, csv=None) -> FieldData:
    """The Bratu data set of ``limit`` draws (collective over ``comm``, default
    ``PETSC_COMM_WORLD``): from the cache, or solved by all ranks and cached by rank 0.
    ``n_jobs`` and ``csv`` (the image tasks' build options) mean nothing here."""
    import torch

    settings = BratuSettings.from_options(comm)   # first: a typo is named before the rest
    if split_by != "random":
        raise DEQInputError(f"split_by {split_by!r}: the {name} task's draws are independent; "
                            f"it has the random split only")
    if limit is not None and limit < 10:
        raise DEQInputError(f"--limit {limit}: {name} needs at least 10 draws (80/10/10 "
                            f"split); 0 or none means {DEFAULT_DRAWS}")
    limit = limit or DEFAULT_DRAWS
    params = {"task": name, "version": PDE_VERSION, "grid": settings.grid,
              "lambda_max": settings.lambda_max, "modes": settings.modes,
              "source": settings.source, "limit": limit, "seed": seed,
              "pde_options": _cache_options(settings)}
    key = cache_key(params)
    dp = _Ranks(comm)
    cache = DatasetCache(cache_dir, required=("params", "attempted", "newton_its"),
                         arrays=PDE_ARRAYS)
    entry = None
    if dp.is_root and not rebuild:
        try:
            entry = cache.load(name, key)
        except DEQCacheError as err:
            print(f"deq_petsc.science.data: {err}; rebuilding", file=sys.stderr)
            cache.discard(name, key)
    entry = dp.mpi.bcast(entry, root=0) if dp.size > 1 else entry    # rank 0's answer
    cached = entry is not None
    if cached:
        arrays, meta = entry
        path = cache.path(name, key)
    else:
        arrays, meta = _build(settings, limit, seed, comm, progress)
        meta["params"] = params
        path = cache.store_or_warn(name, key, arrays, meta) if dp.is_root else \
            cache.path(name, key)
        dp.comm.barrier()
    return FieldData(task=name, channels=settings.parameter_names(),
                     images=torch.from_numpy(np.asarray(arrays["inputs"], dtype=np.float64)),
                     fields=np.asarray(arrays["fields"], dtype=np.float64),
                     qoi=np.asarray(arrays["qoi"], dtype=np.float64),
                     ids=[str(i) for i in arrays["ids"]], split_of=arrays["split"],
                     params=params, attempted=int(meta["attempted"]), from_cache=cached,
                     cache_path=str(path), newton_its=float(meta["newton_its"]))


#: the PDE surrogate tasks, by name: a loader ``(name, limit=, seed=, cache_dir=, comm=,
#: progress=, rebuild=) -> FieldData`` each (the registry idiom of the graph-image tasks)
FIELD_TASKS: Registry = Registry(
    "field task", group="deq_petsc.field_tasks",
    check=lambda name, loader: None if callable(loader) else _not_a_loader(name))


def _not_a_loader(name: str):
    raise TypeError(f"field task {name!r}: register a loader function")



FIELD_TASKS.register(load_field_task, name="bratu")
