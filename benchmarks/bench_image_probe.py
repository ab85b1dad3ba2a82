"""What a neural network can read from the graph images, with and without element identity.

Gradient boosting on the flattened crystal images beats the DEQ by 12 points
(docs/data.md); is that the DEQ, or what any network makes of the images? This
fits, on the same split as ``deq-petsc train``, a plain two-hidden-layer MLP
(256 units, Adam 1e-3, batches of 128, standardised inputs) on the flattened
images, then on the images plus each node's element one-hot (read off the
element channel's diagonal, ``Z / 10``), and prints the test accuracy of
every epoch for both, side by side. The element channel already holds ``Z``;
the one-hot asks nothing new of the data, only gives the network the element
as a category instead of a number (what ``--elements`` gives the DEQ).

    .venv/bin/python benchmarks/bench_image_probe.py --task crystals --limit 0 --epochs 15
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import deq_petsc  # noqa: F401  (process set-up)
from deq_petsc.data.graph_image import node_atomic_numbers


def one_hot_elements(images: np.ndarray, channel: int, max_z: int = 118) -> np.ndarray:
    """``[M, n * max_z]``: each node's element as a one-hot (no node: zeros)."""
    z = np.clip(node_atomic_numbers(images, channel), 0, max_z)
    return np.eye(max_z + 1, dtype=np.float32)[z][:, :, 1:].reshape(len(z), -1)


def fit_mlp(X, y, train, test, epochs, seed, label):
    import torch
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(X[train])
    Xt = torch.tensor(scaler.transform(X), dtype=torch.float32)
    yt = torch.as_tensor(y)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, int(y.max()) + 1))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    train_t = torch.as_tensor(train)
    accuracies = []
    start = time.perf_counter()
    for epoch in range(epochs):
        for batch in train_t[torch.randperm(len(train))].split(128):
            loss = torch.nn.functional.cross_entropy(net(Xt[batch]), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracies.append(float((net(Xt[test]).argmax(1) == yt[test]).float().mean()))
        print(f"  {label}: epoch {epoch + 1:3d} test accuracy {accuracies[-1]:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return accuracies


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="crystals")
    p.add_argument("--limit", type=int, default=0, help="0: the whole data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from deq_petsc.data import load_task
    torch.set_num_threads(args.threads)
    data = load_task(args.task, limit=args.limit or None, seed=args.seed, progress=False)
    images = data.images.float().numpy()
    y = data.labels.numpy()
    train, test = np.asarray(data.indices("train")), np.asarray(data.indices("test"))
    pixels = images.reshape(len(images), -1)
    with_elements = np.concatenate(
        [pixels, one_hot_elements(images, list(data.channels).index("element"))], 1)
    results = {}
    for label, X in (("pixels", pixels), ("pixels + element one-hot", with_elements)):
        results[label] = fit_mlp(X, y, train, test, args.epochs, args.seed, label)
    print(f"{args.task}, {len(train)} train / {len(test)} test, MLP 256-256, "
          f"{args.epochs} epochs: test accuracy at the last epoch (best epoch)")
    for label, acc in results.items():
        print(f"  {label:26s} {acc[-1]:.4f} ({max(acc):.4f})")


if __name__ == "__main__":
    main()
