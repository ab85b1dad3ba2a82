"""The DEQ layer: implicit gradients against gradcheck, unrolled autograd and each other."""

import pytest
import torch
from torch import nn

from deq_petsc import DEQ, DEQConvergenceError
from deq_petsc.core.errors import DEQError, DEQInputError, DEQOptionsError
from deq_petsc.core.diagnostics import SavedTensorBytes
from deq_petsc.science.models import TanhCell

from conftest import assert_close
from test_solver import CONFIGS, TIGHT
from helpers import double_scalars

EXACT_ADJOINT = {"ksp_rtol": 1e-13, "ksp_atol": 1e-15, "ksp_max_it": 500}


def unrolled(cell, x, iters=200):
    """z_k = f(z_{k-1}) from 0, differentiated by plain autograd through every step."""
    z = torch.zeros(x.shape[0], cell.W.shape[0], dtype=x.dtype)
    for _ in range(iters):
        z = cell(z, x)
    return z


def grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@double_scalars
def test_gradcheck_of_the_whole_layer(name):
    g = torch.Generator().manual_seed(0)
    n, n_in = 4, 3
    W0 = torch.randn(n, n, dtype=torch.float64, generator=g)
    W0 *= 0.7 / torch.linalg.matrix_norm(W0, ord=2)
    U = torch.randn(n, n_in, dtype=torch.float64, generator=g)
    holder = {}

    def cell(z, x):
        return torch.tanh(z @ holder["W"].T + x @ U.T)

    layer = DEQ(cell, options={**TIGHT, **CONFIGS[name]}, adjoint_options=EXACT_ADJOINT,
                z_shape=lambda x: (x.shape[0], n))

    def fn(x, W):
        holder["W"] = W
        return layer(x)

    x = torch.randn(2, n_in, dtype=torch.float64, generator=g, requires_grad=True)
    W = W0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, W), eps=1e-6, atol=1e-6, rtol=1e-5)
    fn(x, W).sum().backward()
    assert layer.last_stats.backward.converged
    assert layer.last_stats.forward.snes_type == CONFIGS[name]["snes_type"]
    layer.destroy()


@double_scalars
def test_gradients_equal_200_unrolled_iterations():
    cell = TanhCell(8, 5, contraction=0.8, seed=2)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3),
                    requires_grad=True)
    target = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    params = [cell.W, cell.U, cell.b, x]

    layer = DEQ(cell, options=TIGHT, adjoint_options=EXACT_ADJOINT,
                z_shape=lambda x: (x.shape[0], 8))
    implicit = grads(((layer(x) - target) ** 2).sum(), params)
    explicit = grads(((unrolled(cell, x) - target) ** 2).sum(), params)
    for name, a, b in zip(("W", "U", "b", "x"), implicit, explicit):
        assert_close(a, b, 1e-6, f"dL/d{name}")
    bstats = layer.last_stats.backward
    assert bstats.method == "ksp/gmres" and bstats.converged and bstats.vjp_count > 0
    assert bstats.residual_norms[-1] < 1e-12 * bstats.residual_norms[0] + 1e-14
    layer.destroy()


def _layer_grads(method_options, cell, x, target, **kwargs):
    """Gradients with the adjoint options set in the database for the layer's lifetime."""
    from petsc4py import PETSc
    opts = PETSc.Options()
    for k, v in method_options.items():
        opts.setValue(k, v)
    try:
        layer = DEQ(cell, options=TIGHT, adjoint_options=EXACT_ADJOINT,
                    z_shape=lambda x: (x.shape[0], 8), **kwargs)
        out = grads(((layer(x) - target) ** 2).sum(), [cell.W, cell.U, cell.b, x])
        stats = layer.last_stats.backward
        layer.destroy()
    finally:
        for k in method_options:
            opts.delValue(k)
    return out, stats


@pytest.fixture
def small():
    cell = TanhCell(8, 5, contraction=0.8, seed=5)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6),
                    requires_grad=True)
    target = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    return cell, x, target


@double_scalars
def test_adjoint_fixed_point_by_snes_anderson_matches_ksp(small):
    exact, _ = _layer_grads({}, *small)
    by_snes, stats = _layer_grads({"adjoint_snes_type": "anderson", "adjoint_snes_rtol": 1e-13,
                                   "adjoint_snes_atol": 1e-15, "adjoint_snes_stol": 0}, *small)
    assert stats.method == "snes/anderson" and stats.converged
    for a, b in zip(by_snes, exact):
        assert_close(a, b, 1e-8, "adjoint Anderson vs GMRES")


@double_scalars
def test_adjoint_ksp_options_are_honoured(small):
    exact, _ = _layer_grads({}, *small)
    cg, stats = _layer_grads({"adjoint_ksp_type": "bcgs"}, *small)
    assert stats.method == "ksp/bcgs"
    for a, b in zip(cg, exact):
        assert_close(a, b, 1e-7, "BiCGStab vs GMRES adjoint")


@double_scalars
def test_the_adjoint_solve_as_a_callable_of_ones_own(small):
    """jaxopt's idea: the backward's linear solve passed in. SciPy's GMRES on the matvec
    the layer hands over gives the KSP adjoint's gradient; a Neumann series of 3 terms an
    approximate one, whose residual the statistics report."""
    import numpy as np
    import scipy.sparse.linalg as sla

    def scipy_gmres(matvec, g):
        shape, n = g.shape, g.numel()
        op = sla.LinearOperator((n, n), dtype=np.float64, matvec=lambda v: matvec(
            torch.from_numpy(np.ascontiguousarray(v)).reshape(shape)).reshape(-1).numpy())
        u, info = sla.gmres(op, g.reshape(-1).numpy(), rtol=1e-13, atol=0, restart=64)
        assert info == 0
        return torch.from_numpy(u).reshape(shape)

    def neumann3(matvec, g):                  # u = g + J^T g + (J^T)^2 g
        u = g.clone()
        for _ in range(2):
            u = g + (u - matvec(u))
        return u

    exact, _ = _layer_grads({}, *small)
    mine, stats = _layer_grads({}, *small, adjoint_solve=scipy_gmres)
    assert stats.method == "callable/scipy_gmres" and stats.converged
    assert stats.final_residual < 1e-11 * stats.initial_residual
    for a, b in zip(mine, exact):
        assert_close(a, b, 1e-8, "scipy GMRES adjoint vs PETSc's")
    rough, stats = _layer_grads({}, *small, adjoint_solve=neumann3)
    assert 1e-6 * stats.initial_residual < stats.final_residual < stats.initial_residual
    assert not all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(rough, exact))


def test_an_adjoint_callable_answering_the_wrong_shape_is_named(small):
    cell, x, target = small
    layer = DEQ(cell, z_shape=lambda x: (x.shape[0], 8), adjoint_solve=lambda matvec, g: g[0])
    with pytest.raises(DEQError, match="linear_solve returned .* not a tensor shaped like g"):
        ((layer(x) - target) ** 2).sum().backward()
    layer.destroy()


@double_scalars
def test_jacobian_free_backprop_is_one_step_through_f(small):
    cell, x, target = small
    jfb, stats = _layer_grads({"adjoint_deq_method": "jfb"}, *small)
    assert stats.method == "jfb" and stats.vjp_count == 0
    layer = DEQ(cell, options=TIGHT, z_shape=lambda x: (x.shape[0], 8))
    with torch.no_grad():
        z_star = layer(x)
    manual = grads(((cell(z_star, x) - target) ** 2).sum(), [cell.W, cell.U, cell.b, x])
    layer.destroy()
    for a, b in zip(jfb, manual):
        assert_close(a, b, 1e-12, "JFB vs one step")


@double_scalars
def test_phantom_gradient_interpolates_between_jfb_and_exact(small):
    exact, _ = _layer_grads({}, *small)
    jfb, _ = _layer_grads({"adjoint_deq_method": "jfb"}, *small)
    one, s1 = _layer_grads({"adjoint_deq_method": "phantom", "adjoint_deq_phantom_steps": 1},
                           *small)
    many, s2 = _layer_grads({"adjoint_deq_method": "phantom", "adjoint_deq_phantom_steps": 150},
                            *small)
    assert s1.iterations == 1 and s2.iterations == 150 and s2.vjp_count == 150
    for a, b in zip(one, jfb):
        assert_close(a, b, 1e-12, "phantom(1) = JFB")
    for a, b in zip(many, exact):
        assert_close(a, b, 1e-8, "phantom(150) = exact")
    err = lambda g: sum(((a - b).norm() / b.norm()).item() for a, b in zip(g, exact))  # noqa
    damped, _ = _layer_grads({"adjoint_deq_method": "phantom", "adjoint_deq_phantom_steps": 5,
                              "adjoint_deq_phantom_damping": 0.8}, *small)
    assert err(damped) < err(jfb)


@double_scalars
def test_our_adjoint_options_given_in_code_are_honoured_under_the_command_line(
        small, petsc_options):
    cell, x, target = small
    exact, _ = _layer_grads({}, *small)

    def backward(adjoint_options):
        layer = DEQ(cell, options=TIGHT, adjoint_options=adjoint_options,
                    z_shape=lambda x: (x.shape[0], 8))
        out = grads(((layer(x) - target) ** 2).sum(), [cell.W, cell.U, cell.b, x])
        stats = layer.last_stats.backward
        layer.destroy()
        return out, stats

    many, stats = backward({"deq_method": "phantom", "deq_phantom_steps": 150})
    assert (stats.method, stats.iterations, stats.vjp_count) == ("phantom", 150, 150)
    for a, b in zip(many, exact):
        assert_close(a, b, 1e-8, "phantom(150) from adjoint_options")
    _, stats = backward({"snes_type": "anderson"})         # implies deq_method snes
    assert stats.method == "snes/anderson" and stats.converged
    petsc_options({"adjoint_deq_method": "jfb"})           # the command line wins
    _, stats = backward({"deq_method": "phantom"})
    assert stats.method == "jfb"


@pytest.mark.parametrize("options, message", [
    ({"deq_methd": "phantom"}, "'deq_methd' is not an option of ours.*deq_method"),
    ({"deq_phantom_steps": 0}, "-adjoint_deq_phantom_steps 0: must be in"),
    ({"deq_method": "newton"}, "-adjoint_deq_method newton: must be one of"),
    ({"-ksp_rtol": 1e-3}, "without the leading dash"),
])
def test_adjoint_options_that_cannot_be_honoured_are_refused(options, message):
    with pytest.raises(DEQOptionsError, match=message):
        DEQ(TanhCell(8, 5, seed=5), adjoint_options=options)


def test_layer_options_given_in_code_are_honoured_or_refused():
    layer = DEQ(TanhCell(8, 5, seed=5), options={"deq_warm_start": True})
    assert layer.warm_start
    layer.destroy()
    with pytest.raises(DEQOptionsError, match="'deq_warmstart' is not an option"):
        DEQ(TanhCell(8, 5, seed=5), options={"deq_warmstart": True})


@pytest.mark.parametrize("cell, message", [
    (TanhCell(8, 5, seed=5),                                  # W z fails on a 5-wide z
     r"first evaluation, with the state shaped like x \(4, 5\).*mat1 and mat2.*pass z_shape="),
    (lambda z, x: torch.tanh(x @ torch.ones(5, 8, dtype=x.dtype)),   # returns (4, 8)
     r"shaped like z \(4, 5\) .*got \(4, 8\); pass z_shape=\(4, 8\)"),
])
def test_a_state_not_shaped_like_x_asks_for_z_shape(cell, message):
    x = torch.randn(4, 5, dtype=torch.float64)
    layer = DEQ(cell)
    with pytest.raises(DEQInputError, match=message):
        layer(x)
    layer.destroy()
    fixed = DEQ(cell, z_shape=lambda x: (x.shape[0], 8))
    z = fixed(x)
    assert z.shape == (4, 8) and fixed.last_stats.forward.converged
    fixed.destroy()


@double_scalars
def test_use_after_destroy_is_a_clear_error(small):
    cell, x, target = small
    layer = DEQ(cell, z_shape=lambda x: (x.shape[0], 8))
    loss = ((layer(x) - target) ** 2).sum()
    problem, z_star = layer._last_problem, layer._last_z
    layer.destroy()
    layer.destroy()                                   # a second call does nothing
    with pytest.raises(DEQError, match=r"adjoint solver \(prefix adjoint_\).*after destroy"):
        loss.backward()
    with pytest.raises(DEQError, match="DEQ layer .*after destroy"):
        layer(x)
    with pytest.raises(DEQError, match="DEQ layer .*after destroy"):
        layer.tangent(z_star, problem, torch.ones_like(z_star))
    assert 0 < layer.spectral_radius(iters=20) < 1     # the torch side is intact


@double_scalars
def test_memory_does_not_grow_with_forward_iterations():
    x = torch.randn(16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    saved, its = {}, {}
    for contraction in (0.2, 0.95):
        cell = TanhCell(32, contraction=contraction, seed=9)
        with torch.no_grad():                 # small inputs: z* near 0, tanh' ~ 1, slow
            cell.b.mul_(1e-3)
        layer = DEQ(cell, options={"snes_type": "nrichardson", "snes_linesearch_type": "basic",
                                   "snes_rtol": 1e-12, "snes_max_it": 2000})
        with SavedTensorBytes() as counter:
            z = layer(1e-3 * x)
        saved[contraction], its[contraction] = counter.total, layer.last_stats.forward.iterations
        z.sum().backward()                    # and backward runs
        layer.destroy()
    assert its[0.95] > 3 * its[0.2], its
    assert saved[0.95] == saved[0.2] > 0, saved
    # unrolled autograd through the same iterations would save ~its times as much
    cell = TanhCell(32, contraction=0.95, seed=9)
    with SavedTensorBytes() as counter:
        z = torch.zeros(16, 32, dtype=torch.float64)
        for _ in range(its[0.95]):
            z = cell(z, 1e-3 * x)
    assert counter.total > its[0.95] // 2 * saved[0.95]


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    cell = TanhCell(8, 4, contraction=0.8, seed=10)
    head = nn.Linear(8, 1, dtype=torch.float64)
    layer = DEQ(cell, z_shape=lambda x: (x.shape[0], 8))
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    opt = torch.optim.Adam(list(layer.parameters()) + list(head.parameters()), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((head(layer(x)) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is not None for p in layer.parameters())
    layer.destroy()


@double_scalars
def test_inference_under_no_grad_runs_no_adjoint(small):
    cell, x, _ = small
    layer = DEQ(cell, z_shape=lambda x: (x.shape[0], 8))
    with torch.no_grad():
        z = layer(x)
    assert z.grad_fn is None and layer.last_stats.backward is None
    assert (z - cell(z, x)).norm() < 1e-6
    layer.destroy()


def test_diverging_adjoint_ksp_is_a_clear_error(small):
    cell, x, target = small
    layer = DEQ(cell, adjoint_options={"ksp_max_it": 1, "ksp_rtol": 1e-14},
                z_shape=lambda x: (x.shape[0], 8))
    loss = ((layer(x) - target) ** 2).sum()
    with pytest.raises(DEQConvergenceError, match="adjoint solve .* DIVERGED_MAX_IT"):
        loss.backward()
    layer.destroy()


def test_warm_start_reuses_the_previous_equilibrium(small):
    cell, x, _ = small
    layers = {ws: DEQ(cell, options={"snes_rtol": 1e-6, "snes_atol": 1e-9}, warm_start=ws,
                      z_shape=lambda x: (x.shape[0], 8)) for ws in (False, True)}
    its = {}
    for ws, layer in layers.items():
        with torch.no_grad():
            layer(x)
            layer(x + 1e-4)                   # a similar batch
        its[ws] = layer.last_stats.forward.iterations
        layer.destroy()
    assert its[True] < its[False], its


def test_spectral_radius_estimate():
    g = torch.Generator().manual_seed(11)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64, generator=g))
    A = Q @ torch.diag(torch.linspace(-0.3, 0.9, 10, dtype=torch.float64)) @ Q.T
    layer = DEQ(lambda z, x: z @ A.T + x)
    with torch.no_grad():
        layer(torch.randn(3, 10, dtype=torch.float64, generator=g))
    assert layer.spectral_radius(iters=200) == pytest.approx(0.9, rel=1e-3)
    layer.destroy()

    cell = TanhCell(8, 5, contraction=0.9, seed=12)
    x = torch.randn(1, 5, dtype=torch.float64, generator=g)
    layer = DEQ(cell, z_shape=(1, 8))
    with torch.no_grad():
        z = layer(x)
    J = torch.autograd.functional.jacobian(lambda v: cell(v.view(1, 8), x).view(-1), z.view(-1))
    rho = torch.linalg.eigvals(J).abs().max().item()
    assert layer.spectral_radius(iters=300) == pytest.approx(rho, rel=0.05)
    layer.destroy()


def test_float32_model_gradients():
    cell = TanhCell(8, 5, contraction=0.8, seed=13, dtype=torch.float32)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(14))
    layer = DEQ(cell, options={"snes_rtol": 1e-10}, z_shape=lambda x: (x.shape[0], 8))
    implicit = grads(layer(x).pow(2).sum(), [cell.W])
    explicit = grads(unrolled(cell, x).pow(2).sum(), [cell.W])
    assert implicit[0].dtype == torch.float32
    assert_close(implicit[0], explicit[0], 1e-5, "float32 dL/dW")
    layer.destroy()


def test_double_backward_is_refused_not_wrong(small):
    cell, x, target = small
    layer = DEQ(cell, z_shape=lambda x: (x.shape[0], 8))
    loss = ((layer(x) - target) ** 2).sum()
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(loss, [cell.W], create_graph=True)
    layer.destroy()


@pytest.mark.parametrize("method", [{}, {"adjoint_snes_type": "anderson"}])
@double_scalars
def test_batch_size_changes_between_backward_passes(method):
    cell = TanhCell(8, 5, contraction=0.8, seed=15)
    from petsc4py import PETSc
    for k, v in method.items():
        PETSc.Options().setValue(k, v)
    try:
        layer = DEQ(cell, options=TIGHT, adjoint_options=EXACT_ADJOINT,
                    z_shape=lambda x: (x.shape[0], 8))
        for batch in (6, 3, 6, 1):
            x = torch.randn(batch, 5, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(batch))
            (g,) = grads(layer(x).pow(2).sum(), [cell.W])
            (ref,) = grads(unrolled(cell, x).pow(2).sum(), [cell.W])
            assert_close(g, ref, 1e-6, f"dL/dW at batch {batch}")
        layer.destroy()
    finally:
        for k in method:
            PETSc.Options().delValue(k)
