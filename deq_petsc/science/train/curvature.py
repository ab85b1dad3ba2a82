"""Derivatives of a network's outputs and loss in its parameters, for second-order training.

``J = d outputs / d theta`` at fixed parameters, as products:

* ``J^T w`` by reverse mode. Through a DEQ that is the implicit gradient: one
  adjoint solve ``(I - J_f)^T u = .`` per product (:meth:`DEQ.attach`).
* ``J v`` by forward mode (``torch.func.jvp``). Through a DEQ it is forward-mode
  implicit differentiation: the tangent of ``f(z*, x)`` along ``v`` with ``z*``
  held fixed, then one tangent solve ``(I - J_f) dz* = .`` (:meth:`DEQ.tangent`),
  then the head's tangent.

With the curvature ``H_out`` of the loss in the outputs (PSD for cross-entropy
and MSE) these give the Gauss-Newton matrix ``J^T H_out J``: positive
semi-definite, two linear solves per product through a DEQ, no second
derivatives of the equilibrium (which the DEQ layer does not provide). The exact
Hessian (double backward) is for explicit networks.

Products are over the whole (large) batch, evaluated in chunks so memory stays
bounded; every product is one call of the model's pieces per chunk.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp

from deq_petsc.core.errors import DEQOptionsError
from deq_petsc.layer.deq import DEQ


class ParameterSlices:
    """The trainable parameters of a model, and a flat vector split back into them."""

    def __init__(self, model: torch.nn.Module):
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("the model has no trainable parameters")
        self.params = [p for _, p in self.named]
        self.numel = sum(p.numel() for p in self.params)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, p in self.named:
            out[name] = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        return out

    def flatten(self, tensors) -> torch.Tensor:
        return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                          for t, p in zip(tensors, self.params)])

    def values(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named}


def _deq_of(model):
    """The model's DEQ layer when it is ``head(DEQ(inject(.)))``, else ``None``."""
    deq = getattr(model, "equilibrium", None)
    return deq if isinstance(deq, DEQ) else None


def _sub(params: dict, prefix: str) -> dict:
    return {name[len(prefix):]: t for name, t in params.items() if name.startswith(prefix)}


class OutputJacobian:
    """``J v`` and ``J^T w`` of ``model(images)`` in the parameters, at their current values.

    Models are ``head(equilibrium(inject(images)))`` (:class:`GraphImageClassifier`);
    when ``equilibrium`` is a :class:`DEQ`, ``z*`` is solved once here and kept.
    """

    def __init__(self, model, images: torch.Tensor, slices: ParameterSlices):
        self.model, self.images, self.slices = model, images, slices
        self.deq = _deq_of(model)
        if self.deq is not None:
            self.prefixes = getattr(model, "PARAMETER_PREFIXES", None)
            if self.prefixes is None:
                raise DEQOptionsError(f"Gauss-Newton products through a DEQ need an "
                                      f"EquilibriumModel (inject / equilibrium / head with "
                                      f"PARAMETER_PREFIXES), not a {type(model).__name__}")
            known = tuple(self.prefixes.values())
            stray = [n for n, _ in slices.named if not n.startswith(known)]
            if stray:
                raise DEQOptionsError(f"Gauss-Newton products know inject/cell/head "
                                      f"parameters, not {stray}")
        with torch.no_grad():
            if self.deq is not None:
                x = model.inject(images)
                self.z_star, self.problem = self.deq.solve_fixed_point(x)
                self.out = model.head(self.z_star)
            else:
                self.out = model(images)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for a flat parameter direction ``v``."""
        P, V = self.slices.values(), self.slices.split(v)
        model, images = self.model, self.images
        if self.deq is None:
            _, dout = jvp(lambda p: functional_call(model, p, (images,)), (P,), (V,))
            return dout
        cell, z_star = self.deq.cell, self.z_star

        def cell_of_params(p_inject, p_cell):
            x = functional_call(model.inject, p_inject, (images,))
            return functional_call(cell, p_cell, (z_star, x))

        pi, pc, ph = (self.prefixes[k] for k in ("inject", "cell", "head"))
        with torch.no_grad():
            _, rhs = jvp(cell_of_params, (_sub(P, pi), _sub(P, pc)), (_sub(V, pi), _sub(V, pc)))
        dz = self.deq.tangent(z_star, self.problem, rhs)
        with torch.no_grad():
            _, dout = jvp(lambda p_head, z: functional_call(model.head, p_head, (z,)),
                          (_sub(P, ph), z_star), (_sub(V, ph), dz))
        return dout

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """``J^T w`` as a flat vector (through a DEQ: one adjoint solve)."""
        with torch.enable_grad():
            if self.deq is None:
                out = self.model(self.images)
            else:
                x = self.model.inject(self.images)
                out = self.model.head(self.deq.attach(self.z_star, x, self.problem))
            grads = torch.autograd.grad(out, self.slices.params, w.to(out.dtype),
                                        allow_unused=True)
        return self.slices.flatten(grads)


class GaussNewton:
    """``v -> sum_chunks J_c^T H_out,c J_c v``: the (generalised) Gauss-Newton matrix."""

    def __init__(self, model, objective, chunks, n_total: int, slices: ParameterSlices):
        self.objective, self.n_total = objective, n_total
        self.parts = [(OutputJacobian(model, images, slices), y) for images, y in chunks]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(v)
        for jac, _ in self.parts:
            total += jac.vjp(self.objective.output_hessian(jac.out, jac.jvp(v), self.n_total))
        return total


class ExactHessian:
    """``v -> d^2 loss / d theta^2 v`` by double backward (explicit networks only)."""

    def __init__(self, model, objective, chunks, n_total: int, slices: ParameterSlices):
        if _deq_of(model) is not None:
            raise DEQOptionsError(
                "-train_hessian exact needs second derivatives through the DEQ's implicit "
                "gradient, which the layer does not provide (double backward of an adjoint "
                "solve); use -train_hessian gauss-newton, or --model explicit")
        self.model, self.objective, self.chunks = model, objective, chunks
        self.n_total, self.slices = n_total, slices

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(v)
        params = self.slices.params
        for images, y in self.chunks:
            with torch.enable_grad():
                loss = self.objective.loss(self.model(images), y) * (len(y) / self.n_total)
                grads = torch.autograd.grad(loss, params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, self.slices.split(v).values()))
                hv = torch.autograd.grad(dot, params, allow_unused=True)
            total += self.slices.flatten(hv)
        return total


HESSIANS = {"gauss-newton": GaussNewton, "exact": ExactHessian}
