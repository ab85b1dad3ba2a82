"""JVP/VJP of the cell and the python Mat (I - J_f) against finite differences,
dense Jacobians and each other."""

import numpy as np
import pytest
import torch

from deq_petsc.core.interop import TensorLayout
from deq_petsc.science.models import ConvTanhCell, TanhCell
from deq_petsc.core.operators import ResidualJacobian, create_residual_jacobian
from deq_petsc.core.problem import FixedPointProblem

from conftest import assert_close
from helpers import double_scalars


def dense_jacobian(problem, z):
    flat = lambda v: problem(v.reshape(z.shape)).reshape(-1)  # noqa: E731
    return torch.autograd.functional.jacobian(flat, z.reshape(-1))


@pytest.fixture
def tanh_problem():
    torch.manual_seed(0)
    cell = TanhCell(6, 4, contraction=0.8, seed=1)
    x = torch.randn(3, 4, dtype=torch.float64)
    problem = FixedPointProblem(cell, x, z_shape=(3, 6))
    z = torch.randn(3, 6, dtype=torch.float64)
    return problem, z


def test_jvp_matches_central_differences(tanh_problem):
    problem, z = tanh_problem
    v = torch.randn_like(z)
    h = 1e-6
    fd = (problem(z + h * v) - problem(z - h * v)) / (2 * h)
    assert_close(problem.jvp(z, v), fd, 1e-8, "JVP vs central differences")


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_linearization_products_match_dense_jacobian(tanh_problem, mode):
    problem, z = tanh_problem
    J = dense_jacobian(problem, z)
    lin = problem.linearize(z, jvp_mode=mode)
    v, u = torch.randn_like(z), torch.randn_like(z)
    assert_close(lin.jvp(v).reshape(-1), J @ v.reshape(-1), 1e-12, f"{mode} JVP")
    assert_close(lin.vjp(u).reshape(-1), J.T @ u.reshape(-1), 1e-12, "VJP")
    assert_close(problem.vjp(z, u).reshape(-1), J.T @ u.reshape(-1), 1e-12, "problem.vjp")
    # Repeated products reuse the linearization and stay exact.
    assert_close(lin.jvp(2 * v), 2 * lin.jvp(v), 1e-14, "JVP linearity")
    assert (lin.jvp_count, lin.vjp_count) == (3, 1)


def test_adjoint_identity_on_a_conv_cell():
    cell = ConvTanhCell(channels=3, image_size=6, contraction=0.9, seed=2)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    problem = FixedPointProblem(cell, x)
    z = torch.randn_like(x)
    u, v = torch.randn_like(z), torch.randn_like(z)
    lhs = torch.sum(u * problem.jvp(z, v))
    rhs = torch.sum(problem.vjp(z, u) * v)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def make_mat(problem, z):
    layout = TensorLayout.like(z)
    ctx = ResidualJacobian(problem, layout)
    ctx.set_point(z)
    return ctx, create_residual_jacobian(ctx), layout


@double_scalars
def test_python_mat_applies_identity_minus_jacobian(tanh_problem):
    problem, z = tanh_problem
    ctx, A, layout = make_mat(problem, z)
    J = dense_jacobian(problem, z).numpy()
    I_minus_J = np.eye(J.shape[0]) - J
    X, Y = A.createVecs()
    try:
        v = np.random.default_rng(3).standard_normal(J.shape[0])
        X.setArray(v)
        A.mult(X, Y)
        np.testing.assert_allclose(Y.getArray(), I_minus_J @ v, rtol=1e-12, atol=1e-14)
        A.multTranspose(X, Y)
        np.testing.assert_allclose(Y.getArray(), I_minus_J.T @ v, rtol=1e-12, atol=1e-14)
        # <u, A v> = <A^T u, v> through PETSc's own vectors
        U, V, AV, ATU = X.duplicate(), X.duplicate(), X.duplicate(), X.duplicate()
        U.setRandom(); V.setRandom()
        A.mult(V, AV); A.multTranspose(U, ATU)
        assert U.dot(AV) == pytest.approx(ATU.dot(V), rel=1e-12)
        for w in (U, V, AV, ATU):
            w.destroy()
        assert (ctx.jvp_count, ctx.vjp_count) == (2, 2)
    finally:
        X.destroy(); Y.destroy(); A.destroy()


@double_scalars
def test_python_mat_matches_finite_difference_of_residual(tanh_problem):
    problem, z = tanh_problem
    _, A, layout = make_mat(problem, z)
    X, Y = A.createVecs()
    try:
        v = torch.randn_like(z)
        layout.write(v, X)
        A.mult(X, Y)
        h = 1e-6
        fd = (problem.residual(z + h * v) - problem.residual(z - h * v)) / (2 * h)
        assert_close(layout.read(Y), fd, 1e-8, "(I - J) v vs FD of the residual")
    finally:
        X.destroy(); Y.destroy(); A.destroy()


@double_scalars
def test_float32_cell_through_the_mat():
    cell = TanhCell(5, contraction=0.7, seed=4, dtype=torch.float32)
    x = torch.randn(2, 5)
    problem = FixedPointProblem(cell, x)
    z = torch.randn(2, 5)
    _, A, layout = make_mat(problem, z)
    X, Y = A.createVecs()
    try:
        v = torch.randn(2, 5)
        layout.write(v, X)
        A.mult(X, Y)
        expected = v - problem.jvp(z, v)
        assert_close(layout.read(Y), expected, 1e-6, "float32 (I - J) v")
        assert X.getArray().dtype == np.float64
    finally:
        X.destroy(); Y.destroy(); A.destroy()


def test_cell_with_wrong_output_shape_is_rejected():
    problem = FixedPointProblem(lambda z, x: z.sum(dim=1), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shaped like z"):
        problem(torch.zeros(2, 3, dtype=torch.float64))
