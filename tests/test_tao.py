"""TAO training: gradients, Gauss-Newton and Hessian products, known optima, named failures."""

import re

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn
from torch.func import functional_call

from deq_petsc.core.errors import DEQConvergenceError, DEQOptionsError
from deq_petsc.science.inference import build_model
from deq_petsc.science.objectives import Classification, Regression
from deq_petsc.science.train import TaoTrainer, TrainConfig
from deq_petsc.science.train.curvature import ExactHessian, GaussNewton, OutputJacobian, ParameterSlices
from deq_petsc.science.train.tao import train_tao
from deq_petsc.science.train.tao_problem import ParameterVector, TrainingProblem

from conftest import assert_close
from helpers import run_cli, synthetic, double_scalars


TIGHT = {"snes_rtol": 1e-12, "snes_atol": 1e-14, "snes_max_it": 200}
TIGHT_ADJOINT = {"ksp_rtol": 1e-12, "ksp_atol": 1e-15, "ksp_max_it": 200}


def model_for(data, kind="deq", objective="classify", depth=3):
    cfg = TrainConfig(task="polarity", width=4, kind=kind, depth=depth, seed=3,
                      objective=objective, dtype="float64")
    obj = Classification(data.classes) if objective == "classify" else Regression(data)
    model = build_model(cfg, data, obj.out_dim, solver_options=TIGHT,
                        adjoint_options=TIGHT_ADJOINT).eval()
    X = data.images[data.indices("train")].double()
    return model, obj, X, obj.targets(data, "train")


@double_scalars
def test_gradient_given_to_tao_equals_torchs():
    data = synthetic()
    model, obj, X, y = model_for(data)
    slices = ParameterSlices(model)
    params = ParameterVector(slices)
    assert params.layout.zero_copy
    problem = TrainingProblem(model, obj, X, y, params, chunk=7)   # uneven chunks on purpose
    G = params.vec.duplicate()
    f = problem.objective_gradient(None, params.vec, G)
    grad = torch.from_numpy(G.getArray(readonly=True).copy())
    params.release()
    model.zero_grad()
    loss = obj.loss(model(X), y)
    f_torch = float(loss.detach())
    expected = slices.flatten(torch.autograd.grad(loss, slices.params))
    assert f == pytest.approx(f_torch, rel=1e-12)
    assert_close(grad, expected, 1e-10, "TAO gradient vs torch")
    for v in (G, params.vec):
        v.destroy()
    model.destroy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])     # zero-copy, and a cast
def test_hessian_products_stay_at_the_point_tao_asked_for(dtype):
    """A trust region that rejects a step multiplies again after evaluating the trial
    point: the products must still be the Gauss-Newton matrix at the Hessian's point."""
    data = synthetic()
    model, obj, X, y = model_for(data, kind="explicit")
    model = model.to(getattr(torch, dtype))
    X = X.to(getattr(torch, dtype))
    slices = ParameterSlices(model)
    params = ParameterVector(slices)
    assert params.layout.zero_copy == (dtype == "float64")
    problem = TrainingProblem(model, obj, X, y, params)
    x0, trial, V, Y = (params.vec.duplicate() for _ in range(4))
    params.vec.copy(x0)
    trial.setArray(x0.getArray(readonly=True) + 0.3)
    V.setArray(np.random.default_rng(0).standard_normal(slices.numel))
    problem.hessian(None, x0, None, None)
    problem.mult(None, V, Y)
    at_x0 = Y.getArray(readonly=True).copy()
    problem.objective_value(None, trial)          # the rejected step's evaluation
    problem.mult(None, V, Y)
    assert problem.error is None
    np.testing.assert_array_equal(Y.getArray(readonly=True), at_x0)
    params.release()
    for v in (x0, trial, V, Y, params.vec):
        v.destroy()


def _explicit_jacobian(model, X, slices):
    """d outputs / d theta as a dense matrix, by torch.autograd.functional.jacobian."""
    names = [n for n, _ in slices.named]
    flat0 = slices.flatten([p.detach() for p in slices.params])

    def outputs(flat):
        return functional_call(model, slices.split(flat), (X,)).reshape(-1)

    return torch.autograd.functional.jacobian(outputs, flat0), names


@pytest.mark.parametrize("objective", ["classify", "regress"])
def test_gauss_newton_product_equals_dense_jt_h_j(objective):
    data = synthetic()
    model, obj, X, y = model_for(data, kind="explicit", objective=objective)
    slices = ParameterSlices(model)
    J, _ = _explicit_jacobian(model, X, slices)                  # [n * out, P]
    out = model(X).detach()
    n, k = out.shape
    if objective == "classify":
        p = torch.softmax(out, 1)
        blocks = [torch.diag(pi) - torch.outer(pi, pi) for pi in p]
        H = torch.block_diag(*blocks) / n
    else:
        H = 2.0 * torch.eye(n * k, dtype=torch.float64) / n
    dense = J.T @ H @ J
    gn = GaussNewton(model, obj, [(X[:13], y[:13]), (X[13:], y[13:])], n, slices)
    for seed in range(3):
        v = torch.randn(slices.numel, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
        assert_close(gn(v), dense @ v, 1e-10, "Gauss-Newton product")


@double_scalars
def test_deq_output_jacobian_against_finite_differences_and_its_transpose():
    data = synthetic()
    model, obj, X, y = model_for(data, kind="deq", objective="regress")
    slices = ParameterSlices(model)
    jac = OutputJacobian(model, X, slices)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(slices.numel, dtype=torch.float64, generator=g)
    w = torch.randn(jac.out.shape, dtype=torch.float64, generator=g)
    jv = jac.jvp(v)
    tangent = model.equilibrium.last_stats.tangent     # the last tangent KSP solve, kept
    assert tangent.method.startswith("ksp/") and tangent.converged and tangent.jvp_count > 0
    assert tangent.summary() in model.equilibrium.last_stats.summary()
    jtw = jac.vjp(w)
    # <w, J v> = <J^T w, v>: the tangent and adjoint solves are transposes of each other
    assert float((w * jv).sum()) == pytest.approx(float(jtw @ v), rel=1e-9)
    # J v against central differences of the DEQ's outputs (each a tight PETSc solve)
    eps = 1e-6
    flat0 = slices.flatten([p.detach() for p in slices.params])
    outs = []
    for sign in (1, -1):
        for p, t in zip(slices.params, slices.split(flat0 + sign * eps * v).values()):
            p.data = t.clone()
        with torch.no_grad():
            outs.append(model(X))
    fd = (outs[0] - outs[1]) / (2 * eps)
    assert_close(jv, fd, 1e-6, "DEQ J v vs finite differences")
    model.destroy()


def test_exact_hessian_against_finite_differences_of_the_gradient():
    # a smooth network: the graph classifiers' relu(conv(0)) sits on relu's kink at z = 0,
    # where central differences of the gradient are meaningless
    data = synthetic()
    _, obj, X, y = model_for(data, kind="explicit", objective="classify")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(X[0].numel(), 6), nn.Tanh(),
                          nn.Linear(6, 2)).double()
    slices = ParameterSlices(model)
    hess = ExactHessian(model, obj, [(X[:20], y[:20]), (X[20:], y[20:])], len(y), slices)
    v = torch.randn(slices.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hv = hess(v)
    flat0 = slices.flatten([p.detach() for p in slices.params])
    grads, eps = [], 1e-5
    for sign in (1, -1):
        for p, t in zip(slices.params, slices.split(flat0 + sign * eps * v).values()):
            p.data = t.clone()
        loss = obj.loss(model(X), y)
        grads.append(slices.flatten(torch.autograd.grad(loss, slices.params)))
    assert_close(hv, (grads[0] - grads[1]) / (2 * eps), 1e-6, "Hessian product")
    deq, *_ = model_for(data, kind="deq")
    with pytest.raises(DEQOptionsError, match="gauss-newton"):
        ExactHessian(deq, obj, [(X, y)], len(y), ParameterSlices(deq))
    deq.destroy()


def _least_squares(n=60, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, dtype=torch.float64, generator=g)
    y = (X @ torch.randn(d, 1, dtype=torch.float64, generator=g) + 0.3
         + 0.1 * torch.randn(n, 1, dtype=torch.float64, generator=g))
    A = np.hstack([X.numpy(), np.ones((n, 1))])
    coef = np.linalg.lstsq(A, y.numpy(), rcond=None)[0].ravel()
    return X, y, coef


LEAST_SQUARES_TYPES = [("lmvm", {}), ("blmvm", {}), ("bqnktr", {}), ("nls", {}), ("ntr", {}),
                       ("bntr", {}), ("bnls", {}), ("nls", {"train_hessian": "exact"}),
                       ("nls", {"tao_nls_ksp_type": "cg", "tao_nls_pc_type": "none"}),
                       ("brgn", {"tao_brgn_regularizer_weight": 0})]


@pytest.mark.parametrize("tao_type,extra", LEAST_SQUARES_TYPES,
                         ids=[t + "".join(f"-{v}" for k, v in e.items() if k != "tao_brgn_"
                                          "regularizer_weight" and not k.endswith("pc_type"))
                              for t, e in LEAST_SQUARES_TYPES])
@double_scalars
def test_each_tao_type_reaches_the_least_squares_optimum(tao_type, extra, petsc_options):
    X, y, coef = _least_squares()
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], 1).double()
    petsc_options({"tao_type": tao_type, "tao_gatol": 1e-10, "tao_grtol": 0, "tao_max_it": 200,
                   **{k: v for k, v in extra.items() if k != "train_hessian"}})
    result = train_tao(model, Regression(None, 0.0, 1.0, "y"), X, y,
                       hessian=extra.get("train_hessian", "gauss-newton"), chunk=25)
    # converged, or a line search that ran out of progress at the optimum (where one
    # stops depends on the BLAS kernel's rounding): the optimum is what is checked
    assert result.converged, result.summary()
    got = np.concatenate([model.weight.detach().numpy().ravel(), model.bias.detach().numpy()])
    assert np.allclose(got, coef, rtol=1e-6, atol=1e-7), (got, coef)


@pytest.mark.parametrize("tao_type", ["lmvm", "nls", "ntr"])
@double_scalars
def test_tao_reaches_the_logistic_regression_optimum(tao_type, petsc_options):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(80, 3, dtype=torch.float64, generator=g)
    labels = ((X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
               + 0.8 * torch.randn(80, dtype=torch.float64, generator=g)) > 0).long()
    # the reference: the same convex loss minimised by SciPy, logit difference model
    A = np.hstack([X.numpy(), np.ones((80, 1))])
    t = labels.numpy()

    def nll(w):
        s = A @ w
        return np.mean(np.logaddexp(0, s) - t * s), A.T @ (1 / (1 + np.exp(-s)) - t) / len(t)

    ref = minimize(nll, np.zeros(4), jac=True, method="BFGS", options={"gtol": 1e-12})
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    petsc_options({"tao_type": tao_type, "tao_gatol": 1e-11, "tao_grtol": 0,
                   "tao_max_it": 300})
    result = train_tao(model, Classification(("0", "1")), X, labels)
    assert result.converged, result.summary()
    assert result.objective == pytest.approx(ref.fun, rel=1e-8)
    w = (model.weight[1] - model.weight[0]).detach().numpy()
    b = float((model.bias[1] - model.bias[0]).detach())
    assert np.allclose(np.append(w, b), ref.x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reason,f,g,expected", [
    ("DIVERGED_LS_FAILURE", 0.0108259, 1.5e-10, True),    # an AVX-512 OpenBLAS's blmvm end
    ("DIVERGED_LS_FAILURE", 0.0108259, 1e-12, True),
    ("DIVERGED_TR_REDUCTION", 0.0108259, 1.5e-10, True),
    ("DIVERGED_LS_FAILURE", 0.0108259, 1e-6, False),      # short of the optimum: a failure
    ("DIVERGED_LS_FAILURE", 0.5, 1.5e-10, False),         # no decrease since the start
    ("DIVERGED_LS_FAILURE", 0.5 - 1e-14, 1.0, False),     # a stall: f barely moved, g not
    ("DIVERGED_LS_FAILURE", 0.5 - 1e-14, 1e-7, False),    # g down 1e7 only, f stalled
    ("DIVERGED_LS_FAILURE", 0.0108259, float("nan"), False),
    ("DIVERGED_MAXITS", 0.0108259, 1e-12, False),         # the cap is the caller's policy
    ("DIVERGED_NAN", 0.0108259, 1e-12, False),
])
def test_a_line_search_out_of_progress_at_a_stationary_point_is_an_optimum(reason, f, g,
                                                                           expected):
    from deq_petsc.science.train.tao import at_stationary_point
    history = [(0, 0.5, 1.0, 0.0), (22, f, g, 0.1)]     # (its, f, ||g||, seconds)
    assert at_stationary_point(reason, f, g, history) is expected
    # a gradient within TAO's own tolerances is stationary whatever the floor
    assert at_stationary_point("DIVERGED_LS_FAILURE", 0.5, 1e-3, history, (1e-2, 0, 0))


def test_a_failing_tao_solve_names_its_reason(petsc_options, tmp_path):
    X, y, _ = _least_squares()
    model = nn.Linear(X.shape[1], 1).double()
    petsc_options({"tao_type": "lmvm", "tao_max_it": 2, "tao_gatol": 1e-14, "tao_grtol": 0})
    with pytest.raises(DEQConvergenceError, match="DIVERGED_MAXITS after 2 iterations") as err:
        train_tao(model, Regression(None, 0.0, 1.0, "y"), X, y)
    assert err.value.reason_name == "DIVERGED_MAXITS"

    # in a training run the iteration limit is an epoch's budget; other failures end it,
    # and the last checkpoint stays as it was
    data = synthetic()
    cfg = TrainConfig(task="polarity", width=4, epochs=2, seed=1, objective="regress",
                      dtype="float64")
    petsc_options({"tao_max_it": 3, "tao_max_funcs": 2})
    trainer = TaoTrainer(cfg, data, tmp_path, progress=False, log=lambda *a: None)
    with pytest.raises(DEQConvergenceError, match="DIVERGED_MAXFCN.*checkpoint of epoch 0"):
        trainer.fit()
    assert not (tmp_path / "checkpoint.pt").exists()
    trainer.destroy()


def test_a_tao_solved_twice_is_not_a_fresh_one():
    """Why TaoTraining sets its TAO up afresh for each solve: PETSc's lmvm keeps state
    between TaoSolve calls (without -tao_lmvm_recycle too), so a second solve on one TAO
    leaves another point than a fresh TAO from the same start. If this fails, PETSc
    resets it now, and one TAO could serve every epoch."""
    from petsc4py import PETSc
    n = 10

    def rosenbrock(tao, X, G):
        x = X.getArray(readonly=True)
        g = np.zeros(n)
        g[:-1] += -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200 * (x[1:] - x[:-1] ** 2)
        G.setArray(g)
        return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))

    def tao_at(start):
        x = PETSc.Vec().createSeq(n)
        x.setArray(start)
        tao = PETSc.TAO().create(PETSc.COMM_SELF)
        tao.setType("lmvm")
        tao.setObjectiveGradient(rosenbrock, None)
        tao.setSolution(x)
        tao.setTolerances(gatol=0, grtol=0, gttol=0)
        tao.setMaximumIterations(3)
        return tao, x

    once, x = tao_at(np.zeros(n))
    once.solve()
    first = x.getArray().copy()
    once.solve()
    fresh, y = tao_at(first)
    fresh.solve()
    assert np.abs(x.getArray() - y.getArray()).max() > 1e-3
    for obj in (once, fresh, x, y):
        obj.destroy()


@pytest.mark.parametrize("tao_type", ["lmvm", "brgn"])
def test_one_tao_serves_every_epoch_and_repeats_fresh_ones(tmp_path, petsc_options, tao_type,
                                                           monkeypatch):
    """The TAO trainer keeps one TaoTraining for every epoch (a fresh seeded draw each
    time); the weights equal those of separate train_tao calls, one per epoch, as a
    resumed run makes its first epoch."""
    from deq_petsc.science.train.tao import TAO_ADJOINT_OPTIONS, TAO_SOLVER_OPTIONS, TaoTraining
    data = synthetic(n=50)
    petsc_options({"tao_type": tao_type, "tao_max_it": 3})
    cfg = TrainConfig(task="polarity", width=4, seed=2, objective="regress", dtype="float64",
                      tao_batch=30, epochs=3)
    trainer = TaoTrainer(cfg, data, tmp_path, progress=False, log=lambda *a: None)
    reference = build_model(cfg, data, 1, solver_options=TAO_SOLVER_OPTIONS,
                            adjoint_options=TAO_ADJOINT_OPTIONS)
    reference.load_state_dict(trainer.model.state_dict())
    X = data.images[data.indices("train")].double()
    y = trainer.objective.targets(data, "train")
    seen = []
    original = TaoTraining.solve

    def solve(self, *args, **kwargs):
        seen.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TaoTraining, "solve", solve)
    history = trainer.fit()
    assert len(history) == 3 and len(seen) == 3 and len(set(map(id, seen))) == 1
    for epoch in range(3):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        idx = torch.randperm(len(y), generator=g)[:cfg.tao_batch]
        result = train_tao(reference.eval(), trainer.objective, X[idx], y[idx],
                           chunk=cfg.eval_batch_size, accept_max_it=True)
        assert result.iterations == history[epoch]["tao_its"]
    for (name, p), q in zip(trainer.model.state_dict().items(),
                            reference.state_dict().values()):
        assert torch.allclose(p, q, rtol=1e-7, atol=1e-9), (name, float((p - q).abs().max()))
    trainer.destroy()
    assert trainer.training is None
    reference.destroy()


def test_tao_trainer_resume_matches_an_uninterrupted_run(tmp_path, petsc_options):
    data = synthetic(n=50)
    petsc_options({"tao_type": "bntr", "tao_max_it": 3})
    cfg = dict(task="polarity", width=4, seed=2, objective="regress", dtype="float64",
               tao_batch=30)
    straight = TaoTrainer(TrainConfig(epochs=2, **cfg), data, tmp_path / "a", progress=False,
                          log=lambda *a: None)
    history = straight.fit()      # each epoch fits a fresh seeded draw of 30 samples
    assert history[0]["tao_type"] == "bntr" and history[0]["hessian_products_evals"] > 0
    first = TaoTrainer(TrainConfig(epochs=1, **cfg), data, tmp_path / "b", progress=False,
                       log=lambda *a: None)
    first.fit()
    first.destroy()
    resumed = TaoTrainer(TrainConfig(epochs=2, **cfg), data, tmp_path / "b", progress=False,
                         log=lambda *a: None)
    assert resumed.resume() == 1
    resumed.fit()
    # equal up to the run-to-run noise of threaded float64 reductions (~1e-10 here), far
    # below what a lost optimiser state or a different batch draw would change
    for (name, p), q in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.allclose(p, q, rtol=1e-7, atol=1e-9), (name, float((p - q).abs().max()))
    straight.destroy()
    resumed.destroy()


def test_train_cli_with_tao(tmp_path):
    pytest.importorskip("rdkit")
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    r = run_cli("train", "--task", "polarity", "--limit", "60", "--epochs", "1", "--width", "4",
                "--trainer", "tao", "--objective", "regress", "--out", out, "--cache-dir", cache,
                "--no-progress", "-tao_type", "bntr", "-tao_max_it", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"bntr 2 its, DIVERGED_MAXITS", r.stdout)
    assert re.search(r"dipole \(D\): MAE [0-9.]+, RMSE [0-9.]+, R\^2 -?[0-9.]+ on \d+ samples",
                     r.stdout)
    assert (out / "parity.png").stat().st_size > 0
    bad = run_cli("train", "--task", "polarity", "--limit", "60", "--epochs", "1",
                  "--trainer", "tao", "--out", tmp_path / "bad", "--cache-dir", cache,
                  "--no-progress", "-tao_type", "brgn")
    assert bad.returncode == 2 and "train with --objective regress" in bad.stdout + bad.stderr


def test_an_exception_in_any_tao_callback_surfaces_as_itself(petsc_options, monkeypatch):
    """Objective, Hessian product or residual-Jacobian product: the original error, not a
    bare PETSc error code."""
    from deq_petsc.science.train import curvature

    X, y, _ = _least_squares()
    monkeypatch.setattr(curvature.OutputJacobian, "jvp",
                        lambda self, v: (_ for _ in ()).throw(RuntimeError("jvp failed here")))
    for tao_type in ("brgn", "nls"):
        petsc_options({"tao_type": tao_type, "tao_max_it": 5})
        with pytest.raises(RuntimeError, match="jvp failed here"):
            train_tao(nn.Linear(X.shape[1], 1).double(), Regression(None, 0.0, 1.0, "y"), X, y)
