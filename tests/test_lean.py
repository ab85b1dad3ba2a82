"""The lean SNES types (deq_petsc.core.lean): PETSc's iterates, per-sample stopping, no casts."""

import numpy as np
import pytest
import scipy.optimize
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from deq_petsc import DEQSolver, FixedPointProblem
from deq_petsc.core.errors import DEQConvergenceError, DEQNonFiniteError, DEQOptionsError
from deq_petsc.core.lean import options as lean
from deq_petsc.science.models import TanhCell

PICARD = {"snes_type": "nrichardson", "snes_linesearch_type": "basic"}
TIGHT = {"snes_rtol": 1e-10, "snes_max_it": 500}


def _problem(batch=6, n=12, contraction=0.9, dtype=torch.float64, seed=3, spread=True):
    cell = TanhCell(n, 5, contraction=contraction, seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 5, dtype=dtype, generator=g)
    if spread:              # samples of very different difficulty: per-sample stopping pays
        x = x * torch.logspace(-2, 0.5, batch, dtype=dtype).reshape(-1, 1)
    return cell, x, FixedPointProblem(cell, x, z_shape=(batch, n), independent_samples=True)


def _solve(problem, options, prefix="lt_"):
    with DEQSolver(prefix=prefix, options=options) as solver:
        return solver.solve(problem)


@pytest.mark.parametrize("petsc, mine", [
    (PICARD, lean("picard")),
    ({**PICARD, "snes_linesearch_damping": 0.7}, {**lean("picard"),
                                                  "snes_linesearch_damping": 0.7}),
    ({"snes_type": "anderson", "snes_anderson_m": 1}, {**lean("anderson"),
                                                       "snes_anderson_m": 1}),
    ({"snes_type": "anderson", "snes_anderson_m": 4}, {**lean("anderson"),
                                                       "snes_anderson_m": 4}),
    ({"snes_type": "anderson", "snes_anderson_m": 3, "snes_anderson_beta": 0.6},
     {**lean("anderson"), "snes_anderson_m": 3, "snes_anderson_beta": 0.6}),
], ids=["picard", "picard-damped", "anderson1", "anderson4", "anderson3-beta"])
def test_batch_stopping_repeats_petscs_own_iterates(petsc, mine):
    """Under -deq_sample_stop batch a lean type is PETSc's algorithm: the same residual
    history and answer to rounding, the same iterations and reason."""
    _, _, problem = _problem(spread=False)
    # PETSc's Anderson also stops on a short step (-snes_stol); the lean types do not
    z_ref, ref = _solve(problem, {**petsc, **TIGHT, "snes_stol": 0})
    z, got = _solve(problem, {**mine, **TIGHT, "snes_stol": 0, "deq_sample_stop": "batch"})
    assert got.method.startswith("lean-") and ref.method in ("nrichardson", "anderson")
    assert got.reason_name == ref.reason_name == "CONVERGED_FNORM_RELATIVE"
    assert got.iterations == ref.iterations
    r0 = ref.residual_norms[0]
    diffs = [abs(a - b) / r0 for a, b in zip(got.residual_norms, ref.residual_norms)]
    assert max(diffs) < 1e-9, diffs
    assert torch.allclose(z, z_ref, rtol=0, atol=1e-9)


def _scipy_fixed_point(cell, x, n):
    def residual(flat):
        z = torch.from_numpy(flat.reshape(x.shape[0], n))
        with torch.no_grad():
            return (z - cell(z, x)).reshape(-1).numpy()
    sol = scipy.optimize.root(residual, np.zeros(x.shape[0] * n), tol=1e-13)
    assert sol.success
    return torch.from_numpy(sol.x.reshape(x.shape[0], n))


@pytest.mark.parametrize("name", ["picard", "anderson"])
@pytest.mark.parametrize("stop", ["batch", "worst", "each"])
def test_every_stopping_rule_reaches_scipys_fixed_point(name, stop):
    cell, x, problem = _problem()
    reference = _scipy_fixed_point(cell, x, 12)
    z, stats = _solve(problem, {**lean(name), **TIGHT, "deq_sample_stop": stop})
    assert stats.converged and stats.sample_stop == stop
    assert torch.allclose(z, reference, rtol=0, atol=1e-8)
    with torch.no_grad():
        per_sample = (z - cell(z, x)).norm(dim=1)
    assert float(per_sample.max()) < 1e-8


@pytest.mark.parametrize("name", ["picard", "anderson"])
def test_per_sample_stopping_counts_each_samples_iterations_and_saves_evaluations(name):
    _, _, problem = _problem(batch=8)
    _, worst = _solve(problem, {**lean(name), **TIGHT, "deq_sample_stop": "worst"})
    _, each = _solve(problem, {**lean(name), **TIGHT, "deq_sample_stop": "each"})
    assert worst.samples == each.samples == 8
    # the batch iterated whole: every sample cost every evaluation
    assert worst.sample_evals == 8 * worst.function_evals
    assert max(worst.sample_iterations) == worst.iterations
    # samples that stop early stop costing: the count is the sum of their own iterations
    assert each.sample_evals == sum(i + 1 for i in each.sample_iterations)
    assert each.sample_evals < worst.sample_evals
    assert min(each.sample_iterations) < max(each.sample_iterations)
    assert each.mean_sample_iterations < each.iterations


def test_petscs_own_types_report_the_whole_batchs_iterations_per_sample():
    _, _, problem = _problem(batch=4)
    _, stats = _solve(problem, {**PICARD, **TIGHT})
    assert stats.sample_stop == "batch"
    assert stats.sample_iterations == [stats.iterations] * 4
    assert stats.sample_evals == 4 * stats.function_evals


def test_a_problem_whose_samples_are_coupled_is_iterated_whole():
    cell, x, _ = _problem()
    coupled = FixedPointProblem(cell, x, z_shape=(6, 12))      # independent_samples=False
    _, stats = _solve(coupled, {**lean("anderson"), **TIGHT, "deq_sample_stop": "each"})
    assert stats.converged and stats.sample_stop == "worst"
    assert stats.sample_evals == 6 * stats.function_evals


class _Float64StateOps(TorchDispatchMode):
    """Counts torch ops that produce a float64 tensor of the state's size."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64 \
                and out.numel() == self.numel:
            self.count += 1
        return out


@pytest.mark.parametrize("name", ["picard", "anderson"])
def test_a_float32_model_is_solved_on_float32_tensors(name):
    """No double-precision copy of the state per iteration (PETSc's own types cast the
    state to double and back on every f): at most the one Vec standing for the state."""
    _, _, problem = _problem(batch=4, n=64, dtype=torch.float32)
    numel = problem.z0.numel()
    opts = {**lean(name), "snes_rtol": 1e-5, "snes_max_it": 200}
    _solve(problem, opts)                                      # set-up outside the count
    with _Float64StateOps(numel) as lean_ops:
        z, stats = _solve(problem, opts)
    assert stats.converged and stats.iterations > 5 and z.dtype == torch.float32
    assert lean_ops.count <= 1, lean_ops.count
    with _Float64StateOps(numel) as petsc_ops:
        _, ref = _solve(problem, {**PICARD, "snes_rtol": 1e-5, "snes_max_it": 200})
    assert petsc_ops.count >= ref.function_evals      # what the lean types remove


def test_monitor_history_and_reasons_are_petscs(capfd):
    from petsc4py import PETSc
    _, _, problem = _problem()
    opts = PETSc.Options()
    opts["lt_snes_monitor"] = None
    opts["lt_snes_converged_reason"] = None
    try:
        _, stats = _solve(problem, {**lean("anderson"), **TIGHT})
    finally:
        del opts["lt_snes_monitor"], opts["lt_snes_converged_reason"]
    out = capfd.readouterr().out
    assert out.count("SNES Function norm") == stats.iterations + 1
    assert stats.converged
    assert f"converged due to {stats.reason_name} iterations {stats.iterations}" in out
    assert len(stats.residual_norms) == stats.iterations + 1


def test_a_capped_solve_and_a_nan_are_named_errors():
    _, _, problem = _problem()
    with pytest.raises(DEQConvergenceError, match="DIVERGED_MAX_IT after 3 iterations"):
        _solve(problem, {**lean("anderson"), "snes_rtol": 1e-12, "snes_max_it": 3})
    bad = FixedPointProblem(lambda z, x: z * float("nan") + x, torch.ones(3, 4),
                            independent_samples=True)
    with pytest.raises(DEQNonFiniteError):
        _solve(bad, lean("picard"))


def test_bad_lean_options_are_one_line_errors():
    _, _, problem = _problem()
    with pytest.raises(DEQOptionsError, match="deq_sample_stop"):
        _solve(problem, {**lean("anderson"), "deq_sample_stop": "sometimes"})


def test_a_lean_picard_step_preconditions_petscs_anderson():
    """NPC composition: the lean type as PETSc's Anderson's nonlinear preconditioner
    reaches the same fixed point as PETSc's own Picard there."""
    _, _, problem = _problem()
    base = {"snes_type": "anderson", "snes_anderson_m": 3, **TIGHT, "npc_snes_max_it": 1}
    z_ref, ref = _solve(problem, {**base, "npc_snes_type": "nrichardson",
                                  "npc_snes_linesearch_type": "basic"})
    z, got = _solve(problem, {**base, "npc_snes_type": "python",
                              "npc_snes_python_type": "deq_petsc.core.lean.Picard",
                              "npc_deq_sample_stop": "batch"})
    assert got.converged and ref.converged
    assert torch.allclose(z, z_ref, rtol=0, atol=1e-9)
    assert got.iterations == ref.iterations


def test_a_convergence_test_set_by_code_is_refused_not_fed_stale_vectors():
    from deq_petsc.core.convergence import PerSampleTest
    _, _, problem = _problem(batch=3)
    with DEQSolver(prefix="lt_", options=lean("anderson")) as solver:
        solver.snes.setConvergenceTest(PerSampleTest(3, 1e-6, "abs", max_it=50))
        with pytest.raises(DEQOptionsError, match="convergence test set by code"):
            solver.solve(problem)


def test_a_batch_norm_in_training_mode_keeps_the_batch_whole():
    from deq_petsc import DEQ

    class NormedCell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 6).double()
            self.norm = torch.nn.BatchNorm1d(6, eps=100.0).double()   # contractive

        def forward(self, z, x):
            return 0.05 * torch.tanh(self.norm(self.lin(z)) + x)

    layer = DEQ(NormedCell(), options={**lean("anderson"), "snes_rtol": 1e-8})
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert not layer.fixed_point_problem(x).independent_samples
    with torch.no_grad():
        layer(x)
    assert layer.solver.last_stats.sample_stop == "worst"
    layer.cell.eval()
    assert layer.fixed_point_problem(x).independent_samples
    layer.destroy()


def test_a_half_precision_anderson_does_not_overflow_its_inner_products():
    big = torch.full((2, 40000), 3.0, dtype=torch.float16)     # ||F||^2 above fp16's 65504
    problem = FixedPointProblem(lambda z, x: 0.5 * z + x, big, independent_samples=True)
    z, stats = _solve(problem, {**lean("anderson"), "snes_rtol": 1e-2, "snes_max_it": 20})
    assert stats.converged and z.dtype == torch.float16
    assert float((z.float() - 6.0).abs().max()) < 0.1


def test_a_python_type_that_does_not_import_is_named_in_one_line():
    _, _, problem = _problem(batch=2)
    with pytest.raises(DEQOptionsError, match="ModuleNotFoundError: No module named "
                                              "'deq_petsc.core.lean.Nope'"):
        _solve(problem, {"snes_type": "python", "snes_python_type": "deq_petsc.core.lean.Nope"})


def test_the_path_option_strings_named_before_the_folders_still_resolves():
    """``-snes_python_type deq_petsc.lean.Anderson`` (run folders and scripts written
    before the package moved into layer folders) is the same type as its new path."""
    _, _, problem = _problem(batch=3)
    new = {**lean("anderson"), **TIGHT}
    old = {**new, "snes_python_type": "deq_petsc.lean.Anderson"}
    assert new["snes_python_type"] == "deq_petsc.core.lean.Anderson"
    z_new, s_new = _solve(problem, new)
    z_old, s_old = _solve(problem, old)
    assert s_old.converged and s_old.iterations == s_new.iterations
    assert torch.equal(z_old, z_new)
    import deq_petsc.core.lean
    import deq_petsc.lean
    assert deq_petsc.lean is deq_petsc.core.lean
    assert deq_petsc.core.lean.__spec__.name == "deq_petsc.core.lean"     # its own, kept
