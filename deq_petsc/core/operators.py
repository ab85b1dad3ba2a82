"""``I - J_f(z)`` as a PETSc python ``Mat``: exact Jacobian products by autograd.

(Differences only for an ``f`` autograd cannot differentiate, such as TorchDEQ's
backward map: :meth:`~deq_petsc.core.problem.Linearization.has_graph`.)

``mult`` applies ``(I - J_f) v`` with a JVP, ``multTranspose`` applies
``(I - J_f)^T u`` with a VJP. This is the Jacobian of the residual
``F(z) = z - f(z, x)``, so Newton-Krylov (``-snes_type newtonls -ksp_type
gmres``) runs matrix-free on exact products, and the adjoint solve of implicit
differentiation uses the transpose.
"""

from __future__ import annotations

from petsc4py import PETSc

from .interop import TensorLayout
from .callbacks import petsc_callback
from .problem import DEFAULT_JVP_MODE, FixedPointProblem, Linearization

_JVP_EVENT = PETSc.Log.Event("DEQJvp")
_VJP_EVENT = PETSc.Log.Event("DEQVjp")


class ResidualJacobian:
    """Context of a python ``Mat`` for ``I - J_f`` at the current linearization point.

    Call :meth:`set_point` (SNES does, through :meth:`DEQSolver`'s Jacobian
    callback) before products; products count themselves for the statistics.
    """

    def __init__(self, problem: FixedPointProblem, layout: TensorLayout,
                 jvp_mode: str = DEFAULT_JVP_MODE):
        self.problem = problem
        self.layout = layout
        self.jvp_mode = jvp_mode
        self.linearization: Linearization | None = None
        self.jvp_count = 0
        self.vjp_count = 0
        self.error: BaseException | None = None   # first exception in a product

    def set_point(self, z) -> None:
        self.linearization = self.problem.linearize(z, self.jvp_mode)

    def _lin(self) -> Linearization:
        if self.linearization is None:
            raise RuntimeError("ResidualJacobian used before set_point(z)")
        return self.linearization

    # -- python Mat protocol -------------------------------------------------------
    @petsc_callback(_JVP_EVENT)
    def mult(self, mat, X, Y):
        v = self.layout.read(X)
        self.layout.write(v - self._lin().jvp(v), Y)
        self.jvp_count += 1

    @petsc_callback(_VJP_EVENT)
    def multTranspose(self, mat, X, Y):
        u = self.layout.read(X)
        self.layout.write(u - self._lin().vjp(u), Y)
        self.vjp_count += 1

    def view(self, mat, viewer):
        if viewer.getType() == PETSc.Viewer.Type.ASCII:
            viewer.printfASCII(f"  I - J_f(z) by {self.jvp_mode}-mode JVPs and reverse-mode "
                               f"VJPs; state {self.layout.describe()}\n")


def create_residual_jacobian(ctx: ResidualJacobian, comm=None) -> PETSc.Mat:
    """A python ``Mat`` over ``ctx``, sized by its layout (local rows = local state)."""
    comm = PETSc.COMM_SELF if comm is None else comm
    n = ctx.layout.numel
    mat = PETSc.Mat().createPython(((n, PETSc.DECIDE), (n, PETSc.DECIDE)), context=ctx,
                                   comm=comm)
    mat.setUp()
    return mat
