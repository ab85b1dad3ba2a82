"""A training run's folder: one writer at a time, no leftovers, resume on the same terms.

What a careful user expects of ``deq-petsc train --out D``:

* two runs on one folder would interleave their checkpoints: the second is
  refused while the first holds ``D/.lock`` (a lock left by a killed run, whose
  process is gone, is taken over);
* a run killed while writing leaves a hidden temporary file
  (``.checkpoint.pt.XXXX``): it is removed when the folder is next opened;
* ``--overwrite`` removes the old run's outputs before the new run starts, so
  no ``report.json`` of the old run sits beside the new run's checkpoint;
* ``--resume`` continues the checkpoint's run: every setting the user did not
  type comes from the checkpoint; a typed setting that changes the data (task,
  ``--limit``, ``--seed``, ``--split-by``) or the model is refused, since the
  test split could then overlap what was trained on; a typed optimisation
  setting (``--lr``, ``--epochs``, ``--batch-size``, penalties) applies from
  the next epoch and is said in the log.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import fields, replace
from pathlib import Path

from ..checkpoint import DEQCheckpointError

#: What a run writes into its folder (``--overwrite`` removes these first).
OUTPUTS = ("checkpoint.pt", "metrics.json", "metrics.csv", "report.json", "curves.png",
           "confusion.png", "reliability.png", "parity.png")
#: TrainConfig fields that fix the data build or the model: a resume must keep them.
FIXED_ON_RESUME = ("task", "limit", "seed", "split_by", "kind", "depth", "width", "cell",
                   "gamma", "sums", "elements", "objective", "dtype")
#: what a checkpoint written before a field existed trained with
BEFORE_THE_FIELD = {"sums": False, "elements": False}
#: command-line flag of a TrainConfig field, where the names differ
FLAG_OF = {"kind": "model"}


class RunFolder:
    """``with RunFolder(out, overwrite=...)``: the lock held, leftovers gone."""

    def __init__(self, out, overwrite: bool = False, active: bool = True):
        self.out, self.overwrite, self.active = Path(out), overwrite, active
        self.lock = self.out / ".lock"

    def __enter__(self):
        if not self.active:               # the ranks that do not write
            return self
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._acquire()
            self._remove_orphans()
            if self.overwrite:
                for name in OUTPUTS:
                    (self.out / name).unlink(missing_ok=True)
        except OSError as err:
            raise DEQCheckpointError(f"cannot use the run folder {self.out}: "
                                     f"{err.strerror or err}") from None
        return self

    def __exit__(self, *exc):
        if self.active:
            self.lock.unlink(missing_ok=True)
        return False

    def _acquire(self) -> None:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise DEQCheckpointError(
                        f"{self.out} is in use by another run ({holder}); wait for it to "
                        f"end or choose another --out") from None
                self.lock.unlink(missing_ok=True)       # a killed run's: take it over
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            return
        raise DEQCheckpointError(f"could not take the lock {self.lock}")

    def _holder(self) -> str | None:
        """The live process that holds the lock, or None if it is gone."""
        try:
            host, pid = self.lock.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return None
        if host != socket.gethostname():
            return f"pid {pid} on {host}"           # cannot check: assume alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"pid {pid}"

    def _remove_orphans(self) -> None:
        pattern = re.compile(r"^\.(" + "|".join(map(re.escape, OUTPUTS)) + r")\..+")
        for path in self.out.iterdir():
            if pattern.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)


def resumed_config(cfg, saved: dict, explicit: set[str], where: str):
    """The config to resume with, and a note per typed change (see the module docstring).

    ``cfg``: the TrainConfig from this command line; ``saved``: the checkpoint's
    ``train_config``; ``explicit``: the flags the user typed (argparse dests).
    """
    changes, notes = {}, []
    for f in fields(cfg):
        if f.name not in saved and f.name not in BEFORE_THE_FIELD:
            continue
        flag = FLAG_OF.get(f.name, f.name)
        mine, theirs = getattr(cfg, f.name), saved.get(f.name, BEFORE_THE_FIELD.get(f.name))
        if flag not in explicit or mine == theirs:
            changes[f.name] = theirs
            continue
        shown = "--" + flag.replace("_", "-")
        if f.name in FIXED_ON_RESUME:
            raise DEQCheckpointError(
                f"--resume: {shown} {mine} differs from the run in {where} ({shown} "
                f"{theirs}); a resumed run keeps its data and model: drop {shown}, or start "
                f"a new run (--overwrite or another --out)")
        notes.append(f"{shown} {mine} (the checkpoint's run had {theirs})")
    return replace(cfg, **changes), notes
