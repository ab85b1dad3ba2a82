"""What every deq_petsc process gets: the tuned allocator, and progress fit for a log."""

import io
import subprocess
import sys

from deq_petsc.process import allocator
from deq_petsc.process.progress import LineProgress, progress

from helpers import run_cli


def test_importing_deq_petsc_keeps_large_temporaries_off_mmap():
    # read back from glibc: a 40 MB block comes from the heap, not a fresh mapping
    assert allocator.status().startswith("tuned")
    assert allocator.large_blocks_are_mapped() is False


def test_the_allocator_can_be_left_alone():
    code = ("import deq_petsc, deq_petsc.process.allocator as a; "
            "print(a.status()); print(a.large_blocks_are_mapped())")
    for env in ({"DEQ_PETSC_MALLOC": "default"},
                {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**_env(), **env}, timeout=120)
        assert r.returncode == 0, r.stderr
        status, mapped = r.stdout.strip().splitlines()
        assert status.startswith("glibc defaults or the user's") and mapped == "True"


def _env():
    import os
    return {k: v for k, v in os.environ.items()
            if k not in ("DEQ_PETSC_MALLOC", "GLIBC_TUNABLES")}


def test_the_cli_process_reports_the_tuned_allocator():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert "malloc tuned: mmap threshold 256 MB, trim threshold 1024 MB" in r.stdout


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal():
    log = io.StringIO()                       # not a tty, as a redirected stderr
    bar = progress(range(1000), desc="epoch 1/4", unit="batch", stream=log, steps=4)
    assert isinstance(bar, LineProgress)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == \
        ["25%", "50%", "75%", "100%"]
    assert lines[1].startswith("epoch 1/4:  50% (500/1000 batch,")
    assert lines[-1].endswith("loss=0.001")


def test_progress_can_be_switched_off_and_counts_updates():
    log = io.StringIO()
    quiet = progress(total=10, desc="x", stream=log, enabled=False)
    quiet.update(10)
    assert log.getvalue() == ""
    bar = progress(total=3, desc="images", unit="img", stream=log, steps=3)
    for _ in range(3):
        bar.update()
    bar.close()
    assert len(log.getvalue().splitlines()) == 3
    # fewer items than steps, or one update across several tenths: one line per update
    small = io.StringIO()
    bar = progress(total=3, desc="few", stream=small, steps=10)
    for _ in range(3):
        bar.update()
    bar = progress(total=100, desc="jump", stream=small, steps=10)
    bar.update(35)
    bar.update(65)
    assert [line.split("(")[0].strip() for line in small.getvalue().splitlines()] == \
        ["few:  33%", "few:  67%", "few: 100%", "jump:  35%", "jump: 100%"]


def test_petsc_blas_runs_on_one_thread():
    import os

    import pytest
    if "OPENBLAS_NUM_THREADS" in os.environ:
        pytest.skip("the user's OPENBLAS_NUM_THREADS is respected")
    import deq_petsc.core.interop  # noqa: F401  (PETSc loaded, its BLAS set)
    from deq_petsc.process import blas_threads
    libs = [p for p in blas_threads.loaded_openblas() if "scipy_openblas" not in p]
    assert libs, "PETSc's OpenBLAS should be loaded"
    counts = {p: blas_threads.threads(p) for p in libs}
    assert all(n in (1, None) for n in counts.values()) and 1 in counts.values(), counts


def test_atomic_files_get_the_users_umask(tmp_path):
    import os

    from deq_petsc.process.atomic import write_json
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "report.json", {"a": 1})
        assert os.stat(path).st_mode & 0o777 == 0o644
        os.umask(0o077)
        path = write_json(tmp_path / "private.json", {"a": 1})
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
