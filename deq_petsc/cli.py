"""``deq-petsc``: the command-line tool.

Our own flags are GNU-style (``--batch 8``); every single-dash argument
(``-snes_type anderson``, ``-log_view``, ``-options_file FILE``, ``-help``) is
handed to PETSc's options database untouched. PETSc is initialised here,
before anything imports ``petsc4py.PETSc``, which is why this module imports
the rest of the package lazily.
"""

from __future__ import annotations

import argparse
import sys


def _add_demo(sub):
    p = sub.add_parser(
        "demo", allow_abbrev=False, add_help=False,
        help="solve a small convolutional DEQ cell and print the solver's statistics",
        description="Solve z = tanh(conv(z) + x) for a random batch with a PETSc SNES. "
                    "Solver, tolerances and monitors come from PETSc options; "
                    "-snes_monitor and -snes_converged_reason are on unless you set them.")
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--channels", type=int, default=8, help="channels (default: %(default)s)")
    p.add_argument("--size", type=int, default=16, help="image side (default: %(default)s)")
    p.add_argument("--contraction", type=float, default=0.95,
                   help="Lipschitz constant of the cell, < 1 (default: %(default)s)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="model dtype (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device of the cell (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(run=_run_demo, parser=p)


def _add_data(sub):
    p = sub.add_parser(
        "data", allow_abbrev=False, add_help=False,
        help="build (or load from the cache) a task's graph images and report them",
        description="Build the graph-image data set of a science task from its DFT source, "
                    "print its class balance per split and what was skipped, and optionally "
                    "write a few images as PNGs.")
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("--task", required=True, choices=["polarity", "mof-pore", "crystals"])
    p.add_argument("--limit", type=int, default=None,
                   help="random subset size (default: the whole source)")
    p.add_argument("--seed", type=int, default=0, help="subset and split seed (default: 0)")
    p.add_argument("--csv", help="crystals only: a CSV with material_id, band_gap, cif")
    p.add_argument("--cache-dir", help="default: $DEQ_PETSC_CACHE or ~/.cache/deq_petsc")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: 2)")
    p.add_argument("--rebuild", action="store_true", help="ignore an existing cache entry")
    p.add_argument("--png", metavar="DIR", help="write the first few images here as PNGs")
    p.add_argument("--png-count", type=int, default=3)
    p.set_defaults(run=_run_data, parser=p)


def _run_data(args) -> int:
    from pathlib import Path

    from petsc4py import PETSc

    from .data import load_task
    from .data.graph_image import GraphImage, render_png

    options = {"csv": args.csv} if args.csv else {}
    data = load_task(args.task, limit=args.limit, seed=args.seed, cache_dir=args.cache_dir,
                     n_jobs=args.jobs, rebuild=args.rebuild, **options)
    PETSc.Sys.Print(data.summary())
    if args.png:
        out = Path(args.png)
        out.mkdir(parents=True, exist_ok=True)
        for k in range(min(args.png_count, len(data.ids))):
            image = data.images[k].numpy()
            used = int((image.any(axis=(0, 1)) | image.any(axis=(0, 2))).sum())
            graph = GraphImage(image, [str(i) for i in range(used)], data.channels)
            label = data.classes[int(data.labels[k])]
            path = render_png(graph, out / f"{args.task}-{data.ids[k]}.png",
                              title=f"{args.task} {data.ids[k]}: {label} "
                                    f"({data.targets[k]:.3f})")
            PETSc.Sys.Print(f"  wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deq-petsc", allow_abbrev=False, add_help=False,
        description="Deep Equilibrium Models solved by PETSc. Single-dash options go to "
                    "PETSc (-snes_type, -snes_monitor, -log_view, -help, ...).")
    parser.add_argument("--help", action="help", help="show this help message and exit")
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_data(sub)
    return parser


def split_petsc_args(parser: argparse.ArgumentParser, argv: list[str]):
    """Our arguments vs. PETSc's: whatever argparse does not know goes to PETSc."""
    args, rest = parser.parse_known_args(argv)
    stray = [a for i, a in enumerate(rest)
             if not a.startswith("-") and (i == 0 or not rest[i - 1].startswith("-"))]
    if stray:
        parser.error(f"unrecognised arguments: {' '.join(stray)} (PETSc options take a single "
                     f"dash, e.g. -snes_type anderson)")
    bad = [a for a in rest if a.startswith("--")]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)}")
    return args, rest


def _versions() -> str:
    import petsc4py
    import torch
    from petsc4py import PETSc

    from . import __version__
    v = ".".join(map(str, PETSc.Sys.getVersion()))
    return (f"deq_petsc {__version__}; PETSc {v} ({PETSc.ScalarType.__name__} scalars), "
            f"petsc4py {petsc4py.__version__}, torch {torch.__version__}")


def _run_demo(args) -> int:
    import torch
    from petsc4py import PETSc

    from .models import ConvTanhCell
    from .petsc_options import inserted_defaults
    from .problem import FixedPointProblem
    from .solver import DEQSolver

    comm = PETSc.COMM_WORLD
    rank, size = comm.getRank(), comm.getSize()
    if args.batch < size:
        raise SystemExit(f"deq-petsc demo: --batch {args.batch} is smaller than the "
                         f"{size} MPI ranks")
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
    problem = FixedPointProblem(cell, x)

    unknowns = x_all.numel()
    PETSc.Sys.Print(f"{_versions()}\nDEQ cell: z = tanh(conv3x3(z) + x), Lipschitz "
                    f"{args.contraction}; state {args.batch}x{args.channels}x{args.size}x"
                    f"{args.size} = {unknowns} unknowns on {size} rank(s), {args.dtype} on "
                    f"{device}", comm=comm)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, petsc_args = split_petsc_args(parser, argv)

    from . import init
    init([parser.prog] + petsc_args)
    from petsc4py import PETSc

    from .errors import DEQError

    if "-help" in petsc_args and PETSc.COMM_WORLD.getRank() == 0:
        getattr(args, "parser", parser).print_help()
    if args.version:
        PETSc.Sys.Print(_versions())
        return 0
    if args.command is None:
        if "-help" not in petsc_args:
            parser.print_help()
        return 0 if "-help" in petsc_args else 2
    try:
        return args.run(args)
    except DEQError as err:
        PETSc.Sys.syncPrint(f"deq-petsc: error: {err}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
