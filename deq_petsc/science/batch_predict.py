"""Asking a trained scientist about many molecules or structures at once.

A chemist's question is rarely one SMILES: it is a screening list, a folder of
CIFs from a database export. Inputs are read from

* molecules: a CSV with a ``smiles`` column (and, if present, a ``name`` or
  ``id`` column), or a text file with one SMILES per line (``.smi`` style:
  ``SMILES [name]``; blank lines and ``#`` comments skipped);
* periodic structures: a folder of ``*.cif`` files, one ``.cif`` file, or a
  text file with one CIF path per line (relative to the list's folder).

Every input gets one output row, in input order: the predicted class and each
class's probability (or the regressed number), or the reason it could not be
read. A bad row never aborts the batch. Images are rendered in worker
processes, then solved in batches with the model's forward solver; a batch
whose solve stopped at the iteration cap marks its rows ``inexact``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deq_petsc.core.errors import DEQInputError

#: why charged species, radicals and salts are outside a polarity model's domain
QM9_DOMAIN = "QM9, which polarity models learn from, holds neutral closed-shell single molecules"


@dataclass
class Item:
    name: str
    payload: str       # a SMILES or a CIF path


def read_inputs(path, molecular: bool) -> list[Item]:
    """The inputs named by ``path`` (see the module docstring). Only a folder or a regular
    file is opened (a FIFO would block for ever), and inputs of the other kind of model
    are refused in its words."""
    from .data.graph_image import not_a_regular_file

    path = Path(path)
    if not path.exists():
        raise DEQInputError(f"--input {path}: no such file or folder")
    if path.is_dir():
        if molecular:
            raise DEQInputError(f"--input {path}: a folder; molecules come in a CSV with a "
                                f"'smiles' column or a file with one SMILES per line")
        files = sorted(path.glob("*.cif"))
        if not files:
            raise DEQInputError(f"--input {path}: a folder without *.cif files")
        return [Item(f.name, str(f)) for f in files]
    if problem := not_a_regular_file(path):
        raise DEQInputError(f"--input {path}: {problem}")
    suffix = path.suffix.lower()
    if molecular:
        if suffix == ".cif":
            raise DEQInputError(f"--input {path}: a CIF, but this model classifies molecules: "
                                f"give SMILES (a CSV with a 'smiles' column or a file with "
                                f"one SMILES per line)")
        return _read_smiles_csv(path) if suffix == ".csv" else _read_lines(path, _smiles_line)
    if suffix in (".csv", ".smi"):
        raise DEQInputError(f"--input {path}: a {suffix[1:].upper()} file, but this model reads "
                            f"structures from CIFs: give a folder of *.cif files, one .cif "
                            f"file or a file with one CIF path per line")
    if suffix == ".cif":
        return [Item(path.name, str(path))]
    # the whole line is one path, blanks and all (relative to the list's folder)
    return _read_lines(path, lambda line, n: Item(line, str(path.parent / line)))


def _smiles_line(line: str, n: int) -> Item:
    """``SMILES [name]``: the name is all that follows the first blank, tabs and spaces
    kept (a ``.smi`` name may hold both)."""
    smiles, *name = line.split(None, 1)
    return Item(name[0] if name else f"line {n}", smiles)


def _read_lines(path: Path, make) -> list[Item]:
    """One input per line, ``make(line, number)``; blank lines and ``#`` comments skipped.
    A UTF-8 byte-order mark (Excel writes one) is not part of the first line."""
    items = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(make(line, n))
    if not items:
        raise DEQInputError(f"--input {path}: no inputs in it")
    return items


def _read_smiles_csv(path: Path) -> list[Item]:
    """A CSV's ``smiles`` column (any case; a byte-order mark before the header is not
    part of it), named by its ``name`` or ``id`` column. Two smiles columns are refused:
    which one was meant cannot be guessed."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        columns = {c.strip().lower(): c for c in fields}
        if "smiles" not in columns:
            raise DEQInputError(f"--input {path}: no 'smiles' column (columns: "
                                f"{', '.join(fields) or 'none'})")
        twins = [c for c in fields if c.strip().lower() == "smiles"]
        if len(twins) > 1:
            raise DEQInputError(f"--input {path}: {len(twins)} smiles columns "
                                f"({', '.join(twins)}): keep one")
        label = columns.get("name") or columns.get("id")
        items = [Item(row[label] if label and row.get(label) else f"row {n}",
                      (row[columns["smiles"]] or "").strip())
                 for n, row in enumerate(reader, start=1)]
    if not items:
        raise DEQInputError(f"--input {path}: no rows")
    return items


def unseen_elements(image, domain) -> str:
    """The elements of one graph image that no training sample had (``""`` if none, or
    if the checkpoint does not record its domain)."""
    from .data.graph_image import element_symbols, elements_in
    if not domain:
        return ""
    return element_symbols(sorted(set(elements_in(image)) - set(domain)))


def predict_inputs(model, objective, items: list[Item], molecular: bool, size: int,
                   batch_size: int = 256, jobs=None, progress: bool = True,
                   domain=None) -> list[dict]:
    """One row per item: name, input, prediction columns, ``inexact``, ``unseen_elements``
    (outside the training set's chemistry: ``domain``, its atomic numbers), for molecules
    ``outside_domain`` (charged, radical or several molecules: unlike QM9's), ``error``."""
    from .data.tasks import render_with_info
    from .data.workers import map_in_workers
    from deq_petsc.process.progress import progress as progress_bar

    kind = "smiles" if molecular else "cif_file"
    rendered = map_in_workers(render_with_info, [(kind, it.payload, size) for it in items],
                              desc="graph images", n_jobs=jobs, progress=progress, unit="input")
    good = [k for k, (image, _, _) in enumerate(rendered) if image is not None]
    columns = _prediction_columns(objective)
    rows = [{"name": it.name, "input": it.payload, **dict.fromkeys(columns, ""),
             "inexact": "", "unseen_elements": "" if image is None else
             unseen_elements(image, domain),
             **({"outside_domain": info.get("outside_domain", "")} if molecular else {}),
             "error": reason or ""}
            for it, (image, reason, info) in zip(items, rendered)]
    bar = progress_bar(total=len(good), desc="solving", unit="input", enabled=progress)
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        images = torch.from_numpy(np.stack([rendered[k][0] for k in chunk]).astype(np.float32))
        for k, values in zip(chunk, _solve(model, objective, images, batch_size)):
            rows[k].update(values)
        bar.update(len(chunk))
    bar.close()
    return rows


def _solve(model, objective, images: torch.Tensor, batch_size: int) -> list[dict]:
    """Each image's prediction columns and ``inexact``. A batch whose solve fails is solved
    again an image at a time, so that an input the model cannot solve gets the error in
    its row and the others their answers: a bad row never stops the batch."""
    from deq_petsc.core.errors import DEQConvergenceError
    from .inference import predict

    try:
        out, (_, _, _, inexact) = predict(model, images, batch_size)
    except DEQConvergenceError as err:
        if len(images) == 1:
            return [{"error": f"the solve failed: {err}"}]
        return [row for k in range(len(images))
                for row in _solve(model, objective, images[k:k + 1], batch_size)]
    return [dict(values, inexact=bool(inexact))
            for values in _prediction_values(objective, out.float())]


def _prediction_columns(objective) -> list[str]:
    if objective.name == "classify":
        return ["label"] + [f"p({c})" for c in objective.classes]
    return [objective.target_name]


def _prediction_values(objective, out: torch.Tensor) -> list[dict]:
    if objective.name == "classify":
        probs = torch.softmax(out, dim=1).numpy()
        return [{"label": objective.classes[int(p.argmax())],
                 **{f"p({c})": round(float(q), 6) for c, q in zip(objective.classes, p)}}
                for p in probs]
    values = objective.unscale(out).reshape(-1).tolist()
    return [{objective.target_name: round(v, 6)} for v in values]


def summarize(rows: list[dict], objective) -> str:
    """Counts, errors, solves at the cap, and the predicted class balance."""
    failed = [r for r in rows if r["error"]]
    done = len(rows) - len(failed)
    lines = [f"{len(rows)} inputs: {done} predicted, {len(failed)} could not be read"
             + (f" (first: {failed[0]['name']}: {failed[0]['error']})" if failed else "")]
    inexact = sum(1 for r in rows if r["inexact"] is True)
    if inexact:
        lines.append(f"WARNING: {inexact} predictions come from solves stopped at the "
                     f"iteration limit (column 'inexact')")
    unseen = [r for r in rows if r["unseen_elements"]]
    if unseen:
        lines.append(f"WARNING: {len(unseen)} inputs contain elements no training sample had "
                     f"(first: {unseen[0]['name']}: {unseen[0]['unseen_elements']}; column "
                     f"'unseen_elements'): those answers are outside the model's domain")
    outside = [r for r in rows if r.get("outside_domain")]
    if outside:
        lines.append(f"WARNING: {len(outside)} inputs are unlike the training molecules "
                     f"(first: {outside[0]['name']}: {outside[0]['outside_domain']}; column "
                     f"'outside_domain'): {QM9_DOMAIN}, so those answers are outside the "
                     f"model's domain")
    if objective.name == "classify" and done:
        counts = {c: sum(1 for r in rows if r["label"] == c) for c in objective.classes}
        lines.append("predicted classes: " + ", ".join(
            f"{c} {k} ({100 * k / done:.0f}%)" for c, k in counts.items()))
    return "\n".join(lines)
