"""DEQSolver against independent answers, for every supported configuration."""

import numpy as np
import pytest
import scipy.optimize
import torch
from petsc4py import PETSc

from deq_petsc import DEQConvergenceError, DEQNonFiniteError, DEQSolver, FixedPointProblem
from deq_petsc.core.errors import DEQError, DEQOptionsError
from deq_petsc.science.models import TanhCell
from deq_petsc.core.reference import torch_anderson

from conftest import assert_close
from helpers import double_scalars

TIGHT = {"snes_rtol": 1e-13, "snes_atol": 1e-13, "snes_stol": 1e-16, "ksp_rtol": 1e-12,
         "snes_max_it": 2000}

CONFIGS = {
    "picard": {"snes_type": "nrichardson", "snes_linesearch_type": "basic"},
    "anderson": {"snes_type": "anderson", "snes_anderson_m": 5},
    "anderson_damped": {"snes_type": "anderson", "snes_anderson_m": 3,
                        "snes_anderson_beta": 0.7},
    "ngmres": {"snes_type": "ngmres"},
    "newtonls": {"snes_type": "newtonls", "ksp_type": "gmres"},
    "newtontr": {"snes_type": "newtontr", "ksp_type": "gmres"},
    "anderson_npc_picard": {"snes_type": "anderson", "npc_snes_type": "nrichardson",
                            "npc_snes_linesearch_type": "basic", "npc_snes_max_it": 1},
}


def tanh_problem(batch=4, n=8, contraction=0.8, seed=0, dtype=torch.float64):
    cell = TanhCell(n, 5, contraction=contraction, seed=seed, dtype=torch.float64)
    x = torch.randn(batch, 5, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed + 100))
    if dtype != torch.float64:
        cell = cell.to(dtype)
        x = x.to(dtype)
    return cell, x, FixedPointProblem(cell, x, z_shape=(batch, n))


def scipy_fixed_point(cell, x, shape):
    """Independent reference: MINPACK's hybrid Powell method with the dense Jacobian."""
    W, U, b = (p.detach().numpy() for p in (cell.W, cell.U, cell.b))
    xin = x.detach().double().numpy() @ U.T + b

    def residual(zf):
        z = zf.reshape(shape)
        return (z - np.tanh(z @ W.T + xin)).reshape(-1)

    def jac(zf):
        z = zf.reshape(shape)
        s = 1 - np.tanh(z @ W.T + xin) ** 2       # (batch, n)
        J = np.zeros((zf.size, zf.size))
        n = shape[1]
        for i in range(shape[0]):
            J[i * n:(i + 1) * n, i * n:(i + 1) * n] = np.eye(n) - s[i][:, None] * W
        return J

    sol = scipy.optimize.root(residual, np.zeros(int(np.prod(shape))), jac=jac, method="hybr",
                              tol=1e-13)
    # MINPACK may stop with "xtol too small" at machine precision: judge by the residual.
    assert np.linalg.norm(residual(sol.x)) < 1e-13, sol.message
    return torch.from_numpy(sol.x.reshape(shape))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@double_scalars
def test_every_configuration_matches_scipy(name):
    cell, x, problem = tanh_problem()
    reference = scipy_fixed_point(cell, x, (4, 8))
    with DEQSolver(options={**TIGHT, **CONFIGS[name]}) as solver:
        z, stats = solver.solve(problem)
    assert_close(z, reference, 1e-8, name)
    assert stats.converged, stats.reason_name
    assert stats.reason_name.startswith("CONVERGED_")
    expected_type = CONFIGS[name]["snes_type"]
    assert stats.snes_type == expected_type
    assert len(stats.residual_norms) == stats.iterations + 1
    assert stats.final_residual < 1e-9 * stats.initial_residual + 1e-12
    assert stats.function_evals >= stats.iterations
    if expected_type.startswith("newton"):
        assert stats.jvp_count > 0 and stats.linear_iterations > 0
    else:
        assert stats.jvp_count == 0


@double_scalars
def test_anderson_beats_picard_on_a_slow_contraction():
    # A symmetric W with top eigenvalue 0.97 and tiny inputs, so that z* stays where
    # tanh' ~ 1: Picard's rate is then ~0.97 per step. (A random W's spectral radius
    # is about half its norm, and a large z* saturates tanh; both make Picard fast.)
    cell, x, problem = tanh_problem(seed=3)
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=g))
    with torch.no_grad():
        cell.W.copy_(Q @ torch.diag(torch.linspace(-0.5, 0.97, 8, dtype=torch.float64)) @ Q.T)
        cell.b.mul_(1e-3)
    problem = FixedPointProblem(cell, 1e-3 * x, z_shape=(4, 8))
    options = {"snes_rtol": 1e-10, "snes_stol": 0.0, "snes_max_it": 5000}
    with DEQSolver(options={**options, **CONFIGS["picard"]}) as picard:
        z_p, s_p = picard.solve(problem)
    with DEQSolver(options={**options, **CONFIGS["anderson"]}) as anderson:
        z_a, s_a = anderson.solve(problem)
    assert_close(z_a, z_p, 1e-8, "Anderson vs Picard solution")
    assert s_p.function_evals > 500, s_p.summary()
    assert s_a.function_evals < s_p.function_evals / 4, (s_a.summary(), s_p.summary())


@pytest.mark.parametrize("m", [2, 5])
@double_scalars
def test_petsc_anderson_takes_the_iterations_of_an_independent_anderson(m):
    """PETSc's anderson and a type-II Anderson written in torch walk the same path."""
    cell, x, problem = tanh_problem(contraction=0.95, seed=8)
    with DEQSolver(options={"snes_type": "anderson", "snes_rtol": 1e-10, "snes_stol": 0.0,
                            "snes_anderson_m": m}) as s:
        z, stats = s.solve(problem)
    z_ref, its, evals, history = torch_anderson(lambda v: cell(v, x).detach(), problem.z0,
                                                m=m, rtol=1e-10)
    assert its > 10
    assert abs(stats.iterations - its) <= 1, (stats.iterations, its)
    assert_close(stats.residual_norms[:10], history[:10], 1e-6, "residual histories")
    assert_close(z, z_ref, 1e-8, "solutions")


@pytest.mark.parametrize("name", ["anderson", "newtonls", "picard"])
@double_scalars
def test_linear_cell_matches_direct_solve(name):
    g = torch.Generator().manual_seed(7)
    n = 20
    A = torch.randn(n, n, dtype=torch.float64, generator=g)
    A *= 0.9 / torch.linalg.matrix_norm(A, ord=2)
    b = torch.randn(3, n, dtype=torch.float64, generator=g)
    problem = FixedPointProblem(lambda z, x: z @ A.T + x, b)
    expected = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - A, b.T).T
    with DEQSolver(options={**TIGHT, **CONFIGS[name]}) as solver:
        z, stats = solver.solve(problem)
    assert_close(z, expected, 1e-10, f"{name} on z = A z + b")
    if name == "newtonls":
        assert stats.iterations <= 2   # exact Jacobian: Newton is one linear solve


def test_float32_model_converges_to_single_precision():
    cell, x, problem = tanh_problem(dtype=torch.float32)
    reference = scipy_fixed_point(cell.double(), x.double(), (4, 8))
    cell.float()
    with DEQSolver(options={"snes_rtol": 1e-6}) as solver:
        z, stats = solver.solve(problem)
    assert z.dtype == torch.float32
    assert_close(z, reference, 1e-5, "float32 cell")


@pytest.mark.parametrize("name", ["anderson", "picard", "newtonls"])
def test_float32_default_tolerance_is_one_single_precision_reaches(name, petsc_options):
    # At PETSc's 1e-8 float32 rounding stalled these at relative residuals ~3e-8: Anderson
    # ended on the step tolerance, Picard and Newton at -snes_max_it (an error).
    cell = TanhCell(64, 16, contraction=0.95, seed=1, dtype=torch.float32)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    problem = FixedPointProblem(cell, x, z_shape=(32, 64))
    with DEQSolver(options=CONFIGS[name]) as solver:
        _, stats = solver.solve(problem)
        rtol = solver.snes.getTolerances()[0]
    assert rtol == pytest.approx(100 * torch.finfo(torch.float32).eps)
    assert stats.reason_name == "CONVERGED_FNORM_RELATIVE", stats.summary()
    assert stats.relative_residual <= rtol
    with DEQSolver(options=CONFIGS[name]) as solver:          # float64 keeps PETSc's 1e-8
        solver.solve(FixedPointProblem(cell.double(), x.double(), z_shape=(32, 64)))
        assert solver.snes.getTolerances()[0] == pytest.approx(1e-8)
    petsc_options(snes_rtol=1e-6)                             # the user's choice wins
    with DEQSolver(options=CONFIGS[name]) as solver:
        solver.solve(FixedPointProblem(cell.float(), x, z_shape=(32, 64)))
        assert solver.snes.getTolerances()[0] == pytest.approx(1e-6)


def test_solution_tensors_are_independent_between_solves():
    cell, x, problem = tanh_problem()
    with DEQSolver() as solver:
        z1, _ = solver.solve(problem)
        z1_copy = z1.clone()
        z2, _ = solver.solve(FixedPointProblem(cell, 2 * x, z_shape=(4, 8)))
    assert torch.equal(z1, z1_copy)
    assert not torch.allclose(z1, z2)


@double_scalars
def test_batch_size_change_resets_the_snes():
    cell, x, _ = tanh_problem()
    with DEQSolver(options=TIGHT) as solver:
        for batch in (4, 2, 6):
            problem = FixedPointProblem(cell, x.repeat(2, 1)[:batch], z_shape=(batch, 8))
            z, stats = solver.solve(problem)
            assert z.shape == (batch, 8) and stats.converged
            assert (z - cell(z, problem.x)).norm() < 1e-11


@double_scalars
def test_warm_start_from_the_solution_takes_no_iterations():
    cell, x, problem = tanh_problem()
    with DEQSolver(options={"snes_rtol": 1e-12, "snes_atol": 1e-10,
                                    "snes_stol": 0.0}) as solver:
        z, first = solver.solve(problem)
        assert first.final_residual < 1e-10
        _, stats = solver.solve(problem, z0=z)
    assert stats.iterations == 0 and stats.reason_name == "CONVERGED_FNORM_ABS"


def test_command_line_wins_over_program_defaults(petsc_options):
    petsc_options(snes_type="ngmres")
    cell, x, problem = tanh_problem()
    with DEQSolver(options={"snes_type": "newtonls"}) as solver:
        _, stats = solver.solve(problem)
    assert stats.snes_type == "ngmres"


def test_prefix_isolates_solvers(petsc_options):
    petsc_options({"inner_snes_type": "ngmres", "inner_snes_max_it": 77})
    cell, x, problem = tanh_problem()
    with DEQSolver(prefix="inner_") as inner, DEQSolver() as plain:
        _, s_inner = inner.solve(problem)
        _, s_plain = plain.solve(problem)
        assert inner.snes.getTolerances()[3] == 77
    assert (s_inner.snes_type, s_plain.snes_type) == ("ngmres", "lean-anderson")
    # program defaults were taken out of the database again
    assert not PETSc.Options().hasName("snes_anderson_m")


def test_max_it_raises_with_reason_and_history():
    cell, x, problem = tanh_problem(contraction=3.0, seed=5)
    with DEQSolver(options={"snes_max_it": 5}) as solver:
        with pytest.raises(DEQConvergenceError, match="DIVERGED_MAX_IT") as info:
            solver.solve(problem)
    err = info.value
    assert err.reason_name == "DIVERGED_MAX_IT" and err.reason < 0
    assert err.iterations == 5 and len(err.history) == 6
    assert not isinstance(err, DEQNonFiniteError)


def test_unchecked_solver_returns_stats_instead():
    cell, x, problem = tanh_problem(contraction=3.0, seed=5)
    with DEQSolver(options={"snes_max_it": 5}, check_convergence=False) as solver:
        _, stats = solver.solve(problem)
    assert not stats.converged and stats.reason_name == "DIVERGED_MAX_IT"


@pytest.mark.parametrize("name", ["anderson", "picard", "newtonls"])
def test_nan_from_the_cell_is_reported_as_such(name):
    def cell(z, x):
        out = torch.tanh(0.5 * z + x)
        return out if z.abs().sum() == 0 else out * float("nan")
    problem = FixedPointProblem(cell, torch.ones(2, 3, dtype=torch.float64))
    with DEQSolver(options=CONFIGS[name]) as solver:
        with pytest.raises(DEQNonFiniteError, match="NaN/Inf") as info:
            solver.solve(problem)
    assert info.value.stats.nonfinite_evals >= 1


def test_our_options_given_in_code_are_honoured_or_refused():
    problem = FixedPointProblem(lambda z, x: z * float("nan"), torch.ones(2, 3))
    counted = {}
    for check in (True, False):
        with DEQSolver(options={"deq_check_finite": check}) as solver:
            with pytest.raises(DEQNonFiniteError):         # the NaN norm still stops it
                solver.solve(problem)
            counted[check] = solver.last_stats.nonfinite_evals
    assert counted[True] >= 1 and counted[False] == 0, counted
    with pytest.raises(DEQOptionsError, match="'deq_chek_finite' is not an option of ours"):
        DEQSolver(options={"deq_chek_finite": False})


def test_a_solve_after_destroy_is_a_clear_error():
    _, _, problem = tanh_problem()
    with DEQSolver(prefix="gone_") as solver:
        _, stats = solver.solve(problem)
    solver.destroy()                                  # again: nothing to do
    assert solver.destroyed and solver.last_stats is stats
    with pytest.raises(DEQError, match=r"prefix gone_\) was used after destroy\(\)"):
        solver.solve(problem)


def test_stats_summary_and_dict():
    _, _, problem = tanh_problem()
    with DEQSolver() as solver:
        _, stats = solver.solve(problem)
    d = stats.as_dict()
    assert d["converged"] and d["reason_name"] == stats.reason_name
    assert "anderson" in stats.summary() and stats.reason_name in stats.summary()
    assert solver.last_stats is stats


def test_accept_max_it_returns_the_last_iterate_but_not_nan(petsc_options):
    cell, x, problem = tanh_problem(contraction=0.9, seed=5)
    with DEQSolver(options={"snes_max_it": 3, "deq_accept_max_it": True}) as solver:
        z, stats = solver.solve(problem)
    assert stats.reason_name == "DIVERGED_MAX_IT" and not stats.converged
    assert stats.final_residual < stats.initial_residual
    petsc_options({"deq_accept_max_it": "false"})       # the command line wins
    with DEQSolver(options={"snes_max_it": 3, "deq_accept_max_it": True}) as solver:
        with pytest.raises(DEQConvergenceError, match="DIVERGED_MAX_IT"):
            solver.solve(problem)
    nan_problem = FixedPointProblem(lambda z, x: z * float("nan"), x, z_shape=(4, 8))
    with DEQSolver(options={"snes_max_it": 3, "deq_accept_max_it": True}) as solver:
        with pytest.raises(DEQNonFiniteError):
            solver.solve(nan_problem)


def test_an_exception_in_the_cell_surfaces_as_itself():
    """PETSc turns a callback's exception into an error code; the solver re-raises the original."""
    def cell(z, x):
        raise ValueError("the cell failed on purpose")

    problem = FixedPointProblem(cell, torch.zeros(3, 4, dtype=torch.float64))
    with DEQSolver() as solver, pytest.raises(ValueError, match="the cell failed on purpose"):
        solver.solve(problem)


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
@double_scalars
def test_per_sample_stopping_rule(stop_mode):
    """TorchDEQ's rule: stop at the first iterate where every sample's residual is < tol."""
    from deq_petsc.core.convergence import PerSampleTest

    cell = TanhCell(10, 3, contraction=0.9, seed=7)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    x[0] *= 30                     # one sample far from the others: the max decides
    problem = FixedPointProblem(cell, x, z_shape=(6, 10))
    test = PerSampleTest(6, 1e-9, stop_mode)
    with DEQSolver(options={"snes_type": "nrichardson", "snes_linesearch_type": "basic",
                            "snes_max_it": 500}) as solver:
        solver.snes.setConvergenceTest(test)
        z, stats = solver.solve(problem)
    with torch.no_grad():
        fz = cell(z, x)
    per_sample = (fz - z).norm(dim=1) / ((fz.norm(dim=1) + 1e-9) if stop_mode == "rel" else 1)
    assert stats.converged and per_sample.max() < 1e-9
    assert test.history[-2][stop_mode].max() >= 1e-9       # not one iteration later than needed
    assert len(test.history) == stats.iterations + 1


@pytest.mark.parametrize("converged, reason, accept, finite, used", [
    (True, "CONVERGED_FNORM_RELATIVE", False, True, True),
    (False, "DIVERGED_MAX_IT", False, True, False),        # the cap, not accepted: raise
    (False, "DIVERGED_MAX_IT", True, True, True),          # -deq_accept_max_it
    (False, "DIVERGED_MAXITS", True, True, True),          # a TAO epoch's budget
    (False, "DIVERGED_MAX_IT", True, False, False),        # at the cap but NaN: raise
    (False, "DIVERGED_DTOL", True, True, False),           # other failures always raise
    (False, "DIVERGED_LINE_SEARCH", True, True, False),
])
def test_one_acceptance_policy_for_every_solve(converged, reason, accept, finite, used):
    from deq_petsc.core.convergence import solve_accepted
    assert solve_accepted(converged, reason, accept, finite) is used
