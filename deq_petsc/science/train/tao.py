"""Training with PETSc TAO: ``-tao_type`` picks the training algorithm as ``-snes_type`` picks the solver.

The PETScML idea: scientific-ML losses are smooth, so the classic methods of
unconstrained minimisation -- L-BFGS (``lmvm``, ``blmvm``), Newton-CG with a
line search (``nls``, ``bnls``) or a trust region (``ntr``, ``bntr``),
Gauss-Newton for least squares (``brgn``) -- are training algorithms too.

* The parameters are one PETSc ``Vec`` (:mod:`.tao_problem`, with TAO's
  callbacks). In float64 (the TAO trainer's default) the model's parameters
  are views of whichever vector TAO evaluates at, so nothing is copied; a
  float32 model gets one cast per evaluation.
* Objective and gradient come from torch over the epoch's (large) batch, in
  chunks; through a DEQ the gradient is the implicit one (adjoint KSP).
* Hessians are python ``Mat``s: ``-train_hessian gauss-newton`` (default;
  ``J^T H_out J`` from a tangent and an adjoint solve per chunk, PSD -- PETScML's
  method of choice with a trust region) or ``exact`` (double backward; explicit
  networks only). ``brgn`` gets the residual and its Jacobian as a python ``Mat``.
* One TAO solve per epoch (``-tao_max_it`` iterations, 20 unless given) from
  the current weights, so a resumed run repeats an uninterrupted one. Reaching
  ``-tao_max_it`` is the epoch's budget; any other negative converged reason
  raises :class:`~deq_petsc.core.errors.DEQConvergenceError` naming it, leaving the
  last checkpoint as it was (``-train_accept_failure`` keeps the iterate instead).
* A line search or trust region that can make no more progress at a stationary
  point (:func:`at_stationary_point`) has found an optimum, not failed: such a
  solve counts as converged, whichever BLAS kernel's rounding ended it there.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from petsc4py import PETSc

from deq_petsc.core.convergence import solve_accepted
from deq_petsc.process.c_output import silenced
from deq_petsc.core.errors import DEQConvergenceError, DEQOptionsError
from ..inference import model_device, predict
from deq_petsc.core.options_spec import TAO_TRAINER as TAO_TRAINER_OPTIONS
from deq_petsc.core.outcome import SolveOutcome
from ..parallel import DataParallel
from deq_petsc.core.petsc_options import inserted_defaults, options_checked, tao_reason_name
from .curvature import HESSIANS, ParameterSlices
from .tao_problem import ParameterVector, TrainingProblem
from .trainer import Trainer

#: Program defaults of the TAO solve of each epoch (the command line wins).
TAO_DEFAULTS = {"tao_type": "lmvm", "tao_max_it": 20}
#: Line searches compare objective values and quasi-Newton updates difference
#: gradients, so the DEQ solves behind them must be tighter than for Adam.
TAO_SOLVER_OPTIONS = {"snes_rtol": 1e-6}
TAO_ADJOINT_OPTIONS = {"ksp_rtol": 1e-6}
#: Inner Krylov iterations of Newton-type methods (nls, ntr, bnls, bntr, ...) per step,
#: unless -tao_<type>_ksp_max_it says otherwise: truncated Newton, as Hessian-free
#: training does; every product costs a tangent and an adjoint solve through a DEQ.
NEWTON_KSP_MAX_IT = 10


@dataclass
class TaoResult(SolveOutcome):
    """How one TAO training solve ended: ``method`` is the TAO type, ``residual_norms``
    the gradient norm at each monitored iterate, ``time`` the seconds of ``TAO.solve``."""

    objective: float = math.nan
    gradient_norm: float = math.nan
    counts: dict = field(default_factory=dict)     # callback name -> calls
    seconds: dict = field(default_factory=dict)    # callback name -> seconds in it
    history: list = field(default_factory=list)    # (its, objective, |g|, seconds) per monitor

    #: a line search or trust region that stopped at a stationary point (an optimum
    #: found to the objective's precision, :func:`at_stationary_point`)
    stationary: bool = False

    RESIDUAL = "||g||"
    KIND = "TAO "
    DERIVED = SolveOutcome.DERIVED + ("tao_type",)

    @property
    def converged(self) -> bool:
        return self.reason > 0 or self.stationary

    @property
    def tao_type(self) -> str:
        """The TAO type: ``method`` under its training name."""
        return self.method

    def _cost_summary(self) -> str:
        calls = ", ".join(f"{n} {name}" for name, n in self.counts.items() if n)
        where = " at a stationary point" if self.stationary else ""
        return f"{where}, objective {self.objective:.6g}" + (f" ({calls})" if calls else "")


#: TAO's reasons for "no step lowers the objective any more": at a stationary point
#: that is an optimum found to the objective's precision, elsewhere a failure.
NO_PROGRESS = ("DIVERGED_LS_FAILURE", "DIVERGED_TR_REDUCTION")


def at_stationary_point(reason_name: str, objective: float, gradient_norm: float,
                        history: list, tolerances=(0.0, 0.0, 0.0), eps: float | None = None) -> bool:
    """Whether a TAO solve that ended for want of progress (:data:`NO_PROGRESS`) ended
    at a stationary point rather than short of one.

    Near a minimiser ``x*`` a step can lower ``f`` by at most about
    ``||g||^2 / (2 L)`` (``L`` the curvature), and a line search cannot see a
    decrease below the objective's rounding, ``eps |f|``: it fails once
    ``||g|| < sqrt(2 L eps |f|)``, where the iterate is an optimum to working
    precision. ``L`` is read off the first monitored iterate (``f0``, ``g0`` in
    ``history``): for a quadratic ``f0 - f* = ||g0||^2 / (2 L)`` along the
    gradient, so the floor is ``||g0|| sqrt(eps |f| / (f0 - f))``, with a factor of
    10 for curvature that is not uniform. Where exactly a line search gives up
    there depends on the BLAS kernel's rounding (an AVX-512 OpenBLAS and a
    Haswell one end the same solve one way and the other), so this test, not the
    reason, says whether the optimum was found. A stall that barely lowered ``f``
    (a noisy gradient) would make the floor large: the gradient must also have fallen
    by ``sqrt(eps)`` from ``g0``. ``tolerances`` are TAO's ``(gatol, grtol, gttol)``: a
    gradient within them is stationary too.
    """
    if reason_name not in NO_PROGRESS or not history or not math.isfinite(gradient_norm):
        return False
    eps = float(np.finfo(np.float64).eps) if eps is None else eps
    _, f0, g0, *_ = history[0]
    gatol, grtol, gttol = tolerances
    if gradient_norm <= max(gatol, grtol * abs(objective), gttol * g0):
        return True
    drop = f0 - objective
    floor = 10 * g0 * math.sqrt(eps * abs(objective) / drop) if drop > 0 else 0.0
    # the curvature estimate assumes f came down to its minimum; a line search that
    # stalls on a noisy gradient has barely moved f, which overestimates the floor: the
    # gradient must also have fallen by sqrt(eps) from the start, as it does at an optimum
    return gradient_norm <= min(floor, math.sqrt(eps) * g0)


@contextmanager
def _quiet_unless_root(dp: DataParallel):
    """Silence stdout (C level) on ranks other than 0 while their TAO replica runs,
    so -tao_monitor and friends print once."""
    if dp.is_root:
        yield
        return
    with silenced(1):
        yield


def _newton_ksp_defaults(tao) -> dict:
    """Cap the Newton methods' inner Krylov solve (each product costs solves through a DEQ)."""
    if tao.getType() == PETSc.TAO.Type.BRGN:
        # its Newton solve is a sub-TAO (bnls), whose KSP takes the prefix tao_bnk_ only
        # in setFromOptions
        return {f"{tao.getBRGNSubsolver().getOptionsPrefix()}tao_bnk_ksp_max_it":
                NEWTON_KSP_MAX_IT}
    ksp = tao.getKSP()
    if ksp is None or not ksp.handle:      # quasi-Newton and first-order types have none
        return {}
    return {f"{ksp.getOptionsPrefix() or ''}ksp_max_it": NEWTON_KSP_MAX_IT}


class TaoTraining:
    """The TAO training of one model: the parameter ``Vec``, the problem (callbacks) and
    the TAO with its Hessian or Jacobian ``Mat``, owned together from set-up to
    :meth:`destroy`, as :class:`~deq_petsc.core.solver.DEQSolver` owns its SNES.

    Each :meth:`solve` starts from the model's parameters at that moment (an epoch's
    from the last epoch's solution, or a checkpoint's), with fresh counts, and leaves
    the solution in the model. A second solve gets a TAO set up afresh (a millisecond
    beside an epoch): PETSc's TAO keeps state between ``TaoSolve`` calls in some types.
    Solved twice, 3 iterations each on a 10-variable Rosenbrock function, one TAO
    ends up to 0.07 (``lmvm``, even without ``-tao_lmvm_recycle``), 0.19 (``bntr``)
    and 0.013 (``bnls``) away from a fresh TAO started at the first solve's solution
    (PETSc 3.26; ``blmvm``, ``nls``, ``ntr`` and ``cg`` agree to the last bit; the
    test ``test_a_tao_solved_twice_is_not_a_fresh_one`` watches this). An epoch then
    depends on the epochs before it only through the weights, so a resumed run
    repeats an uninterrupted one.
    """

    def __init__(self, model, objective, images, targets, prefix: str = "", comm=None,
                 hessian: str = "gauss-newton", chunk: int = 256, on_model_call=None,
                 defaults: dict | None = None):
        _check_hessian(hessian, prefix)
        self.objective, self.prefix = objective, prefix
        self.dp = DataParallel(PETSc.COMM_SELF if comm is None else comm)
        self.defaults = {**TAO_DEFAULTS, **(defaults or {})}
        self.tao: PETSc.TAO | None = None
        self._mats: list = []
        self.solved = False
        self.rows: int | None = None          # brgn: residual rows (one per sample and output)
        self.on_model_call = on_model_call
        self.params = ParameterVector(ParameterSlices(model), self.dp)
        try:
            self.problem = TrainingProblem(model, objective, images, targets, self.params,
                                           hessian, chunk=chunk, on_model_call=on_model_call)
            self._set_up()
        except BaseException:
            self.destroy()
            raise

    def _set_up(self) -> None:
        problem, prefix = self.problem, self.prefix
        defaults = dict(self.defaults)
        tao = self.tao = PETSc.TAO().create(comm=PETSc.COMM_SELF)      # one replica per rank
        tao.setOptionsPrefix(prefix)
        tao_type = PETSc.Options(prefix).getString("tao_type", defaults.pop("tao_type"))
        with options_checked(tao, "the TAO trainer"):      # -tao_type foo: one line
            tao.setType(tao_type)
        n = self.params.layout.numel
        if tao_type == PETSc.TAO.Type.BRGN:
            if not hasattr(self.objective, "residual"):
                raise DEQOptionsError("-tao_type brgn is Gauss-Newton for least squares: "
                                      "train with --objective regress")
            rows = self.rows = problem.n * self.objective.out_dim
            R = PETSc.Vec().createSeq(rows, comm=PETSc.COMM_SELF)
            self._mats.append(R)
            J = PETSc.Mat().createPython(((rows, rows), (n, n)),
                                         context=TrainingProblem.LossResidualJacobian(problem),
                                         comm=PETSc.COMM_SELF)
            self._mats.append(J)
            J.setUp()
            tao.setResidual(problem.residual, R)
            tao.setJacobianResidual(problem.jacobian_residual, J, J)
        else:
            self.rows = None                  # the products do not depend on the batch
            H = PETSc.Mat().createPython(((n, n), (n, n)), context=problem,
                                         comm=PETSc.COMM_SELF)
            H.setUp()
            self._mats.append(H)
            tao.setObjective(problem.objective_value)
            tao.setObjectiveGradient(problem.objective_gradient, None)
            tao.setHessian(problem.hessian, H, H)
        tao.setUpdate(problem.update)
        tao.setMonitor(problem.monitor)
        if tao_type == PETSc.TAO.Type.BRGN:      # its iterations are the sub-solver's
            tao.getBRGNSubsolver().setMonitor(problem.monitor)
        tao.setSolution(self.params.vec)
        with inserted_defaults(prefix, defaults), \
                inserted_defaults("", _newton_ksp_defaults(tao)), \
                options_checked(tao, "the TAO trainer"):
            tao.setFromOptions()

    def _tear_down(self) -> None:
        if self.tao is not None:
            self.tao.destroy()
            self.tao = None
        for obj in self._mats:
            obj.destroy()
        self._mats = []

    def solve(self, images=None, targets=None, deadline: float | None = None,
              on_iterate=None, accept_max_it: bool = False, accept_failure: bool = False,
              on_model_call=None) -> TaoResult:
        """Minimise over the batch given (or the last one) from the model's parameters.

        ``deadline`` (a ``time.perf_counter()`` value) stops the solve with
        ``CONVERGED_USER`` at the first iterate after it; ``on_iterate(its, seconds,
        parameters)`` is called at every monitored iterate. A negative converged reason
        raises :class:`DEQConvergenceError` naming it, except ``DIVERGED_MAXITS`` with
        ``accept_max_it`` (a training epoch's budget) and any with ``accept_failure``.
        """
        problem = self.problem
        if images is not None:
            problem.load(images, targets)
        else:
            problem.reset()
        # a fresh TAO for a second solve (see the class's docstring), and for brgn when the
        # batch has another number of samples (one residual row each)
        if self.solved or self.rows not in (None, problem.n * self.objective.out_dim):
            self._tear_down()
            self._set_up()
        self.solved = True
        problem.deadline, problem.on_iterate = deadline, on_iterate
        problem.on_model_call = on_model_call or self.on_model_call or (lambda: None)
        tao, params = self.tao, self.params
        params.take_model()
        start = time.perf_counter()
        try:
            try:
                with _quiet_unless_root(self.dp):
                    tao.solve()
            except PETSc.Error:
                if problem.error is not None:
                    raise problem.error from None
                raise
            elapsed = time.perf_counter() - start
            params.bind(params.vec)        # the solution (the last evaluation may be a trial)
        finally:
            params.release()               # the model keeps its own copy between solves
            problem.release()
        its, f, gnorm, *_ = tao.getSolutionStatus()
        reason = int(tao.getConvergedReason())
        name = tao_reason_name(reason)
        stationary = at_stationary_point(name, float(f), float(gnorm), problem.history,
                                         tao.getTolerances(),
                                         float(np.finfo(PETSc.RealType).eps))
        result = TaoResult(tao.getType(), reason, name, int(its),
                           [h[2] for h in problem.history], elapsed, objective=float(f),
                           gradient_norm=float(gnorm), counts=dict(problem.counts),
                           seconds=dict(problem.seconds),
                           history=problem.history, stationary=stationary)
        finite = math.isfinite(result.objective)
        if not (accept_failure or solve_accepted(result.reason >= 0 or result.stationary,
                                                 result.reason_name,
                                                 accept_max_it, finite)):
            hint = objective_hint(result.reason_name, self.prefix)
            raise DEQConvergenceError.of(
                f"TAO {result.tao_type} did not converge: {result.reason_name} after "
                f"{result.iterations} iterations (objective {result.objective:.6g}, gradient "
                f"norm {result.gradient_norm:.3e}); {hint}",
                result, history=[h[1] for h in result.history])
        return result

    def destroy(self) -> None:
        """Free the TAO, its matrices and the parameter ``Vec`` (the model keeps its
        parameters); safe to call twice."""
        self._tear_down()
        if getattr(self, "problem", None) is not None:
            self.problem.release()
        if self.params is not None:
            self.params.release()
            self.params.destroy()
            self.params = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()


def train_tao(model, objective, images, targets, prefix: str = "", comm=None,
              hessian: str = "gauss-newton", chunk: int = 256, accept_max_it: bool = False,
              accept_failure: bool = False, on_model_call=None, defaults: dict | None = None,
              deadline: float | None = None, on_iterate=None) -> TaoResult:
    """Minimise ``objective`` over ``model``'s parameters on one batch with one TAO solve
    (a :class:`TaoTraining` made, solved once and destroyed; see :meth:`TaoTraining.solve`).

    The model's parameters hold the solution afterwards. Works for any ``nn.Module``;
    Gauss-Newton products through a DEQ need the ``inject``/``equilibrium``/``head``
    structure.
    """
    with TaoTraining(model, objective, images, targets, prefix=prefix, comm=comm,
                     hessian=hessian, chunk=chunk, on_model_call=on_model_call,
                     defaults=defaults) as training:
        return training.solve(deadline=deadline, on_iterate=on_iterate,
                              accept_max_it=accept_max_it, accept_failure=accept_failure)


def _check_hessian(hessian: str, prefix: str) -> None:
    if hessian not in HESSIANS:
        raise DEQOptionsError(f"-{prefix}train_hessian must be one of {sorted(HESSIANS)}, "
                              f"got {hessian!r}")


def objective_hint(reason_name: str, prefix: str) -> str:
    if reason_name == "DIVERGED_MAXITS":
        return f"raise -{prefix}tao_max_it or loosen -{prefix}tao_gatol/-{prefix}tao_grtol"
    if reason_name == "DIVERGED_MAXFCN":
        return f"raise -{prefix}tao_max_funcs"
    if reason_name == "DIVERGED_NAN":
        return "the loss or gradient became NaN/Inf: lower the step (trust radius)"
    return (f"try tighter DEQ solves (-{prefix}snes_rtol, -{prefix}adjoint_ksp_rtol) for a "
            f"more exact gradient, or another -{prefix}tao_ls_type")


class TaoTrainer(Trainer):
    """:class:`Trainer` whose epochs are TAO solves instead of Adam passes: one
    :class:`TaoTraining`, made at the first epoch, solved once per epoch, destroyed
    with the trainer.

    Options (under the model's prefix): ``-tao_type`` and every TAO option,
    ``-train_hessian gauss-newton|exact``, ``-train_accept_failure``.
    """

    name = "tao"

    def __init__(self, cfg, data, out_dir, prefix: str = "", solver_options=None,
                 adjoint_options=None, progress: bool = True, log=print, comm=None):
        super().__init__(cfg, data, out_dir, prefix=prefix,
                         solver_options={**TAO_SOLVER_OPTIONS, **(solver_options or {})},
                         adjoint_options={**TAO_ADJOINT_OPTIONS, **(adjoint_options or {})},
                         progress=progress, log=log, comm=comm)
        own = TAO_TRAINER_OPTIONS.read(prefix)         # before any training
        self.hessian, self.accept_failure = own["train_hessian"], own["train_accept_failure"]
        TAO_TRAINER_OPTIONS.print_help(prefix, self.dp.comm)
        self.last_result: TaoResult | None = None
        self.training: TaoTraining | None = None

    def _make_optimizer(self):
        return None

    def _train_epoch(self, epoch: int, X: torch.Tensor, y: torch.Tensor) -> dict:
        n = len(y)
        if 0 < self.cfg.tao_batch < n:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            idx = torch.randperm(n, generator=g)[:self.cfg.tao_batch]
            X, y = X[idx], y[idx]
        device = model_device(self.model)
        X, y = X.to(device), y.to(device)
        self.model.eval()           # the cell's norm estimates advance in TAO's update hook
        sums = self._new_sums()
        try:
            if self.training is None:
                self.training = TaoTraining(self.model, self.objective, X, y,
                                            prefix=self.prefix, comm=self.dp.comm,
                                            hessian=self.hessian,
                                            chunk=self.cfg.eval_batch_size)
            result = self.training.solve(X, y, deadline=self.deadline, accept_max_it=True,
                                         accept_failure=self.accept_failure,
                                         on_model_call=lambda: self._count_solves(sums))
        except DEQConvergenceError as err:
            raise DEQConvergenceError(f"epoch {epoch + 1}: {err}; the checkpoint of epoch "
                                      f"{epoch} is intact", reason=err.reason,
                                      reason_name=err.reason_name, iterations=err.iterations,
                                      history=err.history, stats=err.stats) from None
        self.last_result = result
        out, _ = predict(self.model, X, self.cfg.eval_batch_size, self.dp)   # final weights
        y = y.cpu()
        sums.update(loss=float(self.objective.loss(out, y)) * len(y),
                    metric=self.objective.metric_sum(out, y), samples=len(y), tao_type=result.tao_type,
                    tao_its=result.iterations,
                    tao_reason=result.reason_name + (" (stationary)" if result.stationary
                                                     else ""),
                    gradient_norm=result.gradient_norm,
                    **{f"{k}_evals": v for k, v in result.counts.items()})
        return sums

    def _epoch_note(self, row: dict) -> str:
        return (f" | {row['tao_type']} {row['tao_its']} its, {row['tao_reason']}, "
                f"|g| {row['gradient_norm']:.2e}")

    def destroy(self):
        if self.training is not None:
            self.training.destroy()
            self.training = None
        super().destroy()
