"""deq_petsc as a TorchDEQ solver backend: same fixed points, statistics and gradients."""

import pytest
import torch
from torch import nn

torchdeq = pytest.importorskip("torchdeq")

from torchdeq import get_deq  # noqa: E402
from torchdeq.solver import get_solver  # noqa: E402

from deq_petsc.core.errors import DEQNonFiniteError, DEQOptionsError  # noqa: E402
from deq_petsc.layer import torchdeq as petsc_torchdeq  # noqa: E402

from conftest import assert_close  # noqa: E402
from helpers import double_scalars


@pytest.fixture(scope="module")
def petsc_solver():
    solver = petsc_torchdeq.register("petsc")
    yield solver
    solver.destroy()


class Cell(nn.Module):
    def __init__(self, n=8, m=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(0.25 * torch.randn(n, n, generator=g, dtype=torch.float64))
        self.U = nn.Parameter(torch.randn(n, m, generator=g, dtype=torch.float64))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T)


def _data(batch=5, m=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, m, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
@double_scalars
def test_fixed_point_and_info_match_torchdeqs_own(petsc_solver, stop_mode):
    cell, x = Cell(), _data()
    with torch.no_grad():
        f = lambda z: cell(z, x)   # noqa: E731
        z_ours, traj, info = get_solver("petsc")(f, torch.zeros(5, 8, dtype=torch.float64),
                                                 max_iter=100, tol=1e-11, stop_mode=stop_mode,
                                                 indexing=[3, 200])
        z_ref, _, ref_info = get_solver("fixed_point_iter")(
            f, torch.zeros(5, 8, dtype=torch.float64), max_iter=300, tol=1e-13,
            stop_mode=stop_mode)
    assert_close(z_ours, z_ref, 1e-9, "fixed point")
    assert set(info) == set(ref_info)
    for key in ref_info:
        if key.endswith("trace"):        # [batch, max_iter + 1]: ours was called with 100
            assert info[key].shape == (5, 101), key
        else:
            assert info[key].shape == ref_info[key].shape, key
    assert float(info[f"{stop_mode}_lowest"].max()) < 1e-11
    assert info["nstep"].min() >= 1 and info["abs_trace"][0, 0] == 1e8
    assert len(traj) == 1 and traj[0].shape == (5, 8)       # step 3 kept, 200 never reached


def _train_step(f_solver, b_solver, tol):
    cell, x = Cell(), _data()
    deq = get_deq(f_solver=f_solver, b_solver=b_solver, ift=True, f_max_iter=300,
                  b_max_iter=300, f_tol=tol, b_tol=tol, f_stop_mode="abs", b_stop_mode="abs")
    z_out, info = deq(lambda z: cell(z, x), torch.zeros(5, 8, dtype=torch.float64))
    target = torch.linspace(-1, 1, 40, dtype=torch.float64).view(5, 8)
    loss = ((z_out[-1] - target) ** 2).sum()
    loss.backward()
    return [p.grad.clone() for p in cell.parameters()], info


def test_training_step_gradients_equal_torchdeqs(petsc_solver):
    before = petsc_solver.calls
    ours, info = _train_step("petsc", "petsc", 1e-12)
    assert petsc_solver.calls - before == 2          # the forward and the backward fixed point
    ref, _ = _train_step("fixed_point_iter", "fixed_point_iter", 1e-13)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-6, "implicit gradient")


def _unrolled_gradients(iters=300):
    """The same loss differentiated by plain autograd through ``iters`` steps of the cell."""
    cell, x = Cell(), _data()
    z = torch.zeros(5, 8, dtype=torch.float64)
    for _ in range(iters):
        z = cell(z, x)
    target = torch.linspace(-1, 1, 40, dtype=torch.float64).view(5, 8)
    ((z - target) ** 2).sum().backward()
    return [p.grad.clone() for p in cell.parameters()]


@double_scalars
def test_newton_in_torchdeqs_backward_gives_the_unrolled_gradient(petsc_options):
    # TorchDEQ's backward hands the solver u -> J^T u + g computed by autograd.grad without
    # a graph: Newton's products J v come from differences, exact for that affine map.
    petsc_options({"newton_snes_type": "newtonls", "newton_ksp_type": "gmres"})
    solver = petsc_torchdeq.register("newton")
    try:
        ours, info = _train_step("newton", "newton", 1e-12)
    finally:
        solver.destroy()
    backward = solver.last_stats
    assert backward.snes_type == "newtonls" and backward.converged, backward.summary()
    assert backward.iterations <= 6 and backward.jvp_count > 0, backward.summary()
    assert float(info["abs_lowest"].max()) < 1e-12
    for a, b in zip(ours, _unrolled_gradients()):
        assert_close(a, b, 1e-8, "Newton's implicit gradient vs unrolled autograd")


def test_a_method_needing_transposes_is_refused_in_torchdeqs_backward(petsc_options):
    petsc_options({"tr_snes_type": "newtontr", "tr_ksp_type": "gmres"})
    solver = petsc_torchdeq.register("tr")
    try:
        with pytest.raises(DEQOptionsError, match="-tr_snes_type newtontr needs transpose "
                                                  "products.*newtonls"):
            _train_step("tr", "tr", 1e-10)
    finally:
        solver.destroy()


def test_bad_options_and_divergence_are_clear_errors(petsc_solver, petsc_options):
    x = torch.zeros(2, 4, dtype=torch.float64)
    petsc_options({"petsc_snes_type": "nosuchsolver"})
    with pytest.raises(DEQOptionsError,
                       match="prefix petsc_.*Unable to find requested SNES type nosuchsolver"):
        petsc_torchdeq.TorchDEQSolver("petsc_")(lambda z: z * 0.5, x, tol=1e-6)


def test_nan_in_the_cell_is_a_named_error(petsc_solver):
    x = torch.ones(2, 4, dtype=torch.float64)
    with pytest.raises(DEQNonFiniteError, match="NaN/Inf"):
        get_solver("petsc")(lambda z: z + float("nan"), x, max_iter=10, tol=1e-6)
