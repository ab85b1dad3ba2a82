"""Full builds of the three graph-image data sets: time, throughput, skipped inputs, disk size.

Run by hand (about 20-30 minutes on 2 cores for all three):
    .venv/bin/python benchmarks/bench_data.py [--tasks polarity,crystals,mof-pore]
        [--limit N] [--cache-dir DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from deq_petsc.science.data import load_task


def disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="polarity,crystals,mof-pore")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    results = {}
    for name in args.tasks.split(","):
        start = time.perf_counter()
        data = load_task(name, limit=args.limit, seed=args.seed, cache_dir=args.cache_dir,
                         n_jobs=args.jobs, rebuild=True)
        built = time.perf_counter() - start
        start = time.perf_counter()
        again = load_task(name, limit=args.limit, seed=args.seed, cache_dir=args.cache_dir)
        loaded = time.perf_counter() - start
        assert again.from_cache
        size = disk_size(Path(data.cache_path))
        results[name] = dict(attempted=data.attempted, built=len(data.ids),
                             skipped=len(data.skipped), build_s=built, load_s=loaded,
                             images_per_s=data.attempted / built, cache_MB=size / 2 ** 20,
                             first_skipped=data.skipped[:3],
                             balance=data.class_balance())
        print(data.summary())
        print(f"  built in {built:.0f} s ({data.attempted / built:.0f} inputs/s with "
              f"{args.jobs} processes), cache {size / 2 ** 20:.0f} MB, reload {loaded:.1f} s\n",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
