"""One family of solve statistics: forward, adjoint, KSP and TAO outcomes read alike."""

import json
import math

import pytest
import torch
from torch import nn

from deq_petsc import (AdjointSolver, AdjointStats, DEQSolver, FixedPointProblem, KSPStats,
                       SolveOutcome, SolveStats)
from deq_petsc.core.adjoint import DEFAULT_KSP_OPTIONS, FIXED_STEPS, ImplicitKSP
from deq_petsc.science.models import TanhCell
from deq_petsc.science.objectives import Regression
from deq_petsc.science.train.tao import TaoResult, train_tao
from helpers import double_scalars

FORWARD = {"snes_rtol": 1e-10, "snes_stol": 0, "snes_max_it": 500}
KSP = {**DEFAULT_KSP_OPTIONS, "ksp_rtol": 1e-10}


def _problem():
    cell = TanhCell(8, 5, contraction=0.8, seed=1, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return cell, x, FixedPointProblem(cell, x, z_shape=(4, 8))


def _vector(seed):
    return torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def solves():
    """``{kind: (stats, true residual norm at the returned solution)}`` for a real forward
    SNES solve, a real adjoint KSP solve and a tangent KSP solve of the same problem."""
    cell, x, problem = _problem()
    out = {}
    with DEQSolver(prefix="fam_", options=FORWARD) as solver:
        z, stats = solver.solve(problem)
    with torch.no_grad():
        out["forward"] = stats, float((z - cell(z, x)).norm())
    lin = problem.linearize(z)
    g = _vector(3)
    adjoint = AdjointSolver(prefix="fam_adjoint_", method="ksp", ksp_options=KSP)
    u, stats = adjoint.solve(problem, z, g)
    out["adjoint"] = stats, float((u - lin.vjp(u) - g).norm())     # (I - J)^T u = g
    adjoint.destroy()
    tangent = ImplicitKSP("fam_tangent_", adjoint.comm, KSP, transpose=False)
    r = _vector(4)
    dz, stats = tangent.solve(problem, z, r)
    out["tangent"] = stats, float((dz - lin.jvp(dz) - r).norm())    # (I - J) dz = r
    tangent.destroy()
    return out


@double_scalars
def test_every_solve_reports_a_member_of_the_family(solves):
    forward, adjoint, tangent = (solves[k][0] for k in ("forward", "adjoint", "tangent"))
    assert type(forward) is SolveStats and type(adjoint) is AdjointStats
    assert type(tangent) is KSPStats
    for kind, (stats, true_residual) in solves.items():
        assert isinstance(stats, SolveOutcome), kind
        assert stats.converged and stats.reason > 0, (kind, stats.reason_name)
        assert len(stats.residual_norms) == stats.iterations + 1, kind
        assert stats.initial_residual == stats.residual_norms[0] > 0
        assert stats.final_residual == stats.residual_norms[-1]
        assert stats.relative_residual == pytest.approx(stats.final_residual
                                                        / stats.initial_residual, rel=1e-15)
        # the recorded history ends at the residual of the solution the solve returned
        assert stats.final_residual == pytest.approx(true_residual, rel=1e-5, abs=1e-13), kind
        assert stats.time > 0
        assert stats.method in stats.summary() and stats.reason_name in stats.summary()
    assert forward.reason_name == "CONVERGED_FNORM_RELATIVE"
    assert forward.relative_residual <= 1e-10 and forward.snes_type == forward.method
    assert adjoint.method == tangent.method == "ksp/gmres"
    assert adjoint.reason_name == tangent.reason_name == "CONVERGED_RTOL"
    assert adjoint.vjp_count > 0 and tangent.jvp_count > 0 and tangent.vjp_count == 0


@double_scalars
def test_as_dict_is_plain_json(solves):
    for kind, (stats, _) in solves.items():
        d = json.loads(json.dumps(stats.as_dict(), allow_nan=False))
        assert d["method"] == stats.method and d["reason"] == stats.reason, kind
        assert d["converged"] is True and d["iterations"] == stats.iterations
        assert d["relative_residual"] == stats.relative_residual
        assert d["residual_norms"] == stats.residual_norms
    forward = solves["forward"][0].as_dict()
    assert forward["snes_type"] == forward["method"] and forward["function_evals"] > 0


def test_as_dict_turns_missing_and_non_finite_residuals_into_null():
    # a phantom/JFB backward records no residual; a solve that met NaN records one
    for stats in (AdjointStats(method="jfb", reason=1, reason_name="CONVERGED_ITS",
                               iterations=1),
                  SolveStats(method="anderson", reason=-6, reason_name="DIVERGED_FNORM_NAN",
                             iterations=2, residual_norms=[2.0, math.inf, math.nan])):
        d = json.loads(json.dumps(stats.as_dict(), allow_nan=False))
        assert d["initial_residual"] is None or d["initial_residual"] == 2.0
        assert d["final_residual"] is None and d["relative_residual"] is None
        assert d["method"] == stats.method and d["iterations"] == stats.iterations
    assert d["residual_norms"] == [2.0, None, None]


def test_a_capped_solve_is_not_converged_in_every_member(petsc_options):
    cell, x, problem = _problem()
    with DEQSolver(prefix="cap_", options={"snes_max_it": 2},
                   check_convergence=False) as solver:
        z, forward = solver.solve(problem)
    tangent = ImplicitKSP("cap_tangent_", solver.comm, {**KSP, "ksp_max_it": 2}, transpose=False)
    _, ksp = tangent.solve(problem, z, _vector(4))
    tangent.destroy()
    # the adjoint accepts its cap only when told to, and records it as not converged
    adjoint = AdjointSolver(prefix="cap_adjoint_", method="ksp",
                            ksp_options={**KSP, "ksp_max_it": 2, "deq_accept_max_it": True})
    _, backward = adjoint.solve(problem, z, _vector(3))
    adjoint.destroy()
    for stats in (forward, ksp, backward):
        assert not stats.converged and stats.reason < 0
        assert stats.reason_name == "DIVERGED_MAX_IT" and stats.iterations == 2
        assert 0 < stats.relative_residual < 1


@pytest.mark.parametrize("method,name,its", [("jfb", "JACOBIAN_FREE", 0),
                                             ("phantom", "UNROLLED_3", 3)])
def test_fixed_step_backwards_count_as_converged(method, name, its, petsc_options):
    petsc_options({"fix_deq_phantom_steps": 3})
    cell, x, problem = _problem()
    with DEQSolver(prefix="fix_fwd_") as solver:
        z, _ = solver.solve(problem)
    adjoint = AdjointSolver(prefix="fix_", method=method)
    g = _vector(3)
    u, stats = adjoint.solve(problem, z, g)
    adjoint.destroy()
    assert isinstance(stats, SolveOutcome) and stats.converged and stats.reason == FIXED_STEPS
    assert (stats.method, stats.reason_name, stats.iterations) == (method, name, its)
    assert stats.vjp_count == its and math.isnan(stats.relative_residual)
    if method == "jfb":
        assert torch.equal(u, g)


@double_scalars
def test_a_tao_solve_is_a_member_too(petsc_options):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, dtype=torch.float64, generator=g)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    petsc_options({"tao_type": "lmvm", "tao_gatol": 1e-9, "tao_grtol": 0, "tao_max_it": 200})
    result = train_tao(model, Regression(None, 0.0, 1.0, "y"), X, y)
    assert isinstance(result, SolveOutcome) and type(result) is TaoResult
    assert result.converged and result.reason_name == "CONVERGED_GATOL"
    assert result.tao_type == result.method == "lmvm"
    # the residual of a minimisation is the gradient norm, monitored at every iterate
    assert result.residual_norms == [h[2] for h in result.history]
    assert result.final_residual == result.gradient_norm < 1e-9 < result.initial_residual
    assert result.relative_residual == pytest.approx(result.gradient_norm
                                                     / result.initial_residual)
    d = json.loads(json.dumps(result.as_dict(), allow_nan=False))
    assert d["tao_type"] == "lmvm" and d["counts"]["gradient"] == result.counts["gradient"] > 0
    assert "lmvm" in result.summary() and "CONVERGED_GATOL" in result.summary()
    with pytest.raises(AttributeError):
        result.tao_type = "nls"          # an alias of method, read-only
