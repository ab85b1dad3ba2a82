"""The commands of ``deq-petsc`` (parsing and PETSc start-up live in :mod:`deq_petsc.cli.main`)."""

from __future__ import annotations

from pathlib import Path

import torch
from petsc4py import PETSc

from deq_petsc.core.errors import DEQInputError


def say(*lines):
    PETSc.Sys.Print("\n".join(str(x) for x in lines))


def versions() -> str:
    """The software part of the run record (:mod:`deq_petsc.science.run_record`), as one line."""
    from deq_petsc import __version__
    from deq_petsc.science.run_record import software
    s = software()
    cuda = ", ".join(s["cuda_devices"]) or "no CUDA device"
    return (f"deq_petsc {__version__}; PETSc {s['petsc']} ({s['petsc_scalar']} scalars, "
            f"{'with' if s['petsc_device_memory'] else 'no'} device memory), petsc4py "
            f"{s['petsc4py']}, torch {s['torch']} ({cuda}); malloc {s['malloc']}; kernels "
            f"{s['kernels']}")


def _load_data(task, limit, seed, cache_dir=None, jobs=None, csv=None, progress=True,
               rebuild=False, split_by=None):
    """The task's data set; under MPI rank 0 builds (or checks) the cache, then all read it."""
    from deq_petsc.science.parallel import load_task_collectively
    if limit is not None and limit <= 0:
        limit = None                       # --limit 0: the whole source
    return load_task_collectively(task, limit=limit, seed=seed, cache_dir=cache_dir,
                                  n_jobs=jobs, progress=progress, rebuild=rebuild,
                                  split_by=split_by or "random",
                                  **({"csv": csv} if csv else {}))


def _args_data(args, task=None, limit=None, seed=None, split_by=None, csv=None):
    """The data set named by a command's --task/--limit/--seed/--split-by/--csv/--cache-dir/
    --jobs (``csv``: another source than --csv, e.g. the one a checkpoint recorded)."""
    return _load_data(task or args.task, limit, seed, cache_dir=args.cache_dir, jobs=args.jobs,
                      csv=csv or args.csv, progress=not getattr(args, "no_progress", False),
                      rebuild=getattr(args, "rebuild", False),
                      split_by=split_by or getattr(args, "split_by", None))


def _solver_line(model) -> str:
    """The forward solver a DEQ model ran with ('' for the explicit model)."""
    if model.config.kind != "deq":
        return ""
    snes = model.equilibrium.solver.snes
    return f"\nforward solver: {snes.getType()} (rtol {snes.getTolerances()[0]:g})"


def _write_evaluation(args, report: dict, model) -> None:
    """``evaluate --out FILE``: the report as JSON beside what produced it: the solver
    options typed (under the model's prefix), the forward SNES's type and tolerances read
    back (program defaults included, which the options database no longer holds) and the
    run record of this command."""
    from deq_petsc.process.atomic import write_json
    from deq_petsc.science.run_record import run_record, snes_settings, solver_options

    settings = {k: v for k, v in vars(args).items()
                if v is None or isinstance(v, (str, int, float, bool))}
    record = run_record(settings=settings)
    deq = model.equilibrium if model.config.kind == "deq" else None
    document = {**report, "checkpoint": str(args.checkpoint), "split": args.split,
                "options": solver_options(record["petsc_options"],
                                          deq.solver.prefix if deq else ""),
                "forward_solver": snes_settings(deq.solver.snes) if deq else None,
                "record": record}
    if PETSc.COMM_WORLD.getRank() == 0:
        write_json(args.out_file, document)
    say(f"wrote {args.out_file}")


# -- data ---------------------------------------------------------------------------------
def run_data(args) -> int:
    from deq_petsc.science.data.graph_image import graph_from_image, render_png
    from deq_petsc.science.data.pde import FIELD_TASKS
    from deq_petsc.science.data.tasks import TASKS
    from deq_petsc.science.plots import plot_fields

    data = _args_data(args, limit=args.limit, seed=args.seed)
    say(data.summary())
    if not args.png or PETSc.COMM_WORLD.getRank() != 0:      # rank 0 writes files
        return 0
    out = Path(args.png)
    out.mkdir(parents=True, exist_ok=True)
    if args.task in FIELD_TASKS:
        k = min(args.png_count, len(data.ids), 8)          # one row of panels
        if k < args.png_count:
            say(f"  --png-count {args.png_count}: {args.task} draws {k} fields in one figure")
        path = k and plot_fields(data.fields[:k], [
            f"{data.ids[i]}: lambda {float(data.images[i, 0]):.2f}" for i in range(k)],
            out / f"{args.task}-fields.png", title=f"{args.task}: u on the grid's interior")
        if path:
            say(f"  wrote {path}")
    else:
        taken: set = set()
        for k in range(min(args.png_count, len(data.ids))):
            graph = graph_from_image(data.images[k].numpy(), data.channels)
            label = data.classes[int(data.labels[k])]
            target = f"DFT {TASKS[args.task].target_name}: {data.targets[k]:.3f}"
            path = render_png(graph, _png_path(out, args.task, data.ids[k], taken),
                              title=f"{args.task} {data.ids[k]}: {label}; {target}")
            say(f"  wrote {path}")
    return 0


def _png_path(folder: Path, task: str, record_id, taken: set) -> Path:
    """Where one record's PNG goes. An id is data (a --csv's material_id can hold '/' or
    '../'), so the name keeps only ``[A-Za-z0-9._-]`` of it, is made unique when two ids
    read alike after that, and must lead to a file inside ``folder`` (not through a link
    out of it)."""
    import re

    stem = f"{task}-{re.sub(r'[^A-Za-z0-9._-]', '_', str(record_id))}"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    path = folder / f"{name}.png"
    if path.resolve().parent != folder.resolve():
        raise DEQInputError(f"--png {folder}: {path.name} there leads outside the folder "
                            f"(a link?); remove it or choose another --png")
    return path


# -- the reference ------------------------------------------------------------------------
def run_baseline(args) -> int:
    from deq_petsc.process.atomic import write_json
    from deq_petsc.science.baseline import BaselineConfig, format_baseline, run_baseline as baseline

    if PETSc.COMM_WORLD.getSize() > 1:
        raise DEQInputError("baseline runs on one process (scikit-learn uses the cores "
                            "itself): run it without mpiexec")
    data = _args_data(args, limit=args.limit, seed=args.seed)
    say(data.summary())
    cfg = BaselineConfig(features=args.features, objective=args.objective,
                         max_iter=args.max_iter, seed=args.seed,
                         cache_dir=args.cache_dir, jobs=args.jobs,
                         progress=not args.no_progress)
    report = baseline(cfg, data, log=say)
    out = Path(args.out or f"runs/baseline-{args.task}"
               + ("-regress" if args.objective == "regress" else ""))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "baseline.json", report)
    say(f"test split ({args.task}):", format_baseline(report), f"wrote {out}/baseline.json")
    return 0


# -- training -----------------------------------------------------------------------------
def _train_config(args):
    """The run's settings from the flags (their declarations: :mod:`deq_petsc.science.config`);
    what a flag left unset is the task's and trainer's default (a PDE surrogate: 64 units, 3
    layers, float64, its field objective; TAO: float64)."""
    from deq_petsc.science.config import TrainConfig, from_args
    return from_args(TrainConfig, args, csv=_absolute(args)).for_task(
        getattr(args, "trainer", "adam"))


def _absolute(args) -> str | None:
    """--csv as an absolute path: what a checkpoint records, so that evaluate and --resume
    find the training data from any folder."""
    csv = getattr(args, "csv", None)
    return str(Path(csv).resolve()) if csv else None


def _report(report: dict, objective, stats_line: str = "") -> str:
    from deq_petsc.science.inference import capped_solves_warning
    warning = ""
    if report.get("inexact_forward"):
        warning = "\nWARNING: " + capped_solves_warning(report["inexact_forward"],
                                                        report["batches"])
    return (objective.format(report) + f"\nforward iterations per batch "
            f"{report['forward_its']:.1f}, {1e3 * report['seconds_per_sample']:.3f} ms per "
            f"sample" + stats_line + warning)


def _check_solver_options(prefix: str, snes_defaults: dict | None, adjoint_prefix: str = "",
                          adjoint_method: str = "", ksp_defaults: dict | None = None,
                          tao: bool = False) -> None:
    """Read a training run's PETSc options on throwaway solvers of its kinds (the forward
    SNES and our -deq_* options unless ``snes_defaults`` is None, the explicit model's case;
    the adjoint KSP when that is its method; the TAO trainer), so that a value PETSc
    rejects is one line before the work it would waste (the run's own solvers read them
    only at their first solve)."""
    from deq_petsc.core.options_spec import SOLVER
    from deq_petsc.core.petsc_options import check_accepted

    if snes_defaults is not None:
        SOLVER.read(prefix)                         # -deq_jvp sideways: one line too
        check_accepted("snes", prefix, snes_defaults, "the forward SNES")
        if adjoint_method == "ksp":
            check_accepted("ksp", adjoint_prefix, ksp_defaults, "the adjoint KSP")
    if tao:
        from deq_petsc.science.train.tao import TAO_DEFAULTS
        check_accepted("tao", prefix, dict(TAO_DEFAULTS), "the TAO trainer")


def _check_run_options(trainer) -> None:
    """The options again, with the trainer's own prefixes, defaults and adjoint method (and
    a resumed run's restored options), before the run folder changes."""
    deq = getattr(trainer.model, "equilibrium", None)
    solves = hasattr(deq, "solver")                  # the explicit model solves nothing
    _check_solver_options(trainer.prefix, deq.solver.defaults if solves else None,
                          deq.adjoint.prefix if solves else "",
                          deq.adjoint.method if solves else "",
                          deq.adjoint.ksp_defaults if solves else None,
                          tao=trainer.name == "tao")


def _check_typed_options(args, prefix: str = "") -> None:
    """The PETSc options typed for a training run, with the library's defaults, before the
    data is built (a whole source can take minutes): -snes_type foo, -tao_type foo are one
    line at once; :func:`_check_run_options` reads them again with the trainer's own."""
    from deq_petsc.core.adjoint import DEFAULT_KSP_OPTIONS
    from deq_petsc.core.options_spec import ADJOINT
    from deq_petsc.core.solver import DEFAULT_OPTIONS

    adjoint = prefix + "adjoint_"
    method = ADJOINT.read(adjoint, deq_method="snes" if PETSc.Options(adjoint).hasName(
        "snes_type") else "ksp")["deq_method"] if args.kind == "deq" else ""
    _check_solver_options(prefix, DEFAULT_OPTIONS if args.kind == "deq" else None, adjoint,
                          method, DEFAULT_KSP_OPTIONS, tao=args.trainer == "tao")


def _check_trainable(cfg, data) -> None:
    """Refuse, before any training, a build that cannot be trained on: a training split of
    fewer than 2 samples (the injection standardises over it), an empty validation or test
    split (every epoch validates, the run ends on the test split), or a batch of states
    that cannot fit in memory (6 state-sized tensors, x, z, f(z), F and the adjoint's u
    and g, are a lower bound of a step's)."""
    from deq_petsc.core.devices import memory_problem

    counts = {split: len(data.indices(split)) for split in ("train", "val", "test")}
    if counts["train"] < 2 or counts["val"] == 0 or counts["test"] == 0:
        raise DEQInputError(
            f"this {data.task} build is too small to train on: {counts['train']} training, "
            f"{counts['val']} validation and {counts['test']} test samples of "
            f"{len(data.ids)} (--limit {cfg.limit}); training needs 2 training samples and "
            f"one each to validate and test: raise --limit")
    if data.images.dim() == 2:
        return                       # a surrogate's state: a batch of --width numbers
    batch = min(cfg.batch_size, counts["train"])
    side = "x".join(str(n) for n in data.images.shape[-2:])
    state = batch * cfg.width * data.images[0, 0].numel() * getattr(torch, cfg.dtype).itemsize
    if problem := memory_problem(6 * state, f"--width {cfg.width}: a batch of {batch} "
                                            f"{cfg.width}x{side} {cfg.dtype} states"):
        raise DEQInputError(problem + " (lower --width or --batch-size)")


def run_train(args) -> int:
    from contextlib import ExitStack

    from deq_petsc.science.train import TaoTrainer, Trainer
    from deq_petsc.science.checkpoint import MODEL_KEYS, load_checkpoint
    from deq_petsc.core.petsc_options import inserted_defaults
    from deq_petsc.science.train.run_folder import RunFolder, resumed_config, resumed_solver_options

    out = Path(args.out or f"runs/{args.task}")
    folder = RunFolder(out, overwrite=args.overwrite, active=PETSc.COMM_WORLD.getRank() == 0)
    folder.check(resume=args.resume)          # refused before any work, nothing touched
    _check_typed_options(args)                # before the data is built
    cfg, notes = _train_config(args), []
    # Nothing of an old run is moved before the data is loaded, the trainer (its model and
    # solvers) built and its options read: folder.start() moves the old outputs aside only
    # then, and they come back if the new run fails before its first checkpoint.
    with folder, ExitStack() as run_options:  # the lock; a killed run's leftovers settled
        PETSc.COMM_WORLD.barrier()
        if args.resume:              # the checkpoint's settings, but for what the user typed
            saved = load_checkpoint(out / "checkpoint.pt", MODEL_KEYS)
            cfg, notes = resumed_config(cfg, saved["train_config"], args.explicit, str(out))
            # and its solver options, under the command line's, until the run ends
            restored, solver_note = resumed_solver_options(saved, PETSc.Options().getAll())
            run_options.enter_context(inserted_defaults("", restored))
            # a PDE task's data are the checkpoint's: its -pde_* options, none changed
            run_options.enter_context(inserted_defaults("", _resumed_pde_options(saved, out)))
        data = _args_data(args, limit=cfg.limit, seed=cfg.seed, split_by=cfg.split_by,
                          csv=cfg.csv)
        _check_trainable(cfg, data)          # before any training: nothing is touched yet
        say(versions(), data.summary())
        size = PETSc.COMM_WORLD.getSize()
        if size > 1:
            say(f"data-parallel on {size} MPI ranks ({torch.get_num_threads()} torch "
                f"thread(s) each): every batch of {cfg.batch_size} split across them, one DEQ "
                f"state Vec over PETSC_COMM_WORLD; rank 0 writes {out}")
        kind = TaoTrainer if args.trainer == "tao" else Trainer
        trainer = kind(cfg, data, out, progress=not args.no_progress, log=say)
        try:
            _check_run_options(trainer)
            folder.start()
            if args.resume:
                epoch = trainer.resume()
                say(f"resuming {out} after epoch {epoch}"
                    + (": " + "; ".join(notes) if notes else ""))
                if solver_note:
                    say(solver_note)
            trainer.fit()
            report = trainer.finish()
            plot = ("confusion.png, reliability.png" if "confusion" in report else "parity.png")
            say(f"test split ({args.task} {trainer.objective.name}, {args.kind}, "
                f"{trainer.name}):",
                _report(report, trainer.objective, _solver_line(trainer.model)),
                f"wrote {out}/checkpoint.pt, metrics.csv, curves.png, {plot}, report.json, "
                f"run.json")
        finally:
            trainer.destroy()
    return 0


def run_evaluate(args) -> int:
    from deq_petsc.science.inference import evaluate, load_model, objective_of, require_current_images
    from deq_petsc.science.parallel import DataParallel

    model, state = load_model(args.checkpoint, comm=PETSc.COMM_WORLD, device=args.device)
    try:
        require_current_images(state, args.checkpoint)
        cfg = state["train_config"]
        task = args.task or cfg["task"]
        _require_task(state, args.checkpoint, task)
        data = _evaluation_data(args, state, task)
        objective = objective_of(state, data)
        report = evaluate(model, data, args.split, args.batch_size, objective, DataParallel())
        say(f"{args.checkpoint} on the {args.split} split of {task} "
            f"({len(data.indices(args.split))} samples):",
            _report(report, objective, _solver_line(model)))
        if args.out_file:
            _write_evaluation(args, report, model)
    finally:
        model.destroy()
    return 0


def _build_of(args, cfg: dict) -> dict:
    """The data build evaluate scores: the checkpoint's own (its --limit, --seed, --split-by
    and --csv), but for what the user typed."""
    own = _own_build(cfg)
    typed = {"limit": args.limit, "seed": args.seed, "split_by": args.split_by,
             "csv": _absolute(args)}
    build = {key: own[key] if typed[key] is None else typed[key] for key in own}
    return {**build, "limit": build["limit"] or None}        # --limit 0: all of the source


def _own_build(cfg: dict) -> dict:
    """The build a checkpoint was trained on, from its train_config (older checkpoints
    have no split_by, meaning random, and no csv)."""
    return {"limit": cfg["limit"] or None, "seed": cfg["seed"],
            "split_by": cfg.get("split_by", "random"), "csv": cfg.get("csv")}


def _evaluation_data(args, state: dict, task: str):
    """The data to evaluate a checkpoint on, refused in one line when its split is empty or
    holds samples the model was trained on (another --limit, --seed, --split-by or --csv
    than training draws another split, whose test samples can be training samples)."""
    from deq_petsc.science.data.pde import FIELD_TASKS, options_of
    from deq_petsc.core.petsc_options import inserted_defaults

    cfg = state["train_config"]
    build = _build_of(args, cfg)
    if args.csv is None and cfg.get("csv"):
        _check_recorded_csv(state, args.checkpoint)
    # a PDE task's data are the checkpoint's (its -pde_* settings), but for what is typed
    with inserted_defaults("", options_of(state["task"]["params"])
                           if task in FIELD_TASKS else {}):
        if task in FIELD_TASKS:
            _check_pde_shapes(state, args.checkpoint)    # before the draws are solved
        data = _args_data(args, task=task, **build)
    n = len(data.indices(args.split))
    if n == 0:
        raise DEQInputError(f"the {args.split} split of this {task} build is empty ("
                            f"{len(data.ids)} samples in all): evaluate another --split, or "
                            f"raise --limit")
    if args.split == "train":
        return data
    trained = state.get("train_ids")
    if trained is None:                     # a checkpoint from before they were recorded
        if build == _own_build(cfg):
            return data                     # the checkpoint's own split
        own = _args_data(args, task=task, **_own_build(cfg))
        trained = [own.ids[i] for i in own.indices("train")]
    trained = set(trained)
    seen = [data.ids[i] for i in data.indices(args.split) if data.ids[i] in trained]
    if seen:
        raise DEQInputError(
            f"{len(seen)} of the {n} samples of this {args.split} split (first: {seen[0]}) "
            f"were training samples of {args.checkpoint}: another --limit, --seed, --split-by "
            f"or --csv than training draws another split; drop them to evaluate on the "
            f"checkpoint's own")
    return data


def _resumed_pde_options(saved: dict, out: Path) -> dict:
    """The ``-pde_*`` options a resumed PDE task's run made its data with (none for the
    other tasks); a typed one that would make other data is refused in one line: the
    model, its standardisation and the split belong to the checkpoint's draws."""
    from deq_petsc.science.data.pde import FIELD_TASKS, options_of
    from deq_petsc.core.petsc_options import changes_no_number
    if saved["train_config"]["task"] not in FIELD_TASKS:
        return {}
    own = {k: str(v) for k, v in options_of(saved["task"]["params"]).items()}
    for key, value in PETSc.Options().getAll().items():
        if not key.startswith("pde_") or changes_no_number(key[4:]):
            continue
        if key not in own or not _same_option_value(own[key], value):
            was = f"-{key} {own[key]}" if key in own else f"no -{key}"
            raise DEQInputError(f"--resume: {out} was trained on draws made with {was}; "
                                f"-{key} {value} would make other data: drop it, or start "
                                f"a new run")
    return own


def _same_option_value(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _check_pde_shapes(state: dict, checkpoint) -> None:
    """The draws the ``-pde_*`` options in force give must fit the checkpoint's model: as
    many parameters in, as many grid values out (checked before any draw is solved)."""
    from deq_petsc.science.data.pde import BratuSettings
    settings = BratuSettings.from_options()
    want_in, want_out = len(state["task"]["channels"]), len(state["objective"]["mean"])
    if (settings.n_params, settings.n_outputs) != (want_in, want_out):
        raise DEQInputError(
            f"{checkpoint} maps {want_in} parameters to {want_out} grid values; the -pde_* "
            f"options typed give {settings.n_params} and {settings.n_outputs}: drop "
            f"-pde_grid / -pde_modes to use the checkpoint's own")


def _check_recorded_csv(state: dict, checkpoint) -> None:
    """The CSV a model was trained on (train --csv) must still be there, unchanged."""
    from deq_petsc.science.data.cache import fingerprint

    csv = Path(state["train_config"]["csv"])
    if not csv.is_file():
        raise DEQInputError(f"{checkpoint} was trained on {csv}, which is gone: give --csv "
                            f"with that data")
    if fingerprint(csv) not in state["task"]["params"].get("sources", []):
        raise DEQInputError(f"{csv} changed since {checkpoint} was trained on it (its content "
                            f"digest differs): give --csv with the training data")


def _shipped_line(task: str) -> str:
    """What the shipped model of ``task`` was trained on and scored, from its report."""
    import json

    from deq_petsc.science.shipped import HERE
    report = json.loads((HERE / f"{task}.report.json").read_text())
    score = (f"test accuracy {report['accuracy']:.3f} on {report['n']}" if "accuracy" in report
             else f"test MAE {report['mae']:.3f} on {report['n']}, {report['target']}")
    return f"{score}; its run record: {HERE / (task + '.run.json')}"


def run_predict(args) -> int:
    from deq_petsc.science.data import cif_image, smiles_image
    from deq_petsc.science.data.graph_image import read_cif
    from deq_petsc.science.data.tasks import TASKS, stored_image
    from deq_petsc.science.inference import load_model, model_dtype, objective_of, require_current_images
    from deq_petsc.science.models.surrogate import FAMILY as SURROGATE_FAMILY

    if args.checkpoint is None:                    # --task: the model that ships for it
        from deq_petsc.science.shipped import shipped_checkpoint
        args.checkpoint = str(shipped_checkpoint(args.task))
        say(f"the {args.task} model that ships with deq_petsc ({_shipped_line(args.task)})")
    model, state = load_model(args.checkpoint)
    task = state["task"]
    try:
        if state["model_config"].get("family") == SURROGATE_FAMILY:
            raise DEQInputError(f"{args.checkpoint} is a {task['name']} surrogate (PDE "
                                f"parameters -> solution field): predict takes molecules and "
                                f"crystals; score it with evaluate --checkpoint")
        require_current_images(state, args.checkpoint)
        molecular = TASKS[task["name"]].kind == "molecule"
        if args.input is not None:
            return _predict_many(args, model, state, molecular)
        if args.smiles is not None and not molecular:
            raise DEQInputError(f"this model classifies {task['name']}: give --cif, not --smiles")
        if args.cif is not None and molecular:
            raise DEQInputError("this model classifies molecules: give --smiles, not --cif")
        size = model.config.image_size             # the images the model was trained on
        if args.smiles is not None:
            graph = smiles_image(args.smiles, size)
            what = f"SMILES {args.smiles}"
        else:
            graph = cif_image(read_cif(args.cif), size)
            what = f"{Path(args.cif).name} ({graph.info['formula']})"
        image = torch.from_numpy(stored_image(graph))      # as a batch or training sees it
        with torch.no_grad():
            out = model(image[None].to(model_dtype(model)))
        say(f"{what}: {objective_of(state).answer(out.float())}")
        stats = model.last_stats                   # None for the explicit twin
        forward = stats.forward if stats is not None else None
        if forward is not None and not forward.converged:
            say(f"WARNING: the forward solve stopped at the iteration limit: "
                f"{forward.summary()}; this answer is not the model's equilibrium (raise "
                f"-snes_max_it or loosen -snes_rtol)")
        for line in _domain_warnings(graph, state):
            say(line)
    finally:
        model.destroy()
    return 0


def _domain_warnings(graph, state) -> list[str]:
    """WARNING lines for one input unlike the training samples: elements none had, and a
    molecule charged, radical or in several pieces where QM9's are none of these."""
    from deq_petsc.science.batch_predict import QM9_DOMAIN, unseen_elements

    lines = []
    unseen = unseen_elements(graph.image, state.get("domain", {}).get("elements"))
    if unseen:
        lines.append(f"WARNING: {unseen}: no training sample had this element; the answer "
                     f"is outside the model's domain")
    if outside := graph.info.get("outside_domain"):
        lines.append(f"WARNING: {outside}: {QM9_DOMAIN}; the answer is outside the model's "
                     f"domain")
    return lines


def _predict_many(args, model, state, molecular: bool) -> int:
    from deq_petsc.process.atomic import write_csv
    from deq_petsc.science.batch_predict import predict_inputs, read_inputs, summarize
    from deq_petsc.science.data.graph_image import MOLECULE_SIZE, PERIODIC_SIZE
    from deq_petsc.science.inference import objective_of

    items = read_inputs(args.input, molecular)
    objective = objective_of(state)
    rows = predict_inputs(model, objective, items, molecular,
                          MOLECULE_SIZE if molecular else PERIODIC_SIZE, args.batch_size,
                          args.jobs, progress=not args.no_progress,
                          domain=state.get("domain", {}).get("elements"))
    if PETSc.COMM_WORLD.getRank() == 0:
        write_csv(args.output, rows)
    say(summarize(rows, objective), f"wrote {args.output}")
    return 0 if any(not r["error"] for r in rows) else 1


# -- the main job ---------------------------------------------------------------------------
def run_demo(args) -> int:
    from deq_petsc.science.config import from_args
    from deq_petsc.studies.demo import DemoConfig, format_summary, run_demo as demo

    _refuse_earlier_demo(Path(args.out), args.overwrite)
    cfg = from_args(DemoConfig, args)
    if args.quick:
        cfg.limit, cfg.epochs, cfg.width, cfg.inference_max_it = 100, 1, 4, 100
        cfg.time_budget = None
    if args.seeds:
        return _demo_seeds(cfg, args.seeds)
    data = _load_data(cfg.task, cfg.limit, cfg.seed, cache_dir=cfg.cache_dir,
                      progress=cfg.progress)
    say(versions(), data.summary(), _demo_plan(cfg))
    summary = demo(cfg, data, log=say)
    say(format_summary(summary),
        f"wrote {cfg.out}/summary.json, comparison.png, residuals.png and a run folder per set")
    return 0


def _demo_plan(cfg) -> str:
    return (f"training the {cfg.task} DEQ ({cfg.cell} cell, width {cfg.width}) once per solver "
            f"set, {cfg.epochs} epochs, forward and adjoint to rtol {cfg.train_rtol:g} with at "
            f"most {cfg.train_max_it} iterations: {', '.join(cfg.solvers)}")


def _demo_seeds(cfg, text: str) -> int:
    """demo --seeds: the demo once per seed, then every number's mean and spread."""
    from deq_petsc.studies.demo_seeds import format_seeds, parse_seeds, run_demo_seeds

    try:
        seeds = parse_seeds(text)
    except ValueError as err:
        raise DEQInputError(str(err)) from None

    def load(seed):
        data = _load_data(cfg.task, cfg.limit, seed, cache_dir=cfg.cache_dir,
                          progress=cfg.progress)
        say(data.summary())
        return data

    say(versions(), _demo_plan(cfg) + f"; seeds {', '.join(map(str, seeds))}")
    agg = run_demo_seeds(cfg, seeds, load, log=say)
    say("", format_seeds(agg), f"wrote {cfg.out}/seeds.json and a demo folder per seed")
    return 0


def _refuse_earlier_demo(out: Path, overwrite: bool) -> None:
    """A second demo into one --out would replace the first's summary and checkpoints:
    refused before any work unless --overwrite."""
    from deq_petsc.science.train.run_folder import RunFolderRefused

    found = [p.relative_to(out) for p in [out / "summary.json", out / "seeds.json",
                                          *out.glob("*/checkpoint.pt"),
                                          *out.glob("seed-*/summary.json")]
             if p.is_file()] if out.is_dir() else []
    if found and not overwrite:
        raise RunFolderRefused(
            f"{out} holds an earlier demo ({', '.join(map(str, sorted(found)[:3]))}"
            f"{', ...' if len(found) > 3 else ''}): pass --overwrite to replace it, or choose "
            f"another --out")


def _cell_problem(args, comm):
    """The solve/compare demo problem: z = tanh(conv3x3(z) + x), this rank's share of the batch."""
    from deq_petsc.science.models import ConvTanhCell
    from deq_petsc.core.problem import FixedPointProblem

    rank, size = comm.getRank(), comm.getSize()
    _require_one_per_rank(args.batch, size, f"--batch {args.batch}")
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cell = ConvTanhCell(args.channels, args.size, contraction=args.contraction,
                        seed=args.seed, dtype=dtype).to(device)
    x_all = torch.randn(args.batch, args.channels, args.size, args.size, dtype=dtype,
                        generator=torch.Generator().manual_seed(args.seed + 1))
    # Under mpiexec each rank owns a contiguous share of the batch; the state is
    # one Vec over COMM_WORLD, so norms (and Anderson's mixing) are global.
    x = torch.tensor_split(x_all, size)[rank].to(device)
    description = (f"DEQ cell: z = tanh(conv3x3(z) + x), Lipschitz {args.contraction}; state "
                   f"{args.batch}x{args.channels}x{args.size}x{args.size} = {x_all.numel()} "
                   f"unknowns on {size} rank(s), {args.dtype} on {device}")
    return cell, x, FixedPointProblem(cell, x), description


def run_solve(args) -> int:
    from deq_petsc.core.petsc_options import inserted_defaults
    from deq_petsc.core.solver import DEQSolver

    comm = PETSc.COMM_WORLD
    cell, x, problem, description = _cell_problem(args, comm)
    PETSc.Sys.Print(f"{versions()}\n{description}", comm=comm)
    # The demo shows the solver at work: monitors on unless the user chose otherwise
    # (SNES applies -snes_monitor_cancel before adding monitors, so honour it here).
    shown = {} if PETSc.Options().hasName("snes_monitor_cancel") else {"snes_monitor": True}
    with inserted_defaults("", {**shown, "snes_converged_reason": True}):
        solver = DEQSolver(comm=comm)
        try:
            z, stats = solver.solve(problem)
        finally:
            solver.destroy()
    with torch.no_grad():
        local = float((z - cell(z, x)).double().pow(2).sum())
    check = comm.tompi4py().allreduce(local) ** 0.5
    PETSc.Sys.Print(
        "Solve statistics\n"
        f"  method               {stats.snes_type}\n"
        f"  converged reason     {stats.reason_name}\n"
        f"  iterations           {stats.iterations}\n"
        f"  f evaluations        {stats.function_evals}\n"
        f"  JVPs / VJPs          {stats.jvp_count} / {stats.vjp_count}\n"
        f"  linear iterations    {stats.linear_iterations}\n"
        f"  ||F(z0)|| -> ||F(z*)|| {stats.initial_residual:.3e} -> {stats.final_residual:.3e} "
        f"(relative {stats.relative_residual:.2e})\n"
        f"  check ||z* - f(z*)|| {check:.3e}\n"
        f"  wall time            {stats.time:.4f} s ({1e3 * stats.time_per_function_eval:.3f} "
        f"ms per f evaluation)", comm=comm)
    return 0




def _require_one_per_rank(n: int, size: int, what: str, remedy: str = "raise it") -> None:
    """A batch split over ``size`` ranks leaves none empty: a rank without a sample fails
    in its backward (no graph) or solves nothing, and the others wait on it."""
    if n < size:
        raise DEQInputError(f"{what} is smaller than the {size} MPI ranks: every rank "
                            f"needs a sample ({remedy}, or run fewer ranks)")


def _require_task(state: dict, checkpoint, task: str) -> None:
    """A checkpoint's model reads the images of the task it was trained on only."""
    trained = state["train_config"]["task"]
    if task != trained:
        raise DEQInputError(f"{checkpoint} was trained on {trained!r}, not {task!r}: give "
                            f"--task {trained}")


def _task_problem(args, comm):
    """A batch of a task's test images through a model's injection, and the model's cell."""
    from deq_petsc.science.checkpoint import MODEL_KEYS, load_checkpoint
    from deq_petsc.science.config import TrainConfig
    from deq_petsc.science.inference import build_model, load_model, model_dtype
    from deq_petsc.science.parallel import DataParallel

    device = torch.device(args.device)
    _require_one_per_rank(args.batch, comm.getSize(), f"--batch {args.batch}")
    if args.checkpoint:                  # refused before the data is built
        _require_task(load_checkpoint(args.checkpoint, MODEL_KEYS), args.checkpoint, args.task)
    data = _load_data(args.task, args.limit, args.seed, cache_dir=args.cache_dir)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, device=device)
        what = f"the trained model {args.checkpoint}"
    else:
        model = build_model(TrainConfig(task=args.task, seed=args.seed, width=args.width,
                                        device=str(device)), data, len(data.classes))
        what = f"an untrained model (seed {args.seed}, width {args.width})"
    images = data.images[data.indices("test")][:args.batch]
    _require_one_per_rank(len(images), comm.getSize(), f"the test split of this {args.task} "
                          f"build ({len(images)} images; --limit {args.limit})", "raise --limit")
    mine = DataParallel(comm).shard(images).to(device=device, dtype=model_dtype(model))
    with torch.no_grad():
        x = model.inject(mine)
    cell = model.equilibrium.cell
    problem = model.equilibrium.fixed_point_problem(x)
    model.destroy()
    description = (f"{args.task}: {len(images)} test images through {what}; state "
                   f"{tuple(problem.z0.shape)} per rank, {x.dtype}")
    return cell, x, problem, description


def run_compare(args) -> int:
    from deq_petsc.process.atomic import write_csv
    from deq_petsc.studies.compare import (compare_solves, default_option_sets, markdown_table, plot_residuals,
                          read_option_sets)

    from .main import option_set_lines       # checked there before PETSc started

    comm = PETSc.COMM_WORLD
    lines = option_set_lines(args)
    sets = read_option_sets(lines) if lines else default_option_sets()
    if args.train:
        if not args.task:
            raise DEQInputError("compare --train needs --task")
        return _compare_training(args, sets)
    _, _, problem, description = (_task_problem(args, comm) if args.task
                                  else _cell_problem(args, comm))
    say(versions(), description,
        f"{len(sets)} option sets, each to rtol {args.rtol:g} (max {args.max_it} its) from "
        f"z = 0: " + ", ".join(s.name for s in sets))
    with torch.no_grad():          # torch's one-off warm-up, outside every timing
        problem.linearize(problem.z0).jvp(problem(problem.z0))
    def progress(r):
        say(f"  {r.name}: {r.reason} after {r.iterations} its, {r.time:.3f} s")

    runs = compare_solves(problem, sets, comm=comm,
                          defaults={"snes_rtol": args.rtol, "snes_max_it": args.max_it},
                          repeat=args.repeat, progress=progress)
    table = markdown_table(runs)
    say("", table)
    if comm.getRank() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(f"{description}\n\n{table}\n")
        write_csv(out / "results.csv", [r.row() for r in runs])
        plot_residuals(runs, out / "residuals.png", title=description.split(";")[0])
        say(f"wrote {out}/table.md, results.csv, residuals.png")
    return 0 if any(r.converged for r in runs) else 1


def _compare_training(args, sets) -> int:
    """compare --train: the library's compare_training, then the table, CSV and plot."""
    from deq_petsc.process.atomic import write_csv
    from deq_petsc.studies.compare import compare_training, markdown_table
    from deq_petsc.science.plots import plot_comparison

    data = _load_data(args.task, args.limit, args.seed, cache_dir=args.cache_dir,
                      progress=not args.no_progress)
    cfg = _train_config(args)
    cfg.dtype = "float64" if args.trainer == "tao" else "float32"
    _check_trainable(cfg, data)
    out = Path(args.out)
    say(versions(), data.summary(), f"training once per option set ({args.trainer}, "
        f"{args.epochs} epochs): " + ", ".join(s.name for s in sets))
    result = compare_training(cfg, data, sets, out, trainer=args.trainer,
                              progress=not args.no_progress, log=say)
    columns = [(c, c) for c in dict.fromkeys(k for r in result.rows for k in r)
               if c not in ("options", "error", "unused_options")]
    table = markdown_table(result.rows, columns)
    say("", table)
    if PETSc.COMM_WORLD.getRank() == 0:
        (out / "table.md").write_text(table + "\n")
        write_csv(out / "results.csv", result.rows)
        if result.histories:
            plot_comparison(result.histories, out / "training.png", metric=result.metric,
                            metric_label=result.metric_label,
                            title=f"{args.task}: training with each option set")
        say(f"wrote {out}/table.md, results.csv, training.png and a run folder per set")
    return 0 if result.histories else 1


COMMANDS = {"baseline": run_baseline, "compare": run_compare, "demo": run_demo, "train": run_train, "evaluate": run_evaluate,
            "predict": run_predict, "data": run_data, "solve": run_solve}
