"""The Bratu surrogate task: data that solve the discrete PDE, its objective, its models'
Gauss-Newton products, every TAO type on it, and the command line."""

import json
import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.integrate import trapezoid
from scipy.optimize import root
from torch.func import functional_call

from deq_petsc.science.data.pde import BratuSettings, load_field_task
from deq_petsc.core.errors import DEQInputError, DEQOptionsError
from deq_petsc.science.inference import build_model
from deq_petsc.science.objectives import FieldRegression, make_objective
from deq_petsc.science.train import TrainConfig
from deq_petsc.science.train.curvature import GaussNewton, ParameterSlices
from deq_petsc.science.train.tao import train_tao

from conftest import assert_close
from helpers import double_scalars, run_cli

SMALL = {"pde_grid": 9}                  # 7 x 7 interior values per draw
#: stol 0: the lean solvers' step-length test would end a solve near 1e-12 relative,
#: which central differences at eps 1e-5 turn into 1e-7 noise
TIGHT = {"snes_rtol": 1e-12, "snes_atol": 1e-14, "snes_stol": 0, "snes_max_it": 300}
TIGHT_ADJOINT = {"ksp_rtol": 1e-12, "ksp_atol": 1e-15, "ksp_max_it": 300}


@pytest.fixture
def small_bratu(petsc_options, tmp_path):
    petsc_options(SMALL)
    return load_field_task("bratu", limit=40, seed=3, cache_dir=tmp_path, progress=False)


def _grid_u(field: np.ndarray, n: int) -> np.ndarray:
    u = np.zeros((n, n))
    u[1:-1, 1:-1] = field.reshape(n - 2, n - 2)
    return u


def _residual_by_scipy(u_inner: np.ndarray, lam: float, s: np.ndarray, n: int) -> np.ndarray:
    """The same discrete PDE assembled another way: a Kronecker-sum Laplacian on the
    interior (zero Dirichlet values), not the module's stencil."""
    m, h = n - 2, 1.0 / (n - 1)
    T = sp.diags([-np.ones(m - 1), 2 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1])
    L = sp.kron(sp.identity(m), T) + sp.kron(T, sp.identity(m))
    return L @ u_inner - h * h * (lam * np.exp(u_inner) + s[1:-1, 1:-1].ravel())


def test_bratu_data_solve_the_discrete_pde(small_bratu):
    data = small_bratu
    settings = BratuSettings(grid=9)
    thetas = data.images.numpy()
    assert thetas.shape == (40, settings.n_params) and data.fields.shape == (40, 49)
    assert np.all((thetas[:, 0] >= 0) & (thetas[:, 0] <= settings.lambda_max))
    assert np.all(np.abs(thetas[:, 1:]) <= 1)
    for k in range(len(thetas)):
        r = _residual_by_scipy(data.fields[k], thetas[k, 0],
                               settings.source_field(thetas[k]), settings.grid)
        assert np.abs(r).max() < 1e-11, (k, np.abs(r).max())
    # one draw solved independently (SciPy's root finder from zero) gives the same field
    k = int(np.argmax(thetas[:, 0]))           # the most nonlinear draw
    s = settings.source_field(thetas[k])
    ref = root(lambda v: _residual_by_scipy(v, thetas[k, 0], s, 9), np.zeros(49), tol=1e-13)
    assert np.abs(_residual_by_scipy(ref.x, thetas[k, 0], s, 9)).max() < 1e-12
    assert np.allclose(data.fields[k], ref.x, rtol=0, atol=1e-10)
    # the quantity of interest is the mean of u over the square (trapezoidal rule)
    u = _grid_u(data.fields[k], 9)
    assert data.qoi[k] == pytest.approx(trapezoid(trapezoid(u, dx=1 / 8), dx=1 / 8))
    assert sorted(len(data.indices(s)) for s in ("train", "val", "test")) == [4, 4, 32]


def test_bratu_cache_key_follows_the_pde_options(small_bratu, petsc_options, tmp_path):
    again = load_field_task("bratu", limit=40, seed=3, cache_dir=tmp_path, progress=False)
    assert again.from_cache and again.cache_path == small_bratu.cache_path
    assert np.array_equal(again.fields, small_bratu.fields)
    petsc_options(pde_lambda_max=2.0)
    other = load_field_task("bratu", limit=40, seed=3, cache_dir=tmp_path, progress=False)
    assert not other.from_cache and other.cache_path != small_bratu.cache_path
    assert other.images[:, 0].max() <= 2.0
    petsc_options(pde_snes_rtol=1e-11)        # a typed -pde_* option is part of the key too
    assert not load_field_task("bratu", limit=40, seed=3, cache_dir=tmp_path,
                               progress=False).from_cache


@pytest.mark.parametrize("option,value,words", [
    ("pde_grid", "-3", "-pde_grid -3: must be in [5, 257]"),
    ("pde_modes", "x", "-pde_modes x: not an int"),
    ("pde_lambda_max", "nan", "-pde_lambda_max nan: must be in"),
    ("pde_snes_type", "nope", "the Bratu data SNES (prefix pde_) were rejected by PETSc"),
])
def test_bad_pde_options_are_one_line(option, value, words, petsc_options, tmp_path):
    petsc_options({option: value})
    with pytest.raises((DEQOptionsError, DEQInputError), match=re.escape(words)):
        load_field_task("bratu", limit=20, cache_dir=tmp_path, progress=False)


def test_a_draw_past_the_fold_ends_the_build_naming_it(petsc_options, tmp_path):
    petsc_options(pde_lambda_max=9.0, pde_grid=9)
    with pytest.raises(DEQInputError, match=r"bratu: \d+ of 60 draws have no solution the "
                                            r"SNES found \(first: draw \d+, lambda [0-9.]+: "
                                            r"DIVERGED_\w+\).*lower -pde_lambda_max"):
        load_field_task("bratu", limit=60, cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.rglob("*.npy"))          # nothing cached


def test_field_objective_scores_in_the_fields_units(small_bratu):
    obj = FieldRegression(small_bratu)
    y = obj.targets(small_bratu, "test")
    fields = torch.as_tensor(small_bratu.fields[small_bratu.indices("test")])
    assert torch.allclose(obj.unscale(y), fields)
    report = obj.report(y.clone(), y, small_bratu)
    assert report["rel_l2"] == 0 and report["qoi_mae"] < 1e-15
    noisy = y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0),
                                   dtype=torch.float64)
    err = ((obj.unscale(noisy) - fields) ** 2).sum(1).mean().sqrt() / obj.norm
    assert obj.report(noisy, y, small_bratu)["rel_l2"] == pytest.approx(float(err))
    # the same through metric_sum in two halves (how a trainer accumulates it)
    total = obj.metric_sum(noisy[:2], y[:2]) + obj.metric_sum(noisy[2:], y[2:])
    assert obj.metric_value(total, len(y)) == pytest.approx(float(err))
    rebuilt = make_objective("field", None, obj.state())
    assert rebuilt.report(noisy, y, small_bratu)["rel_l2"] == pytest.approx(float(err))


def _model(data, kind, width=5, depth=2):
    cfg = TrainConfig(task="bratu", width=width, kind=kind, depth=depth, seed=2,
                      objective="field", dtype="float64")
    obj = make_objective("field", data)
    model = build_model(cfg, data, obj.out_dim, solver_options=TIGHT,
                        adjoint_options=TIGHT_ADJOINT).eval()
    return model, obj, data.images[data.indices("train")][:12], obj.targets(data, "train")[:12]


@pytest.mark.parametrize("kind", ["explicit", "deq"])
@double_scalars
def test_gauss_newton_products_on_the_surrogates_equal_dense_jt_h_j(kind, small_bratu):
    model, obj, X, y = _model(small_bratu, kind)
    slices = ParameterSlices(model)
    flat0 = slices.flatten([p.detach() for p in slices.params])
    if kind == "explicit":                     # the dense Jacobian by autograd
        J = torch.autograd.functional.jacobian(
            lambda f: functional_call(model, slices.split(f), (X,)).reshape(-1), flat0)
    else:                                      # by central differences of tight DEQ solves
        eps, columns = 1e-5, []        # truncation ~1e-8 (measured)
        for j in range(slices.numel):
            outs = []
            for sign in (1, -1):
                step = flat0.clone()
                step[j] += sign * eps
                for p, t in zip(slices.params, slices.split(step).values()):
                    p.data = t.clone()
                with torch.no_grad():
                    outs.append(model(X).reshape(-1))
            columns.append((outs[0] - outs[1]) / (2 * eps))
        for p, t in zip(slices.params, slices.split(flat0).values()):
            p.data = t.clone()
        J = torch.stack(columns, 1)
    n, d = len(y), obj.out_dim
    dense = J.T @ (2.0 / (n * d) * J)
    gn = GaussNewton(model, obj, [(X[:5], y[:5]), (X[5:], y[5:])], n, slices)
    for seed in range(2):
        v = torch.randn(slices.numel, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
        assert_close(gn(v), dense @ v, 1e-10 if kind == "explicit" else 1e-6,
                     f"{kind} Gauss-Newton product")
    model.destroy()


#: every TAO type for unconstrained minimisation with derivatives (the bounded ones too,
#: without bounds), and the least-squares one
TAO_TYPES = ["lmvm", "blmvm", "bqnls", "cg", "bncg", "nls", "bnls", "ntr", "bntr", "ntl",
             "bntl", "brgn"]


@pytest.mark.parametrize("tao_type", TAO_TYPES)
@double_scalars
def test_each_tao_type_lowers_the_surrogate_objective(tao_type, small_bratu):
    model, obj, X, y = _model(small_bratu, "explicit", width=8)
    with torch.no_grad():
        before = float(obj.loss(model(X), y))
    result = train_tao(model, obj, X, y, chunk=len(y), accept_max_it=True,
                       defaults={"tao_type": tao_type, "tao_max_it": 4})
    with torch.no_grad():
        after = float(obj.loss(model(X), y))
    assert result.tao_type == tao_type and result.iterations >= 1
    assert after < 0.9 * before, (tao_type, before, after, result.summary())
    # the callbacks were timed: what TAO spent beyond them is its own work
    assert sum(result.seconds.values()) <= result.time


@pytest.mark.parametrize("tao_type", ["lmvm", "bntr", "brgn"])
@double_scalars
def test_tao_trains_the_deq_surrogate(tao_type, small_bratu):
    model, obj, X, y = _model(small_bratu, "deq", width=8)
    with torch.no_grad():
        before = float(obj.loss(model(X), y))
    seen = []
    train_tao(model, obj, X, y, chunk=len(y), accept_max_it=True,
              defaults={"tao_type": tao_type, "tao_max_it": 3},
              on_iterate=lambda its, seconds, flat: seen.append((its, seconds, flat.clone())))
    with torch.no_grad():
        after = float(obj.loss(model(X), y))
    assert after < 0.9 * before, (tao_type, before, after)
    its = [s[0] for s in seen]
    assert its[0] == 0 and its[-1] >= 1 and its == sorted(its) and seen[-1][1] >= seen[0][1]
    model.destroy()


def test_train_and_evaluate_bratu_from_the_command_line(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    common = ["--task", "bratu", "--limit", "60", "--cache-dir", cache, "-pde_grid", "9"]
    r = run_cli("train", *common, "--epochs", "2", "--width", "8", "--trainer", "tao",
                "--out", out, "--no-progress", "-tao_type", "bntr", "-tao_max_it", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "task bratu: 60 solutions of -Laplace(u) - lambda e^u = s on a 9x9 DMDA" in r.stdout
    assert re.search(r"epoch   2: loss \S+e-\d\d rel_l2 \S+ \| val loss \S+ rel_l2 \S+ \| "
                     r"fwd its [0-9.]+ bwd its [0-9.]+ \| bntr 3 its", r.stdout)
    assert re.search(r"u on the grid: relative L2 error \S+ \(per sample: median \S+\), MSE",
                     r.stdout)
    report = json.loads((out / "report.json").read_text())
    assert report["objective"] == "field" and report["n"] == 6
    assert report["rel_l2"] < report["baseline_rel_l2"]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["objective"] == "field" and run["settings"]["dtype"] == "float64"
    assert (out / "parity.png").stat().st_size > 0
    # evaluate rebuilds the checkpoint's own data (its -pde_grid 9) without being told
    ev = run_cli("evaluate", "--checkpoint", out / "checkpoint.pt", "--cache-dir", cache)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert f"relative L2 error {report['rel_l2']:.3e}" in ev.stdout
    other = run_cli("evaluate", "--checkpoint", out / "checkpoint.pt", "--cache-dir", cache,
                    "-pde_grid", "11")
    assert other.returncode != 0 and "maps 10 parameters to 49 grid values; the -pde_* " \
        "options typed give 10 and 81" in other.stdout + other.stderr
    pr = run_cli("predict", "--checkpoint", out / "checkpoint.pt", "--smiles", "CCO")
    assert pr.returncode != 0 and "is a bratu surrogate (PDE parameters -> solution field)" \
        in pr.stdout + pr.stderr and "Traceback" not in pr.stderr
    png = run_cli("data", *common, "--png", tmp_path / "png")
    assert png.returncode == 0, png.stdout + png.stderr
    assert (tmp_path / "png" / "bratu-fields.png").stat().st_size > 0


@pytest.mark.parametrize("args,words", [
    (["--objective", "classify"], "--objective classify: bratu's targets are solution fields"),
    (["--limit", "5"], "--limit 5: bratu needs at least 10 draws"),
    (["--split-by", "scaffold"], "--split-by: a flag of the graph-image tasks"),
    (["--cell", "resnet"], "--cell: a flag of the graph-image tasks; bratu's surrogate is set"),
])
def test_bratu_training_refusals_are_one_line(args, words, tmp_path):
    r = run_cli("train", "--task", "bratu", "--out", tmp_path / "run", "--cache-dir",
                tmp_path / "cache", "-pde_grid", "9", *args)
    assert r.returncode != 0 and words in r.stdout + r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "checkpoint.pt").exists()


@double_scalars
def test_brgn_residual_jacobian_is_the_gradients_half(small_bratu):
    """TAO's brgn minimises ||r||^2 / 2 with r scaled so ||r||^2 is the loss: J^T r must be
    half the loss gradient the other TAO types get, with a field of many values per sample
    (a Jacobian scaled for one value per sample would be sqrt(49) too large here)."""
    from petsc4py import PETSc

    from deq_petsc.science.train.tao_problem import ParameterVector, TrainingProblem

    model, obj, X, y = _model(small_bratu, "explicit", width=6)
    params = ParameterVector(ParameterSlices(model))
    problem = TrainingProblem(model, obj, X, y, params, chunk=5)
    R = PETSc.Vec().createSeq(len(y) * obj.out_dim, comm=PETSc.COMM_SELF)
    G, JtR = params.vec.duplicate(), params.vec.duplicate()
    problem.residual(None, params.vec, R)
    loss = problem.objective_gradient(None, params.vec, G)
    assert R.norm() ** 2 == pytest.approx(loss, rel=1e-12)
    problem.jacobian_residual(None, params.vec, None, None)
    TrainingProblem.LossResidualJacobian(problem).multTranspose(None, R, JtR)
    assert_close(JtR.getArray(), 0.5 * G.getArray(), 1e-12, "J^T r vs gradient / 2")
    for v in (R, G, JtR):
        v.destroy()
    params.release()
    params.destroy()


def test_resume_keeps_the_pde_settings_and_refuses_other_data(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    first = run_cli("train", "--task", "bratu", "--limit", "40", "--cache-dir", cache,
                    "--epochs", "1", "--width", "4", "--out", out, "--no-progress",
                    "-pde_grid", "7", "-pde_lambda_max", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    bad = run_cli("train", "--task", "bratu", "--cache-dir", cache, "--epochs", "2", "--out",
                  out, "--resume", "--no-progress", "-pde_lambda_max", "4")
    assert bad.returncode == 2 and "-pde_lambda_max 4 would make other data" in \
        bad.stdout + bad.stderr
    good = run_cli("train", "--task", "bratu", "--cache-dir", cache, "--epochs", "2", "--out",
                   out, "--resume", "--no-progress")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "(cache: " in good.stdout and "7x7 DMDA" in good.stdout and "epoch   2" in good.stdout


def test_the_command_lines_task_lists_are_the_registries():
    from deq_petsc.cli import main as cli
    from deq_petsc.science.data import pde, tasks
    assert cli.field_tasks() == pde.FIELD_TASKS.names() == ["bratu"]
    assert cli.image_tasks() == tasks.TASKS.names()
    assert {"polarity", "gap", "mof-pore", "crystals"} <= set(cli.image_tasks())


def test_the_trainer_study_runs_end_to_end(tmp_path):
    """benchmarks/bench_surrogate.py at a tiny size: Adam's sweep, a TAO method, the scored
    snapshots, the table, the JSON and the plot (what docs/training.md's numbers come from)."""
    import subprocess
    import sys

    from helpers import ROOT
    out = tmp_path / "study.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_surrogate.py"),
                        "--limit", "60", "--budget", "0.5", "--seeds", "0,1", "--lrs", "1e-2",
                        "--methods", "lmvm", "--models", "explicit", "--width", "8",
                        "--snapshots", "5", "--threads", "1", "--cache-dir", tmp_path / "c",
                        "--json", out, "--plot", tmp_path / "study.png"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"lmvm +\d\.\d{3}e-\d\d \[.*\] +\d+\.\d\dx +\d+\.\d\dx .* CONVERGED_USER",
                     r.stdout), r.stdout
    document = json.loads(out.read_text())
    runs = document["results"][0]["runs"]
    assert {(run["method"], run["seed"]) for run in runs} == {
        ("adam", 0), ("lmvm", 0), ("adam", 1), ("lmvm", 1)}
    for run in runs:
        times = [point["seconds"] for point in run["curve"]]
        assert times == sorted(times) and times[0] < 0.1 and 0.5 <= times[-1] < 5
        assert run["final"]["test_rel_l2"] < run["curve"][0]["test_rel_l2"]
    assert (tmp_path / "study.png").stat().st_size > 0
