"""The pair cell (models/pair_network.py): blind to the nodes' order and to the padding,
contractive whatever its weights, and its DEQ's gradient that of the unrolled cell."""

import pytest
import torch

from deq_petsc.science.models.graph_classifier import ClassifierConfig, GraphImageClassifier
from deq_petsc.science.models.pair_network import PairCell, PairInjection

N, CHANNELS, ELEMENT = 6, 5, 3
SPECIES = ([8, 26], [3, 9, 17, 35], [6, 1, 8])


def _images(seed=0):
    """Symmetric random entries on the existing pairs, zeros on the padding, Z / 10 on
    the element channel's diagonal (the data layer's layout)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(SPECIES), CHANNELS, N, N, dtype=torch.float64)
    for b, zs in enumerate(SPECIES):
        k = len(zs)
        block = torch.rand(CHANNELS, k, k, generator=g, dtype=torch.float64)
        images[b, :, :k, :k] = block + block.transpose(1, 2)
        images[b, ELEMENT, :k, :k] = torch.diag(torch.tensor(zs, dtype=torch.float64) / 10)
    return images


def _model(kind="deq", seed=0, **options):
    cfg = ClassifierConfig(in_channels=CHANNELS, image_size=N, n_classes=3, width=8,
                           kind=kind, depth=80, cell="pair", sums=True,
                           element_channel=ELEMENT)
    torch.manual_seed(seed)
    model = GraphImageClassifier(cfg, solver_options=options or None,
                                 adjoint_options={"ksp_rtol": 1e-12} if options else None)
    model = model.double()
    model.inject.standardise(_images(1))
    with torch.no_grad():                   # zero-initialised: give them something to say
        for p in (model.inject.element_rows.weight, model.inject.element_cols.weight,
                  model.inject.sums.weight):
            p.normal_(0, 0.5)
    return model


def test_renumbering_the_nodes_renumbers_the_state_and_leaves_the_answer():
    model = _model().eval()
    images = _images()
    perm = torch.tensor([3, 0, 2, 1, 4, 5])            # sample 1 has four nodes
    renumbered = images[:, :, perm][:, :, :, perm]
    with torch.no_grad():
        out, out_renumbered = model(images), model(renumbered)
        z = model.equilibrium(model.inject(images))
        z_renumbered = model.equilibrium(model.inject(renumbered))
    assert torch.allclose(z_renumbered, z[:, :, perm][:, :, :, perm], atol=1e-8)
    assert torch.allclose(out_renumbered, out, atol=1e-8)
    assert out.std(0).min() > 1e-3                     # the samples get different answers
    model.destroy()


def test_the_state_is_shaped_without_the_mask_and_zero_on_the_padding():
    model = _model().eval()
    images = _images()
    with torch.no_grad():
        x = model.inject(images)
        z = model.equilibrium(x)
    assert x.shape == (3, 9, N, N) and z.shape == (3, 8, N, N)
    assert model.equilibrium.state_shape(x) == (3, 8, N, N)       # what solver comparisons
    assert _model("explicit").equilibrium.state_shape(x) == (3, 8, N, N)   # start from
    mask = x[:, -1]
    assert mask.sum((1, 2)).tolist() == [4.0, 16.0, 9.0]
    assert z[0, :, 2:].abs().max() == 0 and z[0, :, :, 2:].abs().max() == 0
    assert z[1, :, :4, :4].abs().min() > 0
    cell = model.equilibrium.cell                       # f never reads the padding
    noise = torch.randn_like(z) * (1 - mask[:, None])
    assert torch.equal(cell(z + noise, x), cell(z, x))
    model.destroy()


#: (P, R, C) as multiples of one matrix E, each making a different one of the four
#: norms ||P||, ||P + R||, ||P + C||, ||P + R + C|| the largest (3 ||E|| against ||E||)
WEIGHTS = {"P": (3, -2, -2), "P+R": (1, 2, -2), "P+C": (1, -2, 2), "P+R+C": (1, 1, 1)}


def _cell_with(largest):
    torch.manual_seed(0)
    cell = PairCell(width=8, hidden=16, gamma=0.9).double()
    E = torch.randn(16, 8, dtype=torch.float64)
    with torch.no_grad():
        for w, k in zip((cell.entry, cell.row, cell.col), WEIGHTS[largest]):
            w.copy_(k * E)
    return cell


def _jacobian_norm(f, at):
    """The spectral norm of ``f``'s Jacobian at ``at``, from the whole matrix (864 columns
    here: one vectorised reverse pass, then an SVD)."""
    J = torch.func.jacrev(f)(at).reshape(-1, at.numel())
    return float(torch.linalg.matrix_norm(J.detach(), ord=2))


@pytest.mark.parametrize("largest", WEIGHTS)
def test_the_normaliser_is_the_exact_norm_of_the_linear_part(largest):
    """The cell's linear part over a batch of a two-, four- and three-node sample has
    operator norm 1 whichever of the four terms is the largest:
    the bound is attained (the cell gets all the room ``gamma`` allows) and none of the
    four may be left out (each case makes a different one the only one that counts)."""
    cell = _cell_with(largest)
    x = PairInjection(CHANNELS, 8, element_channel=ELEMENT).double()(_images())
    mask = x[:, -1:]
    weights = tuple(w.detach() for w in cell.normalised_weights())
    norm = _jacobian_norm(lambda z: cell.messages(z, mask, weights),
                          torch.zeros(3, 8, N, N, dtype=torch.float64))
    assert norm == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("largest", WEIGHTS)
def test_the_cell_is_a_contraction(largest):
    """The largest singular value of ``J_f`` at ``z = 0`` with the
    relu in its linear region and the tanh at its steepest (a large bias, and ``x``
    cancelling it), where ``J_f`` is ``gamma D M``: at most gamma, and not far below."""
    cell = _cell_with(largest)
    with torch.no_grad():
        cell.bias.fill_(100.0)
        D = cell.normalised_weights()[3]
        x = PairInjection(CHANNELS, 8, element_channel=ELEMENT).double()(_images())
        mask = x[:, -1:]
        x[:, :-1] = -0.9 * torch.einsum("wh,h->w", D, cell.bias)[None, :, None, None] * mask
    with torch.no_grad():
        norm = _jacobian_norm(lambda z: cell(z, x), torch.zeros(3, 8, N, N, dtype=torch.float64))
    assert 0.3 < norm <= 0.9 + 1e-9


def test_the_deq_gradient_is_the_unrolled_cells():
    """The implicit gradient (PETSc SNES forward, KSP adjoint) against autograd through
    80 applications of the same cell: Lip <= 0.9, so 0.9^80 ~ 2e-4 bounds the truncation,
    and in practice it is far smaller."""
    deq = _model("deq", snes_rtol=1e-12, snes_atol=1e-14, snes_max_it=200)
    unrolled = _model("explicit")
    unrolled.load_state_dict(deq.state_dict())
    images, labels = _images(), torch.tensor([0, 2, 1])
    grads = []
    for model in (deq, unrolled):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].norm() > 1e-3
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-9)
    deq.destroy()


def test_the_pair_cell_needs_the_element_channel():
    with pytest.raises(ValueError, match="element channel"):
        PairInjection(CHANNELS, 8, element_channel=-1)


def test_a_pair_cell_run_trains_and_its_checkpoint_answers_the_same(tmp_path):
    """Through the trainer and the checkpoint, as ``train --cell pair`` and ``evaluate``
    use it: the loss falls, and the reloaded model (entry standardisation and mask
    included) gives the trained model's outputs."""
    pytest.importorskip("rdkit")
    from deq_petsc.science.data import load_task
    from deq_petsc.science.inference import load_model
    from deq_petsc.science.train import Trainer, TrainConfig
    data = load_task("polarity", limit=160, seed=1, cache_dir=tmp_path / "cache",
                     progress=False)
    trainer = Trainer(TrainConfig(task="polarity", epochs=2, batch_size=32, width=8,
                                  cell="pair", seed=1), data, tmp_path / "run",
                      progress=False, log=lambda *a: None)
    history = trainer.fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    images = data.images[data.indices("test")][:16].float()
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(images)
    trainer.destroy()
    model, state = load_model(tmp_path / "run" / "checkpoint.pt")
    assert state["model_config"]["cell"] == "pair"
    assert model.inject.entry_std.ne(1).any()           # standardised, and saved
    with torch.no_grad():
        assert torch.allclose(model.eval()(images), trained, atol=1e-5)
    model.destroy()
