"""Lean Picard and Anderson: PETSc ``SNES`` types whose vectors are the model's tensors.

Why they exist (docs/performance.md, "Passes over the state per iteration"):
PETSc's ``nrichardson`` and ``anderson`` work on double-precision ``Vec``\\ s on one
thread, and make 14 and 46 passes over the state per iteration where the
algorithms need 3 and ``2m + 3``; a float32 model's state is cast to double and
back on every ``f``. So on the demo's model Anderson needed 2.3x fewer ``f``
evaluations than Picard and still took longer. These types run the same
algorithms on the state as torch holds it -- the model's dtype, its device,
torch's threads -- with stored differences updated in place, and nothing else
changes: they are PETSc ``SNES`` types of type ``python``, so the options
database, ``-snes_monitor``, ``-snes_converged_reason``, ``-snes_view``, the
convergence history, the tolerances and the converged reasons are PETSc's own::

    -snes_type python -snes_python_type deq_petsc.core.lean.Anderson -snes_anderson_m 5
    -snes_type python -snes_python_type deq_petsc.core.lean.Picard

They read PETSc's own options for the same algorithm (``-snes_anderson_m``,
``-snes_anderson_beta``, ``-snes_linesearch_damping``, ``-snes_rtol``,
``-snes_atol``, ``-snes_max_it``, ``-snes_divergence_tolerance``) and one of
ours, ``-deq_sample_stop``. PETSc's step-length test (``-snes_stol``: ``||z_{k+1} -
z_k|| < stol ||z_{k+1}||``, an iterate that no longer moves) is taken once the
residual is near enough to the step tolerance for it to matter (:meth:`_Run.step_norms`),
not at every iteration as PETSc does, where it costs two passes over the state.

``batch``
    PETSc's stopping test on the norm of the whole batch; Anderson mixes over the
    whole batch, exactly as PETSc's ``anderson`` (same iterates, to rounding).
``worst``
    every sample to its own tolerance (``||F_i|| <= max(rtol ||F_i^0||, atol)``),
    the whole batch iterated until the worst one gets there; Anderson mixes per
    sample (its own least-squares problem per sample, as TorchDEQ's).
``each`` (the default)
    the same rule, and a sample stops costing ``f`` evaluations once it meets it:
    the batch shrinks to the samples still iterating (only for problems whose
    samples are independent, :attr:`FixedPointProblem.independent_samples`;
    otherwise ``worst``).

The SNES they drive must be a :class:`~deq_petsc.core.solver.DEQSolver`'s: they find the
cell, the state and the counters in its application context. The SNES's own vectors
hold the state only at the end of a solve, so a convergence test set by code (which
reads them) is refused, and ``-snes_monitor_solution`` shows the start; a lean type
takes no ``-npc_snes_type`` but can be PETSc's Anderson's preconditioner. The step
test's gate assumes a step about the size of the residual (Picard's): an Anderson
solve that stagnates with a large residual runs to ``-snes_max_it``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from petsc4py import PETSc

from .options_spec import LEAN as LEAN_OPTIONS

_REASON = PETSc.SNES.ConvergedReason
SAMPLE_STOPS = ("batch", "worst", "each")


class _Reduction:
    """Sums over the SNES's ranks (one distributed state): an identity on one rank."""

    def __init__(self, comm):
        self.mpi = comm.tompi4py() if comm.getSize() > 1 else None

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (float64, on the CPU) summed over the ranks."""
        if self.mpi is None:
            return values
        from mpi4py import MPI
        out = values.numpy().copy()
        self.mpi.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        return torch.from_numpy(out)

    def any(self, flag: bool) -> bool:
        if self.mpi is None:
            return flag
        from mpi4py import MPI
        return bool(self.mpi.allreduce(int(flag), op=MPI.MAX))


class _Samples:
    """The samples still iterating, and where each one's answer goes.

    ``rows`` are the active samples' indices in the full batch. ``blocks`` is how
    the state is cut for the per-sample rules (one row per sample) and for mixing
    (one block for the whole batch under ``batch``, else one per sample).
    """

    def __init__(self, z: torch.Tensor, mode: str):
        self.batch = z.shape[0] if z.dim() > 1 else 1
        self.mode = mode
        self.rows = torch.arange(self.batch, device=z.device)
        self.iterations = [0] * self.batch
        self.converged_at = [None] * self.batch

    @property
    def active(self) -> int:
        return int(self.rows.numel())

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (the active samples) as ``(blocks, n)``: one block, or one per sample
        (none on a rank whose samples have all stopped)."""
        if self.mode == "batch" or t.dim() < 2:
            return t.reshape(1, -1)
        return t.flatten(1)


class _LeanSNES:
    """What Picard and Anderson share: set-up from options, the solve loop, PETSc's
    monitors and reasons; a subclass says how one iterate becomes the next."""

    #: what ``-snes_view`` and the statistics call it
    name = "lean"

    def __init__(self):
        self.sample_stop = "each"

    # -- PETSc's python-type interface ----------------------------------------------
    def setFromOptions(self, snes):
        prefix = snes.getOptionsPrefix() or ""
        try:
            self.sample_stop = LEAN_OPTIONS.read(prefix)["deq_sample_stop"]
            self.read_options(PETSc.Options(prefix))
        except BaseException as err:     # kept for the solver to raise (PETSc keeps a code)
            ctx = snes.getApplicationContext()
            if ctx is not None and hasattr(ctx, "error"):
                ctx.error = ctx.error or err
            raise
        LEAN_OPTIONS.print_help(prefix, snes.getComm())
        from .petsc_options import OptionsHelp
        helper = OptionsHelp(f"SNES lean {self.name} (deq_petsc)", prefix, snes.getComm())
        for name, value, text in self.help_entries():
            helper.add(name, value, text, f"{__name__}.{type(self).__name__}")
        helper.print_if_requested()

    def read_options(self, opts):
        """The algorithm's own PETSc options."""

    def help_entries(self) -> list[tuple[str, object, str]]:
        """``(name, value, text)`` of the PETSc options :meth:`read_options` read, for
        ``-help`` (petsc4py cannot add them to PETSc's own listing)."""
        return []

    def view(self, snes, viewer):
        viewer.printfASCII(f"  {self.describe()} on the model's tensors (deq_petsc.core.lean); "
                           f"samples stop: {self.sample_stop}\n")

    def describe(self) -> str:
        return self.name

    def solve(self, snes, b, x):
        if b is not None:
            raise PETSc.Error(56)            # PETSC_ERR_SUP: z - f(z) = b is not a DEQ
        ctx = snes.getApplicationContext()
        if ctx is None or not hasattr(ctx, "lean_state"):
            raise RuntimeError(f"{type(self).__module__}.{type(self).__name__} drives a "
                               f"DEQSolver's SNES only (it needs the cell and the state)")
        try:
            if snes.getConvergenceTest() is not None:
                from .errors import DEQOptionsError
                raise DEQOptionsError(
                    "a convergence test set by code (SNES.setConvergenceTest) reads the "
                    "SNES's vectors, which the lean types fill only at the end of a solve; "
                    "use PETSc's own type (-snes_type anderson or nrichardson)")
            if snes.hasNPC():
                from .errors import DEQOptionsError
                raise DEQOptionsError(
                    f"-{snes.getOptionsPrefix() or ''}npc_snes_type: the lean types take no "
                    f"nonlinear preconditioner; they can be one (-npc_snes_type python "
                    f"-npc_snes_python_type deq_petsc.core.lean.Picard under PETSc's anderson)")
            z = ctx.lean_state(x)
            run = _Run(self, snes, ctx, z, want_residual=z is not ctx.state)
            run.loop()
            ctx.lean_finished(snes, x, run)
        except BaseException as err:         # PETSc would keep only an error code
            ctx.error = ctx.error or err
            raise

    # -- the algorithm ----------------------------------------------------------------
    def start(self, run: "_Run"):
        """Before the first iteration: allocate what the method keeps."""

    def residual_out(self, run: "_Run") -> torch.Tensor | None:
        """Where the next ``F`` goes, as ``(blocks, n)`` (``None``: a new tensor)."""
        return None

    def squared_norms(self, run: "_Run", F) -> torch.Tensor | None:
        """``||F||^2`` per block if the method computes it anyway (``None``: it doesn't)."""
        return None

    def next_iterate(self, run: "_Run", z, fz, F) -> torch.Tensor:
        raise NotImplementedError

    def compact(self, fill: torch.Tensor, src: torch.Tensor, count: int):
        """Samples have stopped: what is kept per sample moves from rows ``src`` to rows
        ``fill`` (of the active ones), and the first ``count`` rows are kept."""


class _Run:
    """One solve: the loop shared by every lean type, with PETSc's bookkeeping."""

    def __init__(self, method: _LeanSNES, snes, ctx, z_out: torch.Tensor,
                 want_residual: bool = False):
        self.method, self.snes, self.ctx, self.z_out = method, snes, ctx, z_out
        #: the residual at the answer, for a caller that reads the SNES's function
        #: (PETSc's Anderson, of its nonlinear preconditioner)
        self.F_out = torch.empty_like(z_out) if want_residual else None
        self.reduce = _Reduction(snes.getComm())
        mode = method.sample_stop
        if mode == "each" and (not ctx.problem.independent_samples or z_out.dim() < 2):
            mode = "worst"             # samples that cannot leave the batch alone
        self.samples = _Samples(z_out, mode)
        self.problem = ctx.problem
        rtol, atol, stol, max_it = snes.getTolerances()
        self.rtol, self.atol, self.max_it = rtol, atol, int(max_it)
        # a state at its rounding floor moves by a few ulps: a float32 iterate never makes
        # a step under 1e-8 of itself, so the step test is no shorter than 10 ulps
        self.stol = max(stol, self.STEP_ULPS * torch.finfo(z_out.dtype).eps) if stol > 0 else 0.0
        self.step = None                   # (||z'||, ||z' - z||) of the last step, if taken
        self.x_norm = 0.0                  # ||z|| lately (batch), or per sample:
        self.x_norms = torch.zeros(self.samples.batch, dtype=torch.float64)
        self.short_steps = 0               # samples that stopped on a short step
        self.relative_stops = 0            # ... on -snes_rtol (the others: -snes_atol)
        self.divtol = snes.getDivergenceTolerance()
        self.sample_norms0 = None          # per sample, for the per-sample rule
        self.sample_norms = None           # last norm of every sample (frozen ones too)

    @property
    def mode(self) -> str:
        return self.samples.mode

    # -- norms ------------------------------------------------------------------------
    def norms(self, F: torch.Tensor):
        """``(total norm, per-sample norms of the active samples or None)``: from the
        method when it has them (Anderson's Gram matrix), else in one pass.

        A rank's samples are its own (each rank's tensor is its local batch): the
        per-sample norms are local, the total is summed over the ranks. In batch mode
        the method's norm is already summed over them.
        """
        # under batch the method's products are summed over the ranks: every rank takes
        # part, one whose share of the batch is empty too (with zero-size tensors)
        given = self.method.squared_norms(self, F) \
            if F.numel() or self.mode == "batch" else None
        measured = self._norms(F) if given is None else None
        if self.mode == "batch":
            total = math.sqrt(float(given.sum())) if given is not None else measured
        else:
            per = given.clamp_min(0).sqrt() if given is not None else measured
            self.sample_norms[self.samples.rows.cpu()] = per
            local = self.sample_norms.square().sum()
            total = math.sqrt(float(self.reduce.sum(local.reshape(1).cpu())[0]))
        if not math.isfinite(total):
            self.ctx.lean_nonfinite()
        return total, (None if self.mode == "batch" else per)

    def mixing_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Inner products of the mixing: summed over the ranks when the whole batch is
        one block, local when each sample is its own."""
        return self.reduce.sum(values) if self.mode == "batch" else values

    # -- PETSc's bookkeeping ----------------------------------------------------------
    def report(self, it: int, fnorm: float):
        snes = self.snes
        snes.setIterationNumber(it)
        snes.setFunctionNorm(fnorm)
        snes.logConvergenceHistory(fnorm, 0)
        snes.monitor(it, fnorm)

    def petsc_test(self, it: int, fnorm: float) -> int:
        """PETSc's convergence test (with any the user set) on the whole batch's norm, with
        the step's norms when they were taken (:meth:`step_norms`), else none (``xnorm =
        ynorm = 0``: no step-length test at this iteration)."""
        xnorm, ynorm = (0.0, 0.0) if self.step is None or self.mode != "batch" else self.step
        if ynorm and ynorm < self.stol * xnorm:     # this tolerance, not PETSc's -snes_stol
            ynorm = 0.0
            xnorm = 1.0
        return int(self.snes.callConvergenceTest(it, xnorm, ynorm, fnorm))

    def sample_test(self, it: int, fnorm: float, per: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The per-sample rule: ``(reason, which active samples meet it)``: a sample is done
        when ``||F_i|| <= max(rtol ||F_i^0||, atol)``, or when its step was short
        (``||z_i' - z_i|| < stol ||z_i'||``). PETSc's test still decides divergence
        (NaN, ``-snes_divergence_tolerance``, a user's test)."""
        if it == 0:
            self.sample_norms0 = per.clone()
        reason = self.petsc_test(it, fnorm)
        if reason < 0 and reason != _REASON.DIVERGED_MAX_IT:
            return reason, torch.zeros_like(per, dtype=torch.bool)
        target = torch.clamp(self.rtol * self.sample_norms0[self.samples.rows.cpu()],
                             min=self.atol)
        done = per <= target
        self.relative_stops += int((done & (per > self.atol)).sum())
        if self.step is not None:
            xnorm, ynorm = self.step
            short = (ynorm < self.stol * xnorm) & ~done
            self.short_steps += int(short.sum())
            done |= short
        all_done = not self.reduce.any(not bool(done.all()))
        if not all_done:
            return 0, done
        if self.reduce.any(self.short_steps > 0):
            return _REASON.CONVERGED_SNORM_RELATIVE, done
        if self.reduce.any(self.relative_stops > 0):
            return _REASON.CONVERGED_FNORM_RELATIVE, done
        return _REASON.CONVERGED_FNORM_ABS, done          # every sample under -snes_atol

    #: the shortest step tolerance, in units of the state's machine epsilon
    STEP_ULPS = 10.0
    #: the step-length test is taken once the residual is within this factor of it
    STEP_TEST_MARGIN = 100.0
    #: how often (iterations) the state's norm it compares with is refreshed
    STEP_NORM_REFRESH = 10

    def step_norms(self, it: int, z, z_next, fnorm: float, per):
        """``(||z'||, ||z' - z||)`` (per sample but under ``batch``) for PETSc's step-length
        test, ``None`` where it cannot matter.

        PETSc's Picard and Anderson take both norms every iteration (two more passes
        over the state); the test stops a solve whose iterate no longer moves (at the
        rounding floor of a tight tolerance, where Anderson's least-squares problem is
        all rounding and its iterates wander). A fixed-point step is the size of the
        residual, so the test can only end a solve once ``||F|| < 100 stol ||z||``:
        the norms are taken from there on, and ``||z||`` every 10 iterations to know
        where that is.
        """
        if self.stol <= 0 or not self.samples.active and self.mode == "each":
            return None
        refresh = it % self.STEP_NORM_REFRESH == 0
        batch = self.mode == "batch"
        cached = self.x_norm if batch else self.x_norms[self.samples.rows.cpu()]
        level = fnorm if batch else per
        below = level < self.STEP_TEST_MARGIN * self.stol * cached
        gate = self.reduce.any(bool(below)) if batch else bool(below.any())
        if not (gate or refresh):
            return None
        xnorm = self._norms(z_next)
        if batch:
            self.x_norm = xnorm
        else:
            self.x_norms[self.samples.rows.cpu()] = xnorm
        if not gate:
            return None
        return xnorm, self._norms(z_next - z)

    def _norms(self, t: torch.Tensor):
        """The norm of the batch (summed over the ranks) or of each active sample, in
        the state's own dtype (a float64 norm of a float32 state would cast it first)."""
        if self.mode == "batch":
            local = torch.linalg.vector_norm(t.reshape(-1)).to(torch.float64).square()
            return math.sqrt(float(self.reduce.sum(local.reshape(1).cpu())[0]))
        if not t.numel():
            return torch.zeros(0, dtype=torch.float64)
        return torch.linalg.vector_norm(self.samples.split(t), dim=1
                                        ).to(torch.float64).cpu()

    # -- the loop ---------------------------------------------------------------------
    def evaluate(self, z: torch.Tensor) -> torch.Tensor:
        return self.ctx.lean_f(self.problem, z, self.samples.active)

    def residual(self, z, fz) -> torch.Tensor:
        """``F = z - f(z)``, written where the method keeps it (one pass)."""
        out = self.method.residual_out(self)
        if out is None:
            return torch.sub(z, fz)
        split = self.samples.split
        torch.sub(split(z), split(fz), out=out)
        return out.view(z.shape)

    def loop(self) -> int:
        method, samples = self.method, self.samples
        z = self.z_out.clone() if samples.mode == "each" else self.z_out
        if self.mode != "batch":
            self.sample_norms = torch.zeros(samples.batch, dtype=torch.float64)
        method.start(self)
        reason, it = 0, 0
        while True:
            if samples.active:
                fz = self.evaluate(z)
                F = self.residual(z, fz)
            elif self.mode == "batch":              # an empty share: zero-size F, in place
                fz = z
                F = self.residual(z, fz)
            else:                                   # this rank's samples are all done
                fz = F = z
            fnorm, per = self.norms(F)
            self.report(it, fnorm)
            if not math.isfinite(fnorm):            # PETSc's test refuses a NaN norm
                reason = _REASON.DIVERGED_FUNCTION_NANORINF
            elif self.mode == "batch":
                reason = self.petsc_test(it, fnorm)
            else:
                reason, done = self.sample_test(it, fnorm, per)
                self._mark(done, it)
                if self.mode == "each" and bool(done.any()) and reason == 0:
                    z, fz, F, per = self._stop(done, z, fz, F, per)
            if reason == 0 and it >= self.max_it:
                reason = _REASON.DIVERGED_MAX_IT
            if reason:
                break
            z_next = method.next_iterate(self, z, fz, F) \
                if samples.active or self.mode == "batch" else z
            self.step = self.step_norms(it, z, z_next, fnorm, per)
            z = z_next
            it += 1
        self._finish(z, F, it)
        self.snes.setConvergedReason(reason)
        return reason

    def _mark(self, done: torch.Tensor, it: int):
        s = self.samples
        for i, row in zip(done.tolist(), s.rows.tolist()):
            if i and s.converged_at[row] is None:
                s.converged_at[row] = it

    def _stop(self, done, z, fz, F, per):
        """Write the samples that are done into the answer and iterate the rest only.

        The samples left are moved to the front by swapping (the last ones still
        iterating into the places of those done), so that what a method stores per
        sample moves only as many rows as samples stop: a solve moves its history at
        most once in all, not once per sample that stops.
        """
        s = self.samples
        done_dev = done.to(z.device)
        self.z_out[s.rows[done_dev]] = z[done_dev]
        if self.F_out is not None:
            self.F_out[s.rows[done_dev]] = F[done_dev]
        count = s.active - int(done.sum())
        position = torch.arange(s.active)
        fill = position[done & (position < count)]          # places freed at the front
        src = position[~done & (position >= count)]         # the samples that move there
        order = position.clone()
        order[fill] = src
        keep = order[:count].to(z.device)
        s.rows = s.rows[keep]
        self.problem = self.ctx.problem.select(s.rows)
        self.method.compact(fill.to(z.device), src.to(z.device), count)
        return z[keep], fz[keep], F[keep], per[keep.cpu()]

    def _finish(self, z: torch.Tensor, F: torch.Tensor, it: int):
        s = self.samples
        if self.mode == "each":
            if s.active:
                self.z_out[s.rows] = z
                if self.F_out is not None:
                    self.F_out[s.rows] = F
        else:
            if z is not self.z_out:
                self.z_out.copy_(z)
            if self.F_out is not None:
                self.F_out.copy_(F)
        s.iterations = [it if c is None else c for c in s.converged_at]


class Picard(_LeanSNES):
    """``z <- z - lambda F(z)``; with ``lambda = 1`` the new iterate is ``f(z)`` itself.

    ``-snes_linesearch_damping`` is ``lambda``, as for ``-snes_type nrichardson
    -snes_linesearch_type basic``, whose iterates it repeats.
    """

    name = "picard"

    def read_options(self, opts):
        self.damping = opts.getReal("snes_linesearch_damping", 1.0)

    def describe(self) -> str:
        return f"picard (damping {self.damping:g})"

    def help_entries(self):
        return [("snes_linesearch_damping", self.damping, "Step length lambda: z <- z - "
                 "lambda F(z)")]

    def next_iterate(self, run, z, fz, F):
        if self.damping == 1.0:
            return fz
        return torch.add(z, F, alpha=-self.damping)


class Anderson(_LeanSNES):
    """Anderson mixing over the last ``m`` iterates, as PETSc's ``anderson``.

    With ``G(z) = z - beta F(z)``, the new iterate is the affine combination
    ``sum_i a_i G_i`` of the current and the last ``m`` iterates' ``G`` whose
    combined residual ``sum_i a_i F_i`` is least in norm: PETSc's algorithm, with
    its normal equations (``H = Q - xi - xi^T + nu`` from the Gram matrix ``Q`` of
    the stored residuals), solved per block by SVD with PETSc's cut-off (singular
    values under the state's machine epsilon times the largest dropped, as
    LAPACK's ``gelss`` with ``rcond = -1`` does for PETSc).

    Per iteration, beyond ``f``: ``F`` written into the residuals' ring (3 passes
    over the state), the new row of ``Q`` in one product, which gives ``||F||``
    as well (``m + 1``), ``G`` into its ring (2), the new iterate in one product
    (``m + 2``): ``2m + 8``, where PETSc's implementation makes 46 passes at
    ``m = 5`` (docs/performance.md). The small algebra is in double precision.
    """

    name = "anderson"

    def read_options(self, opts):
        self.m = opts.getInt("snes_anderson_m", 30)
        self.beta = opts.getReal("snes_anderson_beta", 1.0)
        if self.m < 1:
            from .errors import DEQOptionsError
            raise DEQOptionsError(f"-snes_anderson_m {self.m}: must be at least 1")

    def describe(self) -> str:
        return f"anderson (m {self.m}, beta {self.beta:g})"

    def help_entries(self):
        return [("snes_anderson_m", self.m, "Number of stored previous iterates"),
                ("snes_anderson_beta", self.beta, "Relaxation: G(z) = z - beta F(z)")]

    def start(self, run):
        blocks = run.samples.split(run.z_out)
        size = (blocks.shape[0], self.m + 1, blocks.shape[1])
        # slots fill in order, and only the first ``filled`` are ever read
        self.F = blocks.new_empty(size)           # residuals, current and stored
        self.G = blocks.new_empty(size)           # their G = z - beta F
        self.Q = np.zeros((size[0], size[1], size[1]))   # small: NumPy, double
        self.slot = 0                             # where the current residual is
        self.filled = 0                           # slots holding a residual

    def residual_out(self, run):
        return self.F[:, self.slot]

    def squared_norms(self, run, F) -> torch.Tensor:
        """The new row of ``Q`` (the residual against the stored ones), of which
        ``||F||^2`` per block is the diagonal entry."""
        s = self.slot
        self.filled = n = min(self.filled + 1, self.m + 1)
        F_ring = self.F if self.F.dtype.itemsize >= 4 else self.F.float()   # no fp16 overflow
        row = torch.bmm(F_ring[:, :n], F_ring[:, s].unsqueeze(2)).squeeze(2)
        row = run.mixing_sum(row.to(torch.float64).cpu()).numpy()
        self.Q[:, s, :n] = row
        self.Q[:, :n, s] = row
        return torch.from_numpy(row[:, s].copy())

    def compact(self, fill, src, count):
        self.F, self.G = (_compact(t, fill, src, count) for t in (self.F, self.G))
        fill, src = fill.cpu().numpy(), src.cpu().numpy()
        if fill.size:
            self.Q[fill] = self.Q[src]
        self.Q = self.Q[:count]

    def next_iterate(self, run, z, fz, F):
        s, n = self.slot, self.filled
        Gs = self.G[:, s]
        if self.beta == 1.0:
            Gs.copy_(run.samples.split(fz))
        else:
            torch.add(run.samples.split(z), run.samples.split(F), alpha=-self.beta, out=Gs)
        self.slot = (s + 1) % (self.m + 1)
        if n == 1:
            return fz if self.beta == 1.0 else Gs.reshape(z.shape).clone()
        a = _anderson_coefficients(self.Q[:, :n, :n], s, Gs.dtype)
        a = a.to(device=Gs.device, dtype=Gs.dtype).unsqueeze(1)
        return torch.bmm(a, self.G[:, :n]).reshape(z.shape)


def _compact(t: torch.Tensor, fill: torch.Tensor, src: torch.Tensor, count: int):
    """Rows ``src`` of ``t`` copied to rows ``fill``, the first ``count`` rows kept (a view)."""
    if fill.numel():
        t[fill] = t[src]
    return t[:count]


def _anderson_coefficients(Q: np.ndarray, s: int, dtype: torch.dtype) -> torch.Tensor:
    """``a`` (per block, summing to one) minimising ``||sum_i a_i F_i||`` given the Gram
    matrix ``Q`` of the ``F_i``, ``s`` the current one: PETSc's normal equations in
    ``alpha`` (the stored ones' coefficients), ``a_s = 1 - sum(alpha)``, solved by the
    pseudo-inverse (``H`` is symmetric: its eigenvalues are its singular values) with
    those under ``eps(dtype)`` times the largest cut off (LAPACK's ``gelss`` with
    ``rcond = -1`` for PETSc). NumPy: a few ``m x m`` matrices,
    where torch's per-call overhead would cost more than the arithmetic."""
    n = Q.shape[1]
    others = [i for i in range(n) if i != s]
    xi = Q[:, s, others]                                   # <F_s, F_i>
    nu = Q[:, s, s][:, None]
    H = Q[:, others][:, :, others] - xi[:, :, None] - xi[:, None, :] + nu[:, :, None]
    w, V = np.linalg.eigh(H)                               # H is symmetric
    keep = np.abs(w) > torch.finfo(dtype).eps * np.abs(w).max(axis=1, keepdims=True)
    coef = np.einsum("bji,bj->bi", V, nu - xi)
    coef = np.divide(coef, w, out=np.zeros_like(coef), where=keep)
    alpha = np.einsum("bij,bj->bi", V, coef)
    a = np.empty((Q.shape[0], n))
    a[:, others] = alpha
    a[:, s] = 1.0 - alpha.sum(1)
    return torch.from_numpy(a)


def snes_method(snes) -> str:
    """The SNES's type, a lean type by its own name (``lean-anderson``), not ``python``."""
    kind = snes.getType()
    if kind == "python":
        context = snes.getPythonContext()
        return f"lean-{getattr(context, 'name', type(context).__name__.lower())}"
    return kind


#: The lean types by the name the solver sets and the docs use.
TYPES = {"picard": Picard, "anderson": Anderson}


def options(name: str) -> dict:
    """The options that select a lean type: ``{"snes_type": "python", ...}``."""
    cls = TYPES[name]
    return {"snes_type": "python", "snes_python_type": f"{__name__}.{cls.__name__}"}
