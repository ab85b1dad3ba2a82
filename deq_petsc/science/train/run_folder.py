"""A training run's folder: one writer at a time, no leftovers, resume on the same terms.

What a careful user expects of ``deq-petsc train --out D``:

* two runs on one folder would interleave their checkpoints: the second is
  refused while the first holds ``D/.lock`` (a lock left by a killed run, whose
  process is gone, is taken over);
* a run killed while writing leaves a hidden temporary file
  (``.checkpoint.pt.XXXX``): it is removed when the folder is next opened;
* a folder knows it is a run's (``D/.deq-petsc-run``): outputs of something else
  (a ``report.json`` or ``metrics.csv`` without the marker or a checkpoint) are
  refused without ``--overwrite``, never replaced silently;
* ``--overwrite`` replaces the old run only once the new one has written its first
  checkpoint: everything is checked and the trainer built first, then the old outputs
  are moved aside into ``D/.replaced-<pid>/`` (so no ``report.json`` of the old run
  sits beside the new run's checkpoint); they are deleted when the new run ends with
  a checkpoint and put back when it fails before one, or, after a kill, when the
  folder is next opened;
* ``--resume`` continues the checkpoint's run: every setting the user did not
  type comes from the checkpoint; a typed setting that changes the data (task,
  ``--limit``, ``--seed``, ``--split-by``, ``--csv``) or the model is refused, since the
  test split could then overlap what was trained on; a typed optimisation
  setting (``--lr``, ``--epochs``, ``--batch-size``, penalties) applies from
  the next epoch and is said in the log; the run's solver options (the PETSc
  options its checkpoint recorded) come back the same way, unless typed anew.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import replace
from pathlib import Path

from ..checkpoint import DEQCheckpointError
from ..config import KEEP_MINE, declared, flag_of
from deq_petsc.core.errors import DEQInputError


class RunFolderRefused(DEQCheckpointError, DEQInputError):
    """A run folder this command may not use as asked (another run's checkpoint without
    --resume or --overwrite, --resume without one, outputs of something that is not a run,
    a resume that would change the data or model): input, answered before anything is
    touched, exit status 2."""

#: What a run writes into its folder (``--overwrite`` moves these aside, then removes them).
OUTPUTS = ("checkpoint.pt", "metrics.json", "metrics.csv", "report.json", "run.json",
           "curves.png", "confusion.png", "reliability.png", "parity.png")
#: The file that says a folder is a run's (a small JSON: kind, version).
MARKER = ".deq-petsc-run"
#: Where ``--overwrite`` keeps the old run's outputs until the new run has a checkpoint.
REPLACED = ".replaced-"


class RunFolder:
    """``with RunFolder(out, overwrite=...)``: the lock held, leftovers gone; ``check``
    refuses a folder this run may not write, ``start`` marks it and moves the run it
    replaces aside, and leaving the block settles that (see the module docstring)."""

    def __init__(self, out, overwrite: bool = False, active: bool = True):
        self.out, self.overwrite, self.active = Path(out), overwrite, active
        self.lock = self.out / ".lock"
        self.aside: Path | None = None      # the replaced run's outputs, while they wait
        self._created = False

    def __enter__(self):
        if not self.active:               # the ranks that do not write
            return self
        try:
            self._created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            self._acquire()
            self._remove_orphans()
            for aside in self._asides():          # a killed --overwrite run's: settle it
                self._settle(aside)
        except OSError as err:
            raise DEQCheckpointError(f"cannot use the run folder {self.out}: "
                                     f"{err.strerror or err}") from None
        return self

    def __exit__(self, exc_type, *exc):
        if self.active:
            try:
                if self.aside is not None:
                    self._settle(self.aside)
                if exc_type is not None and self._created and \
                        not any(p != self.lock for p in self.out.iterdir()):
                    self.lock.unlink(missing_ok=True)   # failed before it wrote: leave
                    self.out.rmdir()                    # no empty folder behind
            finally:
                self.lock.unlink(missing_ok=True)
        return False

    # -- what a run may write -----------------------------------------------------------
    def check(self, resume: bool = False) -> None:
        """Refuse, in one line and before anything is touched, a folder this run may not
        write: another run's checkpoint without --resume or --overwrite, --resume without
        one, or outputs of something that is not a run without --overwrite."""
        present = self.outputs()
        if "checkpoint.pt" in present and not (resume or self.overwrite):
            raise RunFolderRefused(f"{self.out} already holds a checkpoint: pass --resume "
                                     f"to continue it, --overwrite to start over, or another "
                                     f"--out")
        if resume and "checkpoint.pt" not in present:
            raise RunFolderRefused(f"--resume: no checkpoint in {self.out}")
        if present and "checkpoint.pt" not in present and not (
                self.overwrite or (self.out / MARKER).exists()):
            raise RunFolderRefused(f"{self.out} holds {', '.join(present)} but is not a "
                                     f"deq-petsc run folder (no {MARKER}): pass --overwrite "
                                     f"to replace them, or choose another --out")

    def outputs(self) -> list[str]:
        """The run outputs in the folder, counting those a killed --overwrite run left
        aside when it wrote no checkpoint (opening the folder puts them back)."""
        here = [name for name in OUTPUTS if (self.out / name).exists()]
        if "checkpoint.pt" in here:
            return here
        aside = {name for a in self._asides() for name in OUTPUTS if (a / name).exists()}
        return [name for name in OUTPUTS if name in aside or name in here]

    def start(self) -> None:
        """The run begins writing: mark the folder as a run's and, with --overwrite, move
        the old run's outputs aside (into ``.replaced-<pid>``) until this run checkpoints."""
        if not self.active:
            return
        try:
            present = [name for name in OUTPUTS + (MARKER,) if (self.out / name).exists()]
            if self.overwrite and set(present) - {MARKER}:
                self.aside = self.out / f"{REPLACED}{os.getpid()}"
                self.aside.mkdir(exist_ok=True)
                for name in present:
                    os.replace(self.out / name, self.aside / name)
            self._mark()
        except OSError as err:
            raise DEQCheckpointError(f"cannot use the run folder {self.out}: "
                                     f"{err.strerror or err}") from None

    def _mark(self) -> None:
        from deq_petsc import __version__
        (self.out / MARKER).write_text(json.dumps({"kind": "deq-petsc train run",
                                                   "version": __version__}) + "\n")

    def _asides(self) -> list[Path]:
        if not self.out.is_dir():
            return []
        return sorted(p for p in self.out.iterdir()
                      if p.name.startswith(REPLACED) and p.is_dir())

    def _settle(self, aside: Path) -> None:
        """The replaced run goes once its successor has a checkpoint; otherwise it comes
        back, over whatever the successor wrote before failing."""
        if not (self.out / "checkpoint.pt").exists():
            for name in OUTPUTS + (MARKER,):      # the marker too: a folder that was no
                if (aside / name).exists():       # run's before must not become one
                    os.replace(aside / name, self.out / name)
                else:
                    (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(aside, ignore_errors=True)

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
    # the settings' declarations say which fix the data build or the model (a resume must
    # keep them) and what a checkpoint written before a field existed trained with
    for name, (_, setting) in declared(type(cfg)).items():
        before = setting.before_the_field
        if name not in saved and before is KEEP_MINE:
            continue
        mine, theirs = getattr(cfg, name), saved.get(name, before)
        if name not in explicit or mine == theirs:
            changes[name] = theirs
            continue
        shown = flag_of(type(cfg), name) or name
        if setting.fixed_on_resume:
            raise RunFolderRefused(
                f"--resume: {shown} {mine} differs from the run in {where} ({shown} "
                f"{theirs}); a resumed run keeps its data and model: drop {shown}, or start "
                f"a new run (--overwrite or another --out)")
        notes.append(f"{shown} {mine} (the checkpoint's run had {theirs})")
    return replace(cfg, **changes), notes


def resumed_solver_options(state: dict, typed: dict, prefix: str = ""):
    """The run's solver options to put back, and the log line that says what it solves with.

    A resumed run is the checkpoint's run, solvers included: the PETSc options it
    recorded under its prefix (``-snes_*``, ``-ksp_*``, ``-adjoint_*``, ``-tao_*``,
    ``-deq_*``, ``-train_*``; not monitors) come back under ``prefix``, except those
    this command line sets itself (``typed``: the options database now), which win
    as a typed --lr does. Returns ``(options, line)``: ``options`` to put under
    ``prefix`` with :func:`~deq_petsc.core.petsc_options.inserted_defaults` (which keeps
    them under the command line), ``line`` None when there is nothing to say.
    """
    from ..run_record import options_text, solver_options

    record = state.get("record")
    if record is None:
        return {}, ("the checkpoint records no solver options (written before runs kept "
                    "them): this command line's are used")
    run = solver_options(record["petsc_options"], record.get("prefix", ""))
    mine = solver_options(typed, prefix)
    restored = {name: value for name, value in run.items() if name not in mine}
    new = {name: value for name, value in mine.items()
           if name not in run or run[name] != value}
    parts = []
    if new:
        had = {name: run[name] for name in new if name in run}
        parts.append(f"new solver options: {options_text(new, prefix)} (the run had "
                     f"{options_text(had, prefix) or 'the program defaults for them'})")
    if restored:
        parts.append(f"restored the run's solver options: {options_text(restored, prefix)}")
    return restored, "; ".join(parts) or None
