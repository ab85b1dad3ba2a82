"""What a neural network can read from the graph images, with and without element identity.

Gradient boosting on the flattened crystal images beats the DEQ by 12 points
(docs/data.md); is that the DEQ, or what any network makes of the images? This
fits, on the same split as ``deq-petsc train``, a plain two-hidden-layer MLP
(256 units, Adam 1e-3, batches of 128, standardised inputs) on feature sets
built from these blocks, and prints the test accuracy of every epoch:

* ``pixels``: the flattened images;
* ``onehot``: each node's element as a one-hot (read off the element channel's
  diagonal, ``Z / 10``): nothing new, only the element as a category instead of a
  number (what ``--elements`` gives the DEQ);
* ``fractions``: each node's share of the cell's atoms (its density entry over
  their sum: also in the images, but as a ratio a network must form);
* ``properties``: each node's seven element properties of the descriptor baseline
  (Z, electronegativity, covalent radius, row, group, mass, Mendeleev number);
* ``means``: their atom-fraction-weighted means over the nodes (as the baseline's
  composition statistics);
* ``descriptors``: ``deq-petsc baseline``'s descriptor vector (periodic tasks;
  computed, or taken from its cache).

``--sets`` lists the feature sets, blocks joined by ``+``:

    .venv/bin/python benchmarks/bench_image_probe.py --task crystals --limit 0 --epochs 15
    .venv/bin/python benchmarks/bench_image_probe.py --task crystals --limit 0 --epochs 15 \
        --sets pixels+onehot+fractions,pixels+onehot+properties,descriptors
    .venv/bin/python benchmarks/bench_image_probe.py --task crystals --limit 0 --epochs 15 \
        --sets pixels+onehot --pairs

``--pairs`` adds a network that does not depend on the order of the nodes (each
entry of the node-neighbour matrix with its two elements through a shared MLP,
summed into nodes and the graph: :func:`fit_pairs`), against the MLP's reading
of the flattened image; ``--pairs-globals`` fits it again with the baseline's
descriptors joined to its pooled graph (``--sets ""`` skips the MLPs):

    .venv/bin/python benchmarks/bench_image_probe.py --task crystals --limit 0 --epochs 15 \
        --sets "" --pairs --pairs-globals
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import deq_petsc  # noqa: F401  (process set-up)
from deq_petsc.science.data.graph_image import node_atomic_numbers


def one_hot_elements(images: np.ndarray, channel: int, max_z: int = 118) -> np.ndarray:
    """``[M, n * max_z]``: each node's element as a one-hot (no node: zeros)."""
    z = np.clip(node_atomic_numbers(images, channel), 0, max_z)
    return np.eye(max_z + 1, dtype=np.float32)[z][:, :, 1:].reshape(len(z), -1)


def node_blocks(images: np.ndarray, channels) -> dict:
    """The per-node blocks (see the module docstring) of periodic images."""
    from deq_petsc.science.data.descriptors import element_properties
    channels = list(channels)
    z = np.clip(node_atomic_numbers(images, channels.index("element")), 0, 118)
    density = np.diagonal(images[:, channels.index("density")], axis1=1, axis2=2)
    fractions = density / np.maximum(density.sum(1, keepdims=True), 1e-12)
    table = np.nan_to_num(np.array([(0.0,) * 7] + [element_properties(k)
                                                   for k in range(1, 119)]))
    properties = table[z]                                 # [M, n, 7]; no node: zeros
    return {"fractions": fractions, "properties": properties.reshape(len(z), -1),
            "means": np.einsum("mn,mnp->mp", fractions, properties)}


def fit_mlp(X, y, train, test, epochs, seed, label):
    import torch
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(X[train])
    Xt = torch.tensor(scaler.transform(X), dtype=torch.float32)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, int(y.max()) + 1))
    return train_and_score(net, lambda idx: net(Xt[idx]), y, train, test, epochs, label)


def train_and_score(net, logits, y, train, test, epochs, label):
    """Adam 1e-3 on batches of 128 of ``train`` for ``epochs``; ``logits(indices)`` is the
    network's output for those samples. Prints and returns the test accuracy of every
    epoch (the one loop of both probes)."""
    import torch
    yt = torch.as_tensor(y)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
    accuracies, start = [], time.perf_counter()
    for epoch in range(epochs):
        for batch in train_t[torch.randperm(len(train))].split(128):
            loss = torch.nn.functional.cross_entropy(logits(batch), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            correct = sum(int((logits(b).argmax(1) == yt[b]).sum()) for b in test_t.split(1024))
        accuracies.append(correct / len(test))
        print(f"  {label}: epoch {epoch + 1:3d} test accuracy {accuracies[-1]:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return accuracies


def fit_pairs(images, z, y, train, test, epochs, seed, label="pair network",
              global_features=None):
    """A network that reads the node-neighbour matrix as a graph network does: each entry
    ``(i, j)`` (its channels, and learned embeddings of the elements of nodes i and j)
    through a shared MLP, summed over j into node i, nodes summed and averaged into the
    graph, an MLP to the logits. Unlike a convolution over species sorted by atomic
    number, or an MLP on the flattened image, it does not depend on the nodes' order.

    ``global_features`` (``[M, d]``, NaN for missing) join the pooled graph before the
    head: a graph-level state as MEGNet's, to ask whether the images and, say, the
    baseline's descriptors together take a network past gradient boosting on the
    descriptors. Columns without a finite training value are dropped, the rest
    standardised over ``train`` (missing values then 0), and each column with missing
    training values gets a 0/1 flag of them."""
    import torch
    from sklearn.preprocessing import StandardScaler
    from torch import nn
    torch.manual_seed(seed)
    g = torch.zeros(len(images), 0)
    if global_features is not None:
        G = np.asarray(global_features, dtype=np.float64)
        G = G[:, np.isfinite(G[train]).any(0)]
        missing = ~np.isfinite(G)
        G = np.where(missing, np.nan, G)            # the scaler skips NaN, not inf
        G = np.nan_to_num(StandardScaler().fit(G[train]).transform(G))
        flags = missing[:, missing[train].any(0)]
        g = torch.as_tensor(np.concatenate([G, flags], 1), dtype=torch.float32)
    x = torch.as_tensor(images).permute(0, 2, 3, 1).contiguous()        # [M, N, N, C]
    z = torch.as_tensor(np.clip(z, 0, 118))
    node = z > 0
    pair = (node[:, :, None] & node[:, None, :]).float()
    on = pair[torch.as_tensor(train)].bool()
    entries = x[torch.as_tensor(train)][on]                               # training pairs
    mean, std = entries.mean(0), entries.std(0).clamp_min(1e-6)
    x = (x - mean) / std * pair[..., None]
    width = 128

    class Pairs(nn.Module):
        def __init__(self):
            super().__init__()
            self.entry = nn.Linear(x.shape[-1], width)
            self.rows = nn.Embedding(119, width, padding_idx=0)
            self.cols = nn.Embedding(119, width, padding_idx=0)
            self.pair_mlp = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU())
            self.node_mlp = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(2 * width + g.shape[1], 256), nn.ReLU(),
                                      nn.Linear(256, int(y.max()) + 1))

        def forward(self, xb, zb, gb):
            nodes = (zb > 0).float()
            mask = nodes[:, :, None] * nodes[:, None, :]
            h = self.pair_mlp(self.entry(xb) + self.rows(zb)[:, :, None] + self.cols(zb)[:, None])
            h = (h * mask[..., None]).sum(2)                               # [B, N, width]
            h = self.node_mlp(torch.cat([h, self.rows(zb)], -1)) * nodes[..., None]
            count = nodes.sum(1, keepdim=True).clamp_min(1)
            return self.head(torch.cat([h.sum(1), h.sum(1) / count, gb], -1))

    net = Pairs()
    return train_and_score(net, lambda idx: net(x[idx], z[idx], g[idx]), y, train, test,
                           epochs, label)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="crystals")
    p.add_argument("--limit", type=int, default=0, help="0: the whole data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sets", default="pixels,pixels+onehot",
                   help="comma-separated feature sets, blocks joined by '+' (pixels, onehot, "
                        "fractions, properties, means, descriptors)")
    p.add_argument("--pairs", action="store_true",
                   help="also fit the order-independent pair network (fit_pairs)")
    p.add_argument("--pairs-globals", action="store_true",
                   help="with --pairs, fit it a second time with the baseline's descriptors "
                        "as a graph-level input to its head")
    args = p.parse_args()
    if args.pairs_globals and not args.pairs:
        p.error("--pairs-globals goes with --pairs")
    import torch

    from deq_petsc.science.data import load_task
    torch.set_num_threads(args.threads)
    data = load_task(args.task, limit=args.limit or None, seed=args.seed, progress=False)
    images = data.images.float().numpy()
    y = data.labels.numpy()
    train, test = np.asarray(data.indices("train")), np.asarray(data.indices("test"))
    sets = [name.split("+") for name in args.sets.split(",") if name]
    wanted = {block for blocks in sets for block in blocks}
    blocks = {"pixels": images.reshape(len(images), -1)}
    if "onehot" in wanted:
        blocks["onehot"] = one_hot_elements(images, list(data.channels).index("element"))
    if wanted & {"fractions", "properties", "means"}:
        blocks.update(node_blocks(images, data.channels))
    descriptors = None
    if "descriptors" in wanted or args.pairs_globals:
        from deq_petsc.science.baseline import task_descriptors
        descriptors = task_descriptors(data, progress=False)[0]
        blocks["descriptors"] = np.nan_to_num(descriptors)
    unknown = wanted - set(blocks)
    if unknown:
        p.error(f"unknown feature block(s): {', '.join(sorted(unknown))}")
    results = {}
    for names in sets:
        label = " + ".join(names)
        X = np.concatenate([blocks[b] for b in names], 1).astype(np.float32)
        results[label] = fit_mlp(X, y, train, test, args.epochs, args.seed, label)
    if args.pairs:
        z = node_atomic_numbers(images, list(data.channels).index("element"))
        results["pair network (entries + element embeddings)"] = fit_pairs(
            images, z, y, train, test, args.epochs, args.seed)
        if args.pairs_globals:
            results["pair network + descriptors in its head"] = fit_pairs(
                images, z, y, train, test, args.epochs, args.seed,
                "pair network + descriptors", global_features=descriptors)
    print(f"{args.task}, {len(train)} train / {len(test)} test, "
          + ("MLP 256-256" if sets else "") + (" and " if sets and args.pairs else "")
          + ("the pair network" if args.pairs else "") + ", "
          f"{args.epochs} epochs: test accuracy at the last epoch (best epoch)")
    for label, acc in results.items():
        print(f"  {label:50s} {acc[-1]:.4f} ({max(acc):.4f})")


if __name__ == "__main__":
    main()
