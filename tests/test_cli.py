"""The demo command, driven by PETSc options, in a subprocess as a user runs it."""

import re

import pytest

from helpers import run_cli, double_scalars

SMALL = ["--batch", "2", "--channels", "4", "--size", "8"]


@double_scalars
def test_demo_monitors_and_reports():
    r = run_cli("solve", *SMALL, "-snes_type", "anderson", "-snes_anderson_m", "5")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    norms = [float(m) for m in re.findall(r"SNES Function norm ([0-9.eE+-]+)", out)]
    assert len(norms) >= 3 and norms[-1] < 1e-8 * norms[0]
    assert "Nonlinear solve converged due to CONVERGED_FNORM" in out
    assert re.search(r"method\s+anderson", out)
    check = float(re.search(r"check \|\|z\* - f\(z\*\)\|\| ([0-9.eE+-]+)", out).group(1))
    assert check < 1e-7 * norms[0]


def test_picard_through_options_and_log_view():
    r = run_cli("solve", *SMALL, "-snes_type", "nrichardson", "-snes_linesearch_type", "basic",
                "-snes_max_it", "1000", "-snes_monitor_cancel", "-log_view")
    assert r.returncode == 0, r.stderr
    assert "SNES Function norm" not in r.stdout
    assert re.search(r"method\s+nrichardson", r.stdout)
    assert "Performance Summary" in r.stdout
    # our own events appear next to PETSc's
    assert re.search(r"^DEQFunction\s+\d+", r.stdout, re.M)
    assert re.search(r"^SNESSolve\s+1 ", r.stdout, re.M)


def test_newton_krylov_uses_exact_jacobian_products():
    r = run_cli("solve", *SMALL, "-snes_type", "newtonls", "-ksp_type", "gmres",
                "-ksp_converged_reason")
    assert r.returncode == 0, r.stderr
    jvps = int(re.search(r"JVPs / VJPs\s+(\d+) / 0", r.stdout).group(1))
    assert jvps > 0
    assert "Linear solve converged" in r.stdout


def test_help_lists_our_options_and_petscs():
    r = run_cli("solve", *SMALL, "-help")
    assert r.returncode == 0, r.stderr
    for name in ("-deq_check_finite", "-deq_jvp", "-deq_stats_view", "-snes_type",
                 "-snes_anderson_m", "--batch"):
        assert name in r.stdout, name


def test_divergence_is_a_clear_error_and_exit_code():
    r = run_cli("solve", *SMALL, "-snes_type", "nrichardson", "-snes_linesearch_type", "basic",
                "-snes_max_it", "3")
    assert r.returncode == 1
    assert "DIVERGED_MAX_IT" in r.stdout + r.stderr
    assert "did not converge" in r.stdout + r.stderr


def test_option_typo_is_reported_by_petsc():
    r = run_cli("solve", *SMALL, "-snes_typo", "ngmres")
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert re.search(r"Option left: name:-snes_typo value: ngmres", text), text[-2000:]


@pytest.mark.parametrize("bad", [["stray"], ["--no-such-flag"]])
def test_unknown_arguments_are_rejected(bad):
    r = run_cli("solve", *bad)
    assert r.returncode == 2
    assert "unrecognised arguments" in r.stderr


def test_a_missing_cuda_device_is_a_clear_error_before_any_work():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for command in (["solve"], ["train", "--task", "polarity", "--limit", "10"], ["demo"]):
        r = run_cli(*command, "--device", "cuda")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "--device cuda: torch sees no CUDA device on this machine" in r.stdout + r.stderr
        assert "graph images" not in r.stderr            # failed before building any data


@pytest.mark.parametrize("options, message", [
    (["-snes_type", "foo"], "the options of the forward SNES (no prefix) were rejected by PETSc: "
                            "Unable to find requested SNES type foo"),
    (["-snes_rtol", "abc"], "rejected by PETSc: Input string abc has no numeric value"),
    (["-snes_anderson_m", "-3"], "-snes_anderson_m -3: must be at least 1"),
    (["-snes_type", "ngmres", "-snes_ngmres_m", "x"], "-snes_ngmres_m x: not an integer"),
    (["-snes_max_it", "0"], "-snes_max_it 0: must be at least 1"),
])
def test_options_petsc_rejects_are_one_line(options, message):
    r = run_cli("solve", *SMALL, *options)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in (r.stdout + r.stderr).splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("deq-petsc solve: error: ") \
        and message in errors[0], r.stdout + r.stderr


@pytest.mark.parametrize("command, args, message", [
    ("train", ["--task", "polarity", "--limit", "-5"], "--limit -5: must be 0"),
    ("train", ["--task", "polarity", "--epochs", "0"], "--epochs 0: must be at least 1"),
    ("train", ["--task", "polarity", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ("train", ["--task", "polarity", "--width", "0"], "--width 0: must be a positive multiple"),
    ("train", ["--task", "polarity", "--width", "6"], "--width 6: must be a positive multiple"),
    ("train", ["--task", "polarity", "--lr", "-1"], "--lr -1.0: must be a positive number"),
    ("train", ["--task", "polarity", "--lr", "nan"], "--lr nan: must be a positive number"),
    ("train", ["--task", "polarity", "--seed", "-1"], "--seed -1: must be a non-negative"),
    ("train", ["--task", "polarity", "--weight-decay", "-0.5"],
     "--weight-decay -0.5: must be non-negative"),
    ("train", ["--task", "polarity", "--lr-schedule", "linear"],
     "argument --lr-schedule: invalid choice: 'linear'"),
    ("demo", ["--rtol", "2"], "--rtol 2.0: must be in (0, 1)"),
    ("demo", ["--target-accuracy", "1.5"], "--target-accuracy 1.5: must be in [0, 1]"),
    ("solve", ["--contraction", "1.2"], "--contraction 1.2: must be in (0, 1)"),
])
def test_arguments_are_checked_before_any_work(command, args, message):
    r = run_cli(command, *args, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"deq-petsc {command}: error: {message}" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_argument_errors_come_before_torch_and_petsc_are_imported():
    """A typo in a flag is answered in a fraction of a second (importing torch: ~2 s)."""
    import subprocess
    import sys
    code = ("import sys; from deq_petsc.cli.main import main\n"
            "try: main(['train', '--task', 'polarity', '--epochs', '0'])\n"
            "except SystemExit as e: assert e.code == 2\n"
            "heavy = sorted(m for m in ('torch', 'petsc4py.PETSc', 'rdkit') if m in sys.modules)\n"
            "print('imported:', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "imported: []" in r.stdout, r.stdout + r.stderr


def test_out_naming_a_file_is_refused(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    r = run_cli("train", "--task", "polarity", "--out", target, timeout=60)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr
    assert target.read_text() == "not a folder"


def test_ctrl_c_and_kill_are_one_line(tmp_path):
    """SIGINT and SIGTERM (kill, timeout, a batch scheduler) end a run alike: one line and
    the shell's status for the signal, not PETSc's "Caught signal ... crash" banner. The
    two runs share the wait."""
    import signal
    import subprocess
    import time

    from helpers import cli_path
    endless = [cli_path(), "solve", "--batch", "64", "--channels", "16", "--size", "32",
               "--contraction", "0.999", "-snes_type", "nrichardson", "-snes_linesearch_type",
               "basic", "-snes_max_it", "100000", "-snes_rtol", "1e-300", "-snes_atol", "0",
               "-snes_monitor_cancel"]
    procs = {sig: subprocess.Popen(endless, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for sig in (signal.SIGINT, signal.SIGTERM)}
    time.sleep(6)                            # inside the solve by now
    for sig, proc in procs.items():
        proc.send_signal(sig)
    for sig, (status, last) in {signal.SIGINT: (130, "deq-petsc solve: interrupted"),
                                signal.SIGTERM: (143, "deq-petsc solve: interrupted by "
                                                      "SIGTERM")}.items():
        out, err = procs[sig].communicate(timeout=60)
        assert procs[sig].returncode == status, out + err
        assert "Traceback" not in err and "Caught signal" not in out + err
        assert err.strip().splitlines()[-1] == last


def _children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``, from /proc."""
    from pathlib import Path
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue                                      # gone meanwhile
        if fields.get("PPid", "").strip() == str(pid) and not fields["State"].startswith("Z"):
            found.add(int(status.parent.name))
    return found


def _alive(pids) -> set[int]:
    from pathlib import Path
    alive = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "status").read_text().split("State:\t")[1]
        except (OSError, IndexError):
            continue
        if not state.startswith("Z"):
            alive.add(pid)
    return alive


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux's prctl")
def test_image_workers_die_with_their_parent():
    """kill -9 of a data build tells its forked workers nothing: they must not wait on its
    queue for ever (PR_SET_PDEATHSIG)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import time\nfrom deq_petsc.science.data.workers import map_in_workers\n"
              "map_in_workers(time.sleep, [(60,)] * 64, desc='x', n_jobs=2, progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline, workers = time.time() + 30, set()
        while len(workers) < 2 and time.time() < deadline:
            time.sleep(0.1)
            workers = _children(parent.pid)
        assert len(workers) == 2, "the pool did not start"
        time.sleep(0.5)                           # past the workers' initializer
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.time() + 5
        while _alive(workers) and time.time() < deadline:
            time.sleep(0.1)
        left = _alive(workers)
        for pid in left:                          # do not leave them behind either way
            os.kill(pid, signal.SIGKILL)
        assert not left, f"workers {sorted(left)} outlived their parent"
    finally:
        parent.kill()


@double_scalars
def test_the_readme_library_quick_start_runs_with_options_chosen_solvers():
    import subprocess
    import sys

    from helpers import ROOT
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quick_start.py"), "-snes_type",
                        "nrichardson", "-snes_linesearch_type", "basic", "-adjoint_ksp_type",
                        "bcgs"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    forward, backward = r.stdout.strip().splitlines()
    assert forward.startswith("nrichardson: CONVERGED_FNORM_RELATIVE after ")
    assert backward.startswith("adjoint ksp/bcgs: CONVERGED_RTOL after ")
