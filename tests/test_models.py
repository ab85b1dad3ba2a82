"""The graph-image classifier's parts: the injection with graph sums, old checkpoints."""

import pytest
import torch

from deq_petsc.science.models.graph_classifier import (ClassifierConfig, GraphImageClassifier,
                                               Injection)


def test_graph_sums_enter_the_injection_as_a_per_channel_bias():
    images = torch.arange(2 * 2 * 3 * 3, dtype=torch.float64).reshape(2, 2, 3, 3)
    inj = Injection(in_channels=2, width=4, groups=2, sums=True).double()
    # zero-initialised: the model starts as the plain injection
    plain = Injection(in_channels=2, width=4, groups=2, sums=False).double()
    plain.load_state_dict({k: v for k, v in inj.state_dict().items()
                           if k.startswith(("conv", "norm"))})
    assert torch.equal(inj(images), plain(images))
    with torch.no_grad():
        inj.conv.weight.zero_()
        inj.conv.bias.zero_()                       # GroupNorm of zeros: zeros
        inj.sums.weight.copy_(torch.eye(4))
    x = inj(images)                                 # not standardised yet: the sums as they are
    by_hand = []
    for b in range(2):
        diag = [float(images[b, c].diagonal().sum()) for c in range(2)]
        pairs = [float(images[b, c].sum()) - diag[c] for c in range(2)]
        by_hand.append(diag + pairs)
    # sample 1, channel 0 holds 18..26: diagonal 18 + 22 + 26 = 66, all 198, pairs 132
    assert by_hand[1][0] == 66 and by_hand[1][2] == 132
    assert torch.allclose(x[:, :, 1, 2], torch.tensor(by_hand, dtype=torch.float64))
    assert torch.equal(x, x[:, :, :1, :1].expand_as(x))          # constant over the image
    # standardised over a "training split" of the two: mean 0, standard deviation 1
    inj.standardise(images)
    s = torch.tensor(by_hand, dtype=torch.float64)
    assert torch.allclose(inj(images)[:, :, 0, 0], (s - s.mean(0)) / s.std(0))
    assert torch.allclose(inj(images)[:, :, 0, 0].abs(), torch.full((2, 4), 0.5 ** 0.5, dtype=torch.float64))


def test_a_checkpoint_from_before_the_injection_class_loads():
    cfg = ClassifierConfig(in_channels=3, image_size=6, n_classes=2, width=4, kind="explicit",
                           depth=2)
    model = GraphImageClassifier(cfg).eval()
    old = {k.replace("inject.conv.", "inject.0.").replace("inject.norm.", "inject.1."): v
           for k, v in model.state_dict().items()}
    assert "inject.0.weight" in old and "inject.1.weight" in old
    torch.manual_seed(1)
    again = GraphImageClassifier(cfg).eval()             # other initial weights
    again.load_state_dict(old)
    images = torch.rand(2, 3, 6, 6)
    assert torch.equal(again(images), model(images))


def test_a_run_from_before_graph_sums_resumes_without_them():
    from dataclasses import asdict

    from deq_petsc.science.checkpoint import DEQCheckpointError
    from deq_petsc.science.config import TrainConfig
    from deq_petsc.science.train.run_folder import resumed_config
    saved = asdict(TrainConfig(task="polarity", limit=150))
    del saved["sums"]                               # written before the field existed
    cfg, notes = resumed_config(TrainConfig(task="polarity"), saved, set(), "D")
    assert cfg.sums is False and notes == []
    with pytest.raises(DEQCheckpointError, match="--resume: --sums True differs"):
        resumed_config(TrainConfig(task="polarity", sums=True), saved, {"sums"}, "D")


def _species_image(zs, n=6, channels=5, element_channel=3):
    img = torch.zeros(channels, n, n)
    for i, z in enumerate(zs):
        img[element_channel, i, i] = z / 10.0
    img[0, :len(zs), :len(zs)] = 1.0                 # bonds between every pair
    return img


def test_element_embeddings_give_each_entry_the_two_elements_it_joins():
    torch.manual_seed(0)
    plain = Injection(in_channels=5, width=4, groups=2)
    inj = Injection(in_channels=5, width=4, groups=2, element_channel=3)
    inj.load_state_dict({**inj.state_dict(), **plain.state_dict()})
    images = torch.stack([_species_image([8, 26]), _species_image([3, 9, 94])])
    assert torch.equal(inj(images), plain(images))           # zero-initialised
    assert inj.atomic_numbers(images).tolist() == [[8, 26, 0, 0, 0, 0], [3, 9, 94, 0, 0, 0]]
    with torch.no_grad():
        inj.element_rows.weight.normal_()
        inj.element_cols.weight.normal_()
    bias = inj.element_bias(images)
    rows, cols = inj.element_rows.weight, inj.element_cols.weight
    # sample 1, entry (0, 2): lithium's row vector plus plutonium's column vector
    assert torch.allclose(bias[1, :, 0, 2], rows[3] + cols[94])
    assert torch.allclose(bias[0, :, 1, 0], rows[26] + cols[8])
    assert bias[0, :, 2:].abs().max() == 0 and bias[0, :, :, 2:].abs().max() == 0   # no node
    assert torch.allclose(inj(images) - plain(images), bias)
    # renumbering the nodes renumbers the entries, nothing else
    perm = torch.tensor([2, 0, 1, 3, 4, 5])
    renumbered = images[:, :, perm][:, :, :, perm]
    assert torch.allclose(inj.element_bias(renumbered), bias[:, :, perm][:, :, :, perm])


def test_a_run_from_before_element_embeddings_resumes_without_them():
    from dataclasses import asdict

    from deq_petsc.science.checkpoint import DEQCheckpointError
    from deq_petsc.science.config import TrainConfig
    from deq_petsc.science.train.run_folder import resumed_config
    saved = asdict(TrainConfig(task="crystals", limit=150))
    del saved["elements"]
    cfg, notes = resumed_config(TrainConfig(task="crystals"), saved, set(), "D")
    assert cfg.elements is False and notes == []
    with pytest.raises(DEQCheckpointError, match="--resume: --elements True differs"):
        resumed_config(TrainConfig(task="crystals", elements=True), saved, {"elements"}, "D")
