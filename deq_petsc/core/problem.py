"""The fixed-point problem ``z = f(z, x)``: residual, JVPs and VJPs of ``f`` in ``z``.

VJPs are reverse-mode through one retained autograd graph per linearization
point; JVPs either reuse that graph (double backward, the default) or use
forward-mode dual numbers.

Pure torch: no PETSc here. Products act on the whole batch tensor at once
(the batch is one vector to the solver).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.autograd.forward_ad as fwAD

from .errors import DEQInputError

Cell = Callable[[torch.Tensor, Any], torch.Tensor]


def _forward_jvp(fn, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J_fn(z) v`` with dual numbers (``torch.autograd.forward_ad``).

    Same forward-mode product as ``torch.func.jvp`` without its one-off start-up
    (about 1 s on the first call here, longer than a whole small solve).
    """
    with torch.no_grad(), fwAD.dual_level():
        tangent = fwAD.unpack_dual(fn(fwAD.make_dual(z, v))).tangent
    return torch.zeros_like(z) if tangent is None else tangent


def _select(x, rows: torch.Tensor, batch: int):
    """``x`` restricted to the samples ``rows`` (see :meth:`FixedPointProblem.select`)."""
    if isinstance(x, torch.Tensor):
        return x[rows.to(x.device)] if x.dim() and x.shape[0] == batch else x
    if isinstance(x, (tuple, list)):
        return type(x)(_select(v, rows, batch) for v in x)
    if isinstance(x, dict):
        return {k: _select(v, rows, batch) for k, v in x.items()}
    return x


class NoGraphError(ValueError):
    """A transpose product ``J_f^T u`` asked of an ``f`` that autograd cannot differentiate
    in ``z`` (:attr:`Linearization.has_graph`): differences give ``J_f v``, never that."""


JVP_MODES = ("reverse", "forward")
#: Reverse (double backward) by default: on the conv cells here it was faster per
#: product (43 vs 53 ms at 524k unknowns, 0.45 vs 0.6 ms at 16k) and has no
#: start-up, whereas forward-mode AD's first conv call costs ~1 s per process.
#: "forward" keeps no graph: use it when memory is tight or f lacks double backward.
DEFAULT_JVP_MODE = "reverse"


class FixedPointProblem:
    """``F(z) = z - f(z, x) = 0`` for a cell ``f`` and a fixed input ``x``.

    ``z0`` fixes the state's shape, dtype and device (default: zeros shaped
    like ``x``, or like ``z_shape`` when given). ``x`` may be a tensor, a
    tuple of tensors or anything ``f`` accepts; it is never differentiated
    here (the layer handles parameter gradients).

    ``z_shape`` is needed whenever the state is not shaped like ``x``: a cell
    ``tanh(W z + U x)`` with 8 units on inputs of 5 features has ``z_shape=(batch,
    8)``. A cell whose output is not shaped like the state, or that fails on its
    first evaluation with a state shaped like ``x`` by default, is a
    :class:`~deq_petsc.core.errors.DEQInputError` naming both shapes and the cure.
    """

    def __init__(self, f: Cell, x: Any = None, z0: torch.Tensor | None = None,
                 z_shape: tuple[int, ...] | None = None, independent_samples: bool = False):
        if not callable(f):
            raise TypeError(f"f must be callable as f(z, x), got {type(f).__name__}")
        self.f = f
        self.x = x
        z0_given = z0 is not None
        if z0 is None:
            if z_shape is None:
                if not isinstance(x, torch.Tensor):
                    raise ValueError("give z0 or z_shape: the state's shape cannot be "
                                     "inferred from a non-tensor x")
                z0 = torch.zeros_like(x)
            else:
                like = x if isinstance(x, torch.Tensor) else None
                z0 = torch.zeros(z_shape,
                                 dtype=like.dtype if like is not None else torch.get_default_dtype(),
                                 device=like.device if like is not None else None)
        if not torch.is_floating_point(z0):
            raise TypeError(f"the state must be floating point, got {z0.dtype}")
        self.z0 = z0.detach()
        #: Where the state's shape came from, for the errors of a cell that disagrees.
        self.shape_origin = ("z0" if z0_given else "z_shape" if z_shape is not None
                             else "x (the default without z_shape)")
        self._evaluated = False
        #: Whether ``f`` treats the samples (the state's first dimension) apart, so that a
        #: solver may evaluate it on some of them only (:meth:`select`): true of a cell
        #: whose only batch coupling is through ``x``'s per-sample tensors; false (the
        #: default) for an ``f`` that closes over the whole batch (an adjoint's VJP).
        self.independent_samples = bool(independent_samples)

    def select(self, rows: torch.Tensor) -> "FixedPointProblem":
        """The same problem for the samples ``rows`` only: ``x``'s tensors (in a tuple,
        list or dict as well) whose first dimension is the batch's are indexed by
        ``rows``, anything else is passed as it is."""
        if not self.independent_samples:
            raise ValueError("select(): this problem's samples are not independent")
        batch = self.z0.shape[0]
        sub = FixedPointProblem(self.f, _select(self.x, rows, batch), z0=self.z0[rows],
                                independent_samples=True)
        sub.shape_origin, sub._evaluated = self.shape_origin, self._evaluated
        return sub

    # -- evaluations -------------------------------------------------------------
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """``f(z, x)``, checked for shape (a wrong shape would otherwise be a silent broadcast)."""
        if self._evaluated:
            fz = self.f(z, self.x)
        else:
            fz = self._first_evaluation(z)
        if not isinstance(fz, torch.Tensor) or fz.shape != z.shape:
            got = tuple(fz.shape) if isinstance(fz, torch.Tensor) else type(fz).__name__
            raise DEQInputError(
                f"f(z, x) must return a tensor shaped like z {tuple(z.shape)} (the state's "
                f"shape, from {self.shape_origin}), got {got}"
                + (f"; pass z_shape={got} (or a function of x giving it) to DEQ or "
                   f"FixedPointProblem" if isinstance(fz, torch.Tensor) else ""))
        return fz

    def _first_evaluation(self, z: torch.Tensor) -> torch.Tensor:
        """The first ``f(z, x)``; a cell that fails on a state shaped like ``x`` most likely
        wants another shape (its output's, not its input's): said, with the cure."""
        try:
            fz = self.f(z, self.x)
        except RuntimeError as err:
            if not self.shape_origin.startswith("x "):     # a shape the caller chose
                raise
            raise DEQInputError(
                f"f(z, x) failed on its first evaluation, with the state shaped like x "
                f"{tuple(z.shape)} (the default without z_shape): {str(err).splitlines()[0]}. "
                f"If the state has another shape than x, pass z_shape=... to DEQ or "
                f"FixedPointProblem (a shape, or a function of x such as "
                f"lambda x: (x.shape[0], n))") from err
        self._evaluated = True
        return fz

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        return z - self(z)

    def jvp(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J_f(z) v`` by forward-mode AD (one tangent pass, no graph kept)."""
        return _forward_jvp(self, z.detach(), v.to(z.dtype))

    def vjp(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``J_f(z)^T u`` by reverse-mode AD (one forward and one backward pass)."""
        return self.linearize(z).vjp(u)

    def linearize(self, z: torch.Tensor, jvp_mode: str = DEFAULT_JVP_MODE) -> "Linearization":
        return Linearization(self, z, jvp_mode)


class Linearization:
    """``J_f`` frozen at one point ``z``, for many products (a Krylov solve).

    VJPs reuse one autograd graph of ``f(z)``, built on first use: each product
    then costs one backward pass. JVPs are forward-mode (``"forward"``: one
    tangent pass each, nothing stored) or the transpose of the VJP
    (``"reverse"``: a double-backward graph built once, then one backward pass
    per product; for cells whose ops lack forward-mode AD). An ``f`` autograd cannot
    differentiate in ``z`` (:attr:`has_graph`) gets reverse-mode JVPs by differences
    and no VJPs (:class:`NoGraphError`).
    """

    def __init__(self, problem: FixedPointProblem, z: torch.Tensor,
                 jvp_mode: str = DEFAULT_JVP_MODE):
        if jvp_mode not in JVP_MODES:
            raise ValueError(f"jvp_mode must be one of {JVP_MODES}, got {jvp_mode!r}")
        self.problem = problem
        self.z = z.detach().clone()
        self.jvp_mode = jvp_mode
        self.jvp_count = 0
        self.vjp_count = 0
        self._z_leaf = None
        self._fz = None
        self._u_dummy = None
        self._vjp_of_dummy = None

    def _graph(self):
        if self._fz is None:
            with torch.enable_grad():
                self._z_leaf = self.z.clone().requires_grad_(True)
                self._fz = self.problem(self._z_leaf)
        return self._z_leaf, self._fz

    @property
    def has_graph(self) -> bool:
        """Whether autograd can differentiate ``f`` in ``z``. Not when ``f`` is computed
        outside autograd: under ``no_grad``, in NumPy, or, as TorchDEQ's backward fixed
        point ``u -> J^T u + g``, by ``autograd.grad`` without ``create_graph``."""
        return self._graph()[1].requires_grad

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        z_leaf, fz = self._graph()
        if not fz.requires_grad:
            raise NoGraphError(
                "f(z, x) has no autograd graph in z (computed under no_grad, outside torch, "
                "or by autograd.grad without create_graph), so J_f^T u cannot be taken; "
                "Jacobian-vector products J_f v can (by differences): use a method that "
                "needs no transpose")
        self.vjp_count += 1
        (g,) = torch.autograd.grad(fz, z_leaf, u.to(fz.dtype), retain_graph=True)
        return g

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        self.jvp_count += 1
        if self.jvp_mode == "forward":
            return _forward_jvp(self.problem, self.z, v.to(self.z.dtype))
        if not self.has_graph:
            return self._difference_jvp(v.to(self.z.dtype))
        if self._vjp_of_dummy is None:
            z_leaf, fz = self._graph()
            with torch.enable_grad():
                self._u_dummy = torch.zeros_like(fz, requires_grad=True)
                (self._vjp_of_dummy,) = torch.autograd.grad(fz, z_leaf, self._u_dummy,
                                                            create_graph=True)
        (jv,) = torch.autograd.grad(self._vjp_of_dummy, self._u_dummy, v.to(self.z.dtype),
                                    retain_graph=True)
        return jv

    def _difference_jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J_f v`` by a one-sided difference, for an ``f`` autograd cannot differentiate.

        The step is ``sqrt(eps) (1 + ||z||) / ||v||``, PETSc's matrix-free choice
        (``-snes_mf``) made relative to the state's size: ``O(sqrt(eps))`` accurate for a
        smooth ``f``, and exact up to rounding for an affine one, such as TorchDEQ's
        backward map, on which Newton then converges as with exact products. One
        evaluation of ``f`` per product (``f(z)`` is the linearization's).
        """
        norm = float(v.norm())
        if norm == 0.0:
            return torch.zeros_like(v)
        h = torch.finfo(self.z.dtype).eps ** 0.5 * (1.0 + float(self.z.norm())) / norm
        with torch.no_grad():
            return (self.problem(self.z + h * v) - self._graph()[1]) / h
