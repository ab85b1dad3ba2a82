"""Training with a torch optimizer (Adam), and the run folder it writes.

A run folder holds ``checkpoint.pt`` (after every epoch, atomically),
``metrics.csv`` / ``metrics.json`` (one row per epoch), ``curves.png``, ``run.json``
(the run's record: PETSc options in force, code, machine, settings; also in the
checkpoint and the report), and at the end ``report.json`` and ``confusion.png``
for the test split. Everything
random is seeded (initial weights by ``seed``, the shuffle of epoch ``e`` by
``(seed, e)``), so ``--resume`` from the checkpoint of epoch ``k`` gives the
same numbers as a run that was never interrupted.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from deq_petsc.process.atomic import write_csv, write_json
from ..checkpoint import DEQCheckpointError, load_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..data.graph_image import elements_in
from ..data.tasks import TaskData
from deq_petsc.core.errors import DEQConvergenceError, DEQOptionsError, DEQTrainingError
from ..inference import build_model, evaluate, model_device, model_dtype, solver_counts
from ..objectives import make_objective, shard_loss
from ..parallel import DataParallel
from deq_petsc.process.progress import progress
from ..plots import plot_confusion, plot_curves, plot_parity, plot_reliability
from ..run_record import run_record


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Adam's step size in ``epoch`` (0-based): ``cfg.lr``, or its cosine decay over
    ``cfg.epochs`` (``lr`` in the first epoch, ``lr (1 + cos(pi (E-1)/E)) / 2`` in the last)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (1.0 + math.cos(math.pi * epoch / cfg.epochs)) / 2.0
    raise DEQOptionsError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")


class Trainer:
    """Trains one model on one task's data set and keeps its run folder up to date.

    ``comm`` (default ``PETSC_COMM_WORLD``): under ``mpiexec`` the ranks train
    one model data-parallel (:mod:`deq_petsc.science.parallel`); rank 0 logs
    and writes the run folder, every rank can resume from it.
    """

    def __init__(self, cfg: TrainConfig, data: TaskData, out_dir, prefix: str = "",
                 solver_options: dict | None = None, adjoint_options: dict | None = None,
                 progress: bool = True, log=print, comm=None):
        self.cfg, self.data, self.out = cfg, data, Path(out_dir)
        self.prefix = prefix
        self.dp = DataParallel(comm)
        self.progress = progress and self.dp.is_root
        self.log = log if self.dp.is_root else (lambda *a, **k: None)
        self.objective = make_objective(cfg.objective, data)
        self.model = build_model(cfg, data, self.objective.out_dim, prefix=prefix,
                                 comm=self.dp.comm, solver_options=solver_options,
                                 adjoint_options=adjoint_options)
        self.opt = self._make_optimizer()
        #: atomic numbers in the training split: predict warns about inputs outside them
        self.training_elements = (
            elements_in(data.images[data.indices("train")].numpy(),
                        list(data.channels).index("element"))
            if "element" in data.channels else [])
        self.history: list[dict] = []
        self.start_epoch = 0
        self.deadline: float | None = None     # perf_counter() time a budgeted fit ends
        self.out.mkdir(parents=True, exist_ok=True)

    name = "adam"

    def _make_optimizer(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr,
                                weight_decay=self.cfg.weight_decay)

    def _set_epoch_lr(self, epoch: int) -> float:
        """The step size of ``epoch`` (0-based) under the run's schedule, set on the optimizer.

        A function of (lr, epoch, epochs) alone, so a resumed run steps exactly as an
        uninterrupted one; a resume with more --epochs stretches the rest of the cosine.
        """
        lr = lr_at(self.cfg, epoch)
        if self.opt is not None:
            for group in self.opt.param_groups:
                group["lr"] = lr
        return lr

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    # -- checkpoints --------------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "trainer": self.name,
                "optimizer": self.opt.state_dict() if self.opt is not None else None,
                "objective": self.objective.state(), "history": self.history,
                "train_config": asdict(self.cfg), "model_config": self.model.config.as_dict(),
                "domain": {"elements": self.training_elements},
                # what evaluate must never score as held out (another split of the data)
                "train_ids": [self.data.ids[i] for i in self.data.indices("train")],
                "task": {"name": self.data.task, "classes": list(self.data.classes),
                         "channels": list(self.data.channels), "params": self.data.params},
                "prefix": self.prefix, "record": self.record()}

    def record(self) -> dict:
        """The run's record (:mod:`deq_petsc.science.run_record`): the PETSc options in force now,
        the code, the machine and every setting; what ``--resume`` restores solvers from."""
        return run_record(settings=asdict(self.cfg), prefix=self.prefix, comm=self.dp.comm)

    def resume(self, path=None) -> int:
        # rank 0 writes the checkpoint after each epoch, with no collective after it: a
        # rank that resumes at once must wait until it is there
        self.dp.barrier()
        state = load_checkpoint(path or self.checkpoint_path)
        if state["train_config"]["task"] != self.cfg.task or \
                state["model_config"] != self.model.config.as_dict():
            raise DEQCheckpointError(
                f"checkpoint {path or self.checkpoint_path} is for task "
                f"{state['train_config']['task']!r} with model {state['model_config']}, not "
                f"this run's {self.cfg.task!r} / {self.model.config.as_dict()}")
        if state.get("trainer", "adam") != self.name:
            raise DEQCheckpointError(f"checkpoint {path or self.checkpoint_path} was written "
                                     f"by the {state.get('trainer', 'adam')} trainer, not "
                                     f"{self.name}")
        self.model.load_state_dict(state["model"])
        if self.opt is not None:
            self.opt.load_state_dict(state["optimizer"])
            for group in self.opt.param_groups:      # the run's step size (a typed --lr)
                group["lr"] = self.cfg.lr
                group["weight_decay"] = self.cfg.weight_decay
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        if self.dp.is_root:       # a kill after the metrics but before the checkpoint
            self._write_metrics()  # left them an epoch ahead: back to the checkpoint's
        return self.start_epoch

    # -- training -----------------------------------------------------------------------
    def fit(self, time_budget: float | None = None) -> list[dict]:
        """Train up to ``cfg.epochs``; with ``time_budget`` (seconds of training time, the
        evaluation excluded) stop after the first epoch that ends past it."""
        X = self.data.images[self.data.indices("train")].to(model_dtype(self.model))
        y = self.objective.targets(self.data, "train")
        if len(y) == 0:
            raise ValueError("no training samples")
        m = self.objective.metric
        elapsed = self.history[-1]["elapsed"] if self.history else 0.0
        self._start_weight = self._largest_weight()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            start = time.perf_counter()
            self.deadline = None if time_budget is None else start + time_budget - elapsed
            lr = self._set_epoch_lr(epoch)
            try:
                sums = self._train_epoch(epoch, X, y)
            except DEQConvergenceError as err:
                self._raise_if_blown_up(err, epoch)
                raise
            train_time = time.perf_counter() - start
            elapsed += train_time
            val = evaluate(self.model, self.data, "val", self.cfg.eval_batch_size,
                           self.objective, self.dp)
            batches = max(sums.pop("batches"), 1)
            samples = sums.pop("samples", len(y))
            unconverged = (sums.pop("unconverged"), sums.pop("unconverged_adjoint"))
            row = {"epoch": epoch + 1, "train_loss": sums.pop("loss") / samples,
                   f"train_{m}": self.objective.metric_value(sums.pop("metric"), samples),
                   "val_loss": val["loss"],
                   f"val_{m}": val[{"acc": "accuracy"}.get(m, m)],
                   "forward_its": sums.pop("f_its") / batches,
                   "forward_f_evals": sums.pop("f_evals") / batches,
                   "backward_its": sums.pop("b_its") / batches,
                   "jacobian_penalty": sums.pop("jac") / batches,
                   "spectral_penalty": sums.pop("spectral") / batches,
                   "inexact_forward": unconverged[0], "inexact_adjoint": unconverged[1],
                   "batches": batches}
            row.update(sums)                 # trainer-specific counters
            row.update(epoch_time=train_time, elapsed=elapsed)
            if self.opt is not None:
                row["lr"] = lr
            self._check_diverged(row)
            self.history.append(row)
            lf, mf = self.objective.loss_format, self.objective.metric_format
            self.log(f"epoch {epoch + 1:3d}: loss {row['train_loss']:{lf}} {m} "
                     f"{row[f'train_{m}']:{mf}} | val loss {row['val_loss']:{lf}} {m} "
                     f"{row[f'val_{m}']:{mf}} | fwd its {row['forward_its']:.1f} bwd its "
                     f"{row['backward_its']:.1f}"
                     + (f" | at iteration limit: {unconverged[0]} forward, "
                        f"{unconverged[1]} adjoint of {batches}" if any(unconverged) else "")
                     + self._epoch_note(row) + f" | {train_time:.1f} s")
            if self.dp.is_root:
                self._write_metrics()
                state = self.state(epoch + 1)
                save_checkpoint(state, self.checkpoint_path)
                write_json(self.out / "run.json", state["record"])
                plot_curves(self.history, self.out / "curves.png",
                            title=f"{self.cfg.task} {self.objective.name} ({self.cfg.kind}, "
                            f"{self.name})", metric=m, metric_label=self.objective.metric_label,
                            loss_label=self.objective.loss_label)
            if time_budget is not None and elapsed >= time_budget:
                break
        return self.history

    #: a training loss this many times a constant guess's means the run blew up
    DIVERGED_FACTOR = 100.0

    def _check_diverged(self, row: dict) -> None:
        """Refuse to checkpoint a blown-up model (the last good checkpoint stays)."""
        loss, chance = row["train_loss"], self.objective.chance_loss
        if math.isfinite(loss) and loss <= self.DIVERGED_FACTOR * chance:
            return
        raise DEQTrainingError(
            f"training diverged: epoch {row['epoch']} ended with training loss {loss:.3g} "
            f"(a constant guess scores {chance:.3g}); {self._kept()}; lower --lr (now "
            f"{self.cfg.lr:g})")

    def _kept(self) -> str:
        """What a diverged run leaves: its last good checkpoint, if any."""
        return (f"the checkpoint of epoch {self.history[-1]['epoch']} in {self.out} is kept"
                if self.history else "no checkpoint was written")

    #: weights this many times their largest size at the start were blown up by the steps
    BLOWN_UP_FACTOR = 1e3

    def _largest_weight(self) -> float:
        return max((float(p.detach().abs().max()) for p in self.model.parameters()
                    if p.numel()), default=0.0)

    def _raise_if_blown_up(self, err: DEQConvergenceError, epoch: int) -> None:
        """A solve that fails after Adam's steps blew the weights up (``--lr 1e30``: the
        cell is Inf at its first evaluation, or the adjoint NaN) fails because of the step
        size, not the solver: say so, instead of the solver's hint."""
        if self.opt is None:
            return
        now = self._largest_weight()
        if math.isfinite(now) and now <= self.BLOWN_UP_FACTOR * max(self._start_weight, 1.0):
            return
        raise DEQTrainingError(
            f"training diverged: in epoch {epoch + 1} Adam's steps blew the weights up "
            f"(largest |weight| {self._start_weight:.3g} -> {now:.3g}), and then a solve "
            f"failed ({err.reason_name}); {self._kept()}; lower --lr (now {self.cfg.lr:g})"
        ) from err

    def _epoch_note(self, row: dict) -> str:
        return ""

    @staticmethod
    def _new_sums() -> dict:
        return dict(loss=0.0, metric=0.0, f_its=0, f_evals=0, b_its=0, unconverged=0,
                    unconverged_adjoint=0, batches=0, jac=0.0, spectral=0.0)

    def _count_solves(self, sums: dict) -> None:
        f_its, f_evals, b_its, unconv, unconv_b = solver_counts(self.model)
        sums["f_its"] += f_its
        sums["f_evals"] += f_evals
        sums["b_its"] += b_its
        sums["unconverged"] += unconv
        sums["unconverged_adjoint"] += unconv_b
        sums["batches"] += 1

    def _train_epoch(self, epoch: int, X: torch.Tensor, y: torch.Tensor) -> dict:
        """One pass of Adam over the shuffled training split; returns the epoch's sums."""
        n = len(y)
        self.model.train()
        # Everything random in an epoch comes from generators seeded by (seed, epoch):
        # a resumed run draws exactly what an uninterrupted one would.
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        probes = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch + 7919)
        sums = self._new_sums()
        bar = progress(range(0, n, self.cfg.batch_size), enabled=self.progress, steps=4,
                       desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch")
        m = self.objective.metric
        dp = self.dp
        device = model_device(self.model)
        for i in bar:
            idx = order[i:i + self.cfg.batch_size]
            mine = dp.shard(idx)
            out = self.model(X[mine].to(device))
            target = y[mine].to(device)
            loss = shard_loss(self.objective, out, target, len(idx))
            objective = loss
            if self.cfg.jac_reg > 0 and self.cfg.kind == "deq":
                penalty = self.model.equilibrium.jacobian_penalty(generator=probes) / dp.size
                objective = loss + self.cfg.jac_reg * penalty
                sums["jac"] += float(penalty.detach())
            if self.cfg.spectral_reg > 0 and self.cfg.kind == "deq":
                penalty = self.model.equilibrium.spectral_penalty(
                    self.cfg.spectral_target, steps=self.cfg.spectral_steps, generator=probes)
                objective = objective + self.cfg.spectral_reg * penalty / dp.size
                sums["spectral"] += float(penalty.detach()) / dp.size
            self.opt.zero_grad(set_to_none=True)
            objective.backward()
            dp.sum_gradients(self.model.parameters())
            self.opt.step()
            batch_loss, batch_metric = dp.sum(
                np.array([loss.item(), self.objective.metric_sum(out, target)]))
            if not math.isfinite(batch_loss):
                self._check_diverged({"epoch": epoch + 1, "train_loss": batch_loss})
            self._count_solves(sums)
            sums["loss"] += float(batch_loss) * len(idx)
            sums["metric"] += float(batch_metric)
            seen = min(i + len(idx), n)
            metric = self.objective.metric_value(sums["metric"], seen)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}",
                            **{m: f"{metric:{self.objective.metric_format}}"},
                            fwd_its=f"{sums['f_its'] / sums['batches']:.1f}")
        bar.close()
        sums["jac"] = float(dp.sum(sums["jac"]))
        sums["spectral"] = float(dp.sum(sums["spectral"]))
        return sums

    def finish(self) -> dict:
        """Test-split report, confusion matrix PNG, ``report.json``."""
        report = evaluate(self.model, self.data, "test", self.cfg.eval_batch_size,
                          self.objective, self.dp)
        report["history"] = self.history
        if not self.dp.is_root:
            return report
        if "confusion" in report:
            plot_confusion(np.array(report["confusion"]), self.data.classes,
                           self.out / "confusion.png", title=f"{self.cfg.task}: test split")
            plot_reliability(report["calibration"], self.out / "reliability.png",
                             title=f"{self.cfg.task}: test split, ECE "
                                   f"{report['calibration']['ece']:.3f}")
        else:
            plot_parity(report["true"], report["predicted"], self.out / "parity.png",
                        label=self.objective.target_name, reference=self.objective.reference,
                        title=f"{self.cfg.task}: test split, {self.objective.metric_short} "
                              f"{report[self.objective.metric]:{self.objective.metric_format}}")
        report["record"] = self.record()
        write_json(self.out / "report.json", report)
        write_json(self.out / "run.json", report["record"])
        return report

    def _write_metrics(self):
        write_json(self.out / "metrics.json", self.history)
        write_csv(self.out / "metrics.csv", self.history)

    def destroy(self):
        self.model.destroy()
