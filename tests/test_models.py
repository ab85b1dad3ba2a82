"""The graph-image classifier's parts: the injection with graph sums, old checkpoints."""

import pytest
import torch

from deq_petsc.models.graph_classifier import (ClassifierConfig, GraphImageClassifier,
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

    from deq_petsc.checkpoint import DEQCheckpointError
    from deq_petsc.config import TrainConfig
    from deq_petsc.train.run_folder import resumed_config
    saved = asdict(TrainConfig(task="polarity", limit=150))
    del saved["sums"]                               # written before the field existed
    cfg, notes = resumed_config(TrainConfig(task="polarity"), saved, set(), "D")
    assert cfg.sums is False and notes == []
    with pytest.raises(DEQCheckpointError, match="--resume: --sums True differs"):
        resumed_config(TrainConfig(task="polarity", sums=True), saved, {"sums"}, "D")
