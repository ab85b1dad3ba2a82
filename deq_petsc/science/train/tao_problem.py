"""The training problem TAO solves: a model's parameters as one ``Vec``, and the callbacks.

:class:`ParameterVector` makes the trainable parameters one sequential PETSc
``Vec`` (views of it in float64 on the CPU, one cast otherwise);
:class:`TrainingProblem` is TAO's application context -- objective, gradient,
Hessian products (Gauss-Newton or exact, a python ``Mat``), and for ``brgn``
the residual and its Jacobian -- all computed by torch over the batch in chunks.
:class:`deq_petsc.science.train.tao.TaoTraining` owns the TAO that solves it.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch
from petsc4py import PETSc

from deq_petsc.core.callbacks import petsc_callback
from deq_petsc.core.interop import TensorLayout
from ..objectives import shard_loss
from ..parallel import DataParallel
from .curvature import HESSIANS, OutputJacobian, ParameterSlices

_OBJECTIVE_EVENT = PETSc.Log.Event("TrainObjective")
_HESSIAN_EVENT = PETSc.Log.Event("TrainHessianMult")


class ParameterVector:
    """A model's trainable parameters as one ``Vec``, and the model bound to any such ``Vec``.

    The ``Vec`` is sequential: under MPI every rank runs its own replica of the
    TAO solve on the full parameter vector (the parameters are few, the batch is
    what is distributed). Objective values, gradients and products are sums over
    the ranks' shards of the batch, broadcast from rank 0 so that they are
    bitwise equal everywhere. That alone does not keep the replicas equal: TAO's
    own vector operations (OpenBLAS) round differently on different ranks, and
    ``brgn``'s replicas were seen to part by an ulp within one iteration and by
    1e-10 after two. So every point a callback is given is rank 0's
    (:meth:`read`, :meth:`bind`): each rank evaluates the same parameters, and
    the solution all ranks keep is rank 0's.
    """

    def __init__(self, slices: ParameterSlices, dp: DataParallel | None = None):
        self.slices = slices
        self.dp = dp or DataParallel(PETSc.COMM_SELF)
        first = slices.params[0]
        self.layout = TensorLayout(torch.Size([slices.numel]), first.dtype, first.device)
        flat = slices.flatten([p.detach() for p in slices.params]).contiguous()
        self.vec = self.layout.create_vec(flat, comm=PETSc.COMM_SELF)

    def take_model(self) -> None:
        """Set the ``Vec`` to the model's parameters now (a solve starts from them: an
        epoch's from the last one's solution, or from a checkpoint's weights)."""
        self.write(self.slices.flatten([p.detach() for p in self.slices.params]), self.vec)

    def read(self, X: PETSc.Vec) -> torch.Tensor:
        """``X`` as a tensor: a view (zero-copy when the model is float64 on the CPU);
        under MPI rank 0's ``X``, a copy on every rank."""
        if self.dp.size == 1:
            return self.layout.read(X)
        agreed = torch.from_numpy(self.dp.from_root(X.getArray(readonly=True)))
        return agreed.to(device=self.layout.device, dtype=self.layout.dtype)

    def bind(self, X: PETSc.Vec) -> None:
        """Make the parameters views of ``X`` (zero-copy) or of one cast of it (rank 0's
        ``X`` under MPI)."""
        self.bind_values(self.read(X))

    def snapshot(self, X: PETSc.Vec) -> torch.Tensor:
        """``X``'s values now, in the model's dtype: a point that TAO cannot move."""
        return self.read(X).clone()

    def bind_values(self, flat: torch.Tensor) -> None:
        """Make the parameters views of the flat tensor ``flat``."""
        for p, view in zip(self.slices.params, self.slices.split(flat).values()):
            p.data = view

    def release(self) -> None:
        """Give the parameters their own memory again (before TAO's vectors go)."""
        for p in self.slices.params:
            p.data = p.data.clone()

    def summed(self, local: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks of each rank's parameter-sized ``local``."""
        if self.dp.size == 1:
            return local
        return torch.from_numpy(self.dp.sum(local.detach().contiguous().numpy()))

    def write(self, flat: torch.Tensor, Y: PETSc.Vec) -> None:
        self.layout.write(flat.to(self.layout.dtype), Y)

    def destroy(self):
        self.vec.destroy()


#: TAO and python-Mat callbacks: the first exception kept on the problem, for
#: TaoTraining.solve to re-raise after TAO.solve (PETSc reports it only as an error code)
_callback = petsc_callback(owner="problem")


class TrainingProblem:
    """TAO's application context: loss, gradient, Hessian products and residuals by torch.

    Its methods are the TAO and python-``Mat`` callbacks. An exception in a
    callback is kept and re-raised after ``TAO.solve`` (PETSc would otherwise
    turn it into a generic error code).
    """

    def __init__(self, model, objective, images, targets, params: ParameterVector,
                 hessian: str = "gauss-newton", chunk: int = 256, on_model_call=None):
        self.model, self.objective = model, objective
        self.params, self.hessian_kind = params, hessian
        self.dp = params.dp
        self.chunk = chunk
        self.on_model_call = on_model_call or (lambda: None)
        self.deadline: float | None = None
        #: called as ``on_iterate(its, seconds, parameters)`` at every monitored iterate
        #: (a study's snapshots; the parameters are a view: copy what you keep)
        self.on_iterate = None
        self.load(images, targets)

    def load(self, images, targets) -> None:
        """Take the batch of the next solve (an epoch's): its chunks, and fresh counts."""
        self.n = len(targets)
        chunk = self.chunk
        # this rank's shard of every chunk, and each chunk's global row range
        self.chunks = [(self.dp.shard(images[i:i + chunk]), self.dp.shard(targets[i:i + chunk]))
                       for i in range(0, self.n, chunk)]
        self.rows = [(i, min(i + chunk, self.n)) for i in range(0, self.n, chunk)]
        self.reset()

    def release(self) -> None:
        """Drop what the last Hessian or Jacobian kept (each chunk's equilibria, outputs
        and tangents): between solves it is only memory."""
        self.curvature = None
        self._jacobians = None
        self._point: torch.Tensor | None = None     # where the Hessian / Jacobian was asked

    def reset(self) -> None:
        """Before a solve: no kept curvature or error, counts and clocks at zero."""
        self.release()
        self._shift = 0.0
        self.error: BaseException | None = None
        self.counts = dict(objective=0, gradient=0, hessian=0, hessian_products=0,
                           residual=0, jacobian=0, jacobian_products=0)
        #: seconds spent in each kind of callback: what a TAO iteration costs beyond them
        #: is TAO's own work (its vector operations, line search, Krylov solve)
        self.seconds = dict.fromkeys(self.counts, 0.0)
        self.history: list[tuple[int, float, float, float]] = []
        self._start = time.perf_counter()

    @contextmanager
    def _clock(self, kind: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - start

    # -- objective and gradient --------------------------------------------------------
    def _loss(self, X, with_grad: bool) -> float:
        self.params.bind(X)
        total = 0.0
        if with_grad:
            self.model.zero_grad(set_to_none=True)
        for images, y in self.chunks:
            with torch.set_grad_enabled(with_grad):
                loss = shard_loss(self.objective, self.model(images), y, self.n)
                if with_grad:
                    loss.backward()
            self.on_model_call()
            total += float(loss.detach())
        total = float(self.dp.sum(total))
        if not math.isfinite(total):
            return float("inf")       # a line search backs off; TAO names a blow-up
        return total

    @_callback
    def objective_value(self, tao, X) -> float:
        with _OBJECTIVE_EVENT, self._clock("objective"):
            self.counts["objective"] += 1
            return self._loss(X, False)

    @_callback
    def objective_gradient(self, tao, X, G) -> float:
        with _OBJECTIVE_EVENT, self._clock("gradient"):
            self.counts["objective"] += 1
            self.counts["gradient"] += 1
            f = self._loss(X, True)
            grads = [p.grad for p in self.params.slices.params]
            self.params.write(self.params.summed(self.params.slices.flatten(grads)), G)
            return f

    # -- Hessian (python Mat) ------------------------------------------------------------
    @_callback
    def hessian(self, tao, X, H, P) -> None:
        # the products are at this point: by the time TAO multiplies (a trust region
        # re-solving after a rejected step) the parameters may be bound to a trial point
        with self._clock("hessian"):
            self._point = self.params.snapshot(X)
            self.params.bind_values(self._point)
            self.curvature = HESSIANS[self.hessian_kind](self.model, self.objective,
                                                         self.chunks, self.n,
                                                         self.params.slices)
            self._shift = 0.0
            self.counts["hessian"] += 1

    @_callback
    def mult(self, mat, X, Y) -> None:
        """Hessian (or Gauss-Newton) times ``X``, plus any shift TAO asked for."""
        with _HESSIAN_EVENT, self._clock("hessian_products"):
            v = self.params.read(X).clone()
            self.params.bind_values(self._point)
            hv = self.params.summed(self.curvature(v))
            if self._shift:
                hv = hv + self._shift * v
            self.params.write(hv, Y)
            self.counts["hessian_products"] += 1

    def shift(self, mat, alpha) -> None:
        """``MatShift``: Newton methods regularise an indefinite Hessian with ``H + a I``."""
        self._shift += float(alpha)

    # -- least squares (brgn) ----------------------------------------------------------
    @_callback
    def residual(self, tao, X, R) -> None:
        with self._clock("residual"):
            self._residual(X, R)

    def _residual(self, X, R) -> None:
        self.params.bind(X)
        with torch.no_grad():
            parts = []
            for images, y in self.chunks:
                parts.append(self.objective.residual(self.model(images), y, self.n))
                self.on_model_call()
        self.counts["residual"] += 1
        r = torch.cat([self.dp.gather(part) for part in parts])   # all rows, chunk-major
        R.getArray()[:] = r.to(torch.float64).numpy()

    @_callback
    def jacobian_residual(self, tao, X, J, P) -> None:
        with self._clock("jacobian"):
            self._point = self.params.snapshot(X)     # the products' point (see hessian)
            self.params.bind_values(self._point)
            self._jacobians = [OutputJacobian(self.model, images, self.params.slices)
                               for images, _ in self.chunks]
            self.counts["jacobian"] += 1

    # python Mat context of brgn's least-squares residual's Jacobian in the parameters,
    # d r / d theta = J_out / sqrt(n) (not operators.ResidualJacobian, the DEQ's I - J_f)
    class LossResidualJacobian:
        def __init__(self, problem: "TrainingProblem"):
            self.problem = problem

        @_callback
        def mult(self, mat, X, Y):
            with self.problem._clock("jacobian_products"):
                self._mult(X, Y)

        def _mult(self, X, Y):
            pb = self.problem
            v = pb.params.read(X).clone()
            pb.params.bind_values(pb._point)
            jv = torch.cat([pb.dp.gather(jac.jvp(v).reshape(-1)) for jac in pb._jacobians])
            Y.getArray()[:] = (jv / pb.objective.residual_scale(pb.n)).to(torch.float64).numpy()
            pb.counts["jacobian_products"] += 1

        @_callback
        def multTranspose(self, mat, X, Y):
            with self.problem._clock("jacobian_products"):
                self._mult_transpose(X, Y)

        def _mult_transpose(self, X, Y):
            pb = self.problem
            w = torch.from_numpy(pb.dp.from_root(X.getArray(readonly=True).copy()))
            w = w / pb.objective.residual_scale(pb.n)
            pb.params.bind_values(pb._point)
            total = torch.zeros(pb.params.slices.numel, dtype=torch.float64)
            k = pb.objective.out_dim
            for jac, (a, b) in zip(pb._jacobians, pb.rows):
                mine = pb.dp.shard(torch.arange(a, b))          # this rank's rows of the chunk
                w_mine = w.view(-1, k)[mine].to(jac.out.dtype)
                total = total + jac.vjp(w_mine).to(total.dtype)
            pb.params.write(pb.params.summed(total), Y)
            pb.counts["jacobian_products"] += 1

    # -- iteration hooks ----------------------------------------------------------------
    @_callback
    def update(self, tao, its) -> None:
        """Start of a TAO iteration: advance the contractive cell's norm estimates once.

        Between iterations, as Adam's trainer does between steps, never inside one:
        within an iteration (its line search, its Krylov solve) f is one function.
        """
        cell = getattr(getattr(self.model, "equilibrium", None), "cell", None)
        if its > 0 and hasattr(cell, "step_power_iteration"):
            self.params.bind(tao.getSolution())
            cell.step_power_iteration()

    @_callback
    def monitor(self, tao) -> None:
        its, f, gnorm, *_ = tao.getSolutionStatus()
        now = time.perf_counter()
        self.history.append((int(its), float(f), float(gnorm), now - self._start))
        if self.on_iterate is not None:
            self.on_iterate(int(its), now - self._start, self.params.read(tao.getSolution()))
        # a time budget ends the solve at an iterate (rank 0's clock decides for all)
        if self.deadline is not None and (now >= self.deadline if self.dp.size == 1 else
                                          self.dp.mpi.bcast(now >= self.deadline, root=0)):
            tao.setConvergedReason(PETSc.TAO.ConvergedReason.CONVERGED_USER)
