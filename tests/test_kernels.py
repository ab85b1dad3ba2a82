"""Pinned CPU kernels: what is set, what is left alone, and that it changes the numbers."""

import subprocess
import sys

import pytest

from deq_petsc.process.kernels import PORTABLE, mode, pin

AVX2 = {"avx2", "fma", "sse4_2"}


@pytest.mark.parametrize("environ, flags, expected", [
    ({}, AVX2, PORTABLE),                                              # the default
    ({"DEQ_PETSC_KERNELS": "portable"}, AVX2 | {"avx512f"}, PORTABLE),
    ({"DEQ_PETSC_KERNELS": "native"}, AVX2, {}),
    ({"DEQ_PETSC_KERNELS": " Native "}, AVX2, {}),
    ({"OPENBLAS_CORETYPE": "Zen"}, AVX2,                               # a machine's own
     {k: v for k, v in PORTABLE.items() if k != "OPENBLAS_CORETYPE"}),
    ({}, {"sse4_2", "avx"}, {}),                                       # no AVX2: nothing
    ({}, set(), {}),                                                   # no flags known
])
def test_pin_sets_the_portable_kernels_the_user_left_unset(environ, flags, expected):
    before = dict(environ)
    assert pin(environ, flags) == expected
    assert environ == {**before, **expected}


def test_a_cpu_whose_flags_are_unknown_is_left_alone(monkeypatch):
    import deq_petsc.process.kernels as kernels
    monkeypatch.setattr(kernels, "cpu_flags", lambda: None)
    environ = {}
    assert pin(environ) == {} and environ == {}


def test_a_bad_kernels_mode_is_one_line():
    with pytest.raises(ValueError, match="DEQ_PETSC_KERNELS='fastest': must be one of "
                                         "portable, native"):
        mode({"DEQ_PETSC_KERNELS": "fastest"})
    from helpers import run_cli
    r = run_cli("solve", env={"DEQ_PETSC_KERNELS": "fastest"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("deq-petsc: error: DEQ_PETSC_KERNELS='fastest': must be one "
                                "of portable, native")


def test_the_pinned_kernels_are_the_ones_torch_computes_with():
    """The variables reach the libraries: ATen dispatches to its AVX2 kernels, and the
    convolution's bits are this CPU's own on an AVX2 CPU and differ from them on an
    AVX-512 one (the emulated-AVX2 comparison is benchmarks/bench_kernels.py's)."""
    probe = ("import hashlib, torch; torch.manual_seed(0); c = torch.nn.Conv2d(8, 8, 3); "
             "x = torch.randn(4, 8, 16, 16)\nwith torch.no_grad(): y = c(x)\n"
             "print(torch.backends.cpu.get_cpu_capability(), "
             "hashlib.md5(y.numpy().tobytes()).hexdigest())")
    def run(environ):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=environ, timeout=120, check=True)
        return out.stdout.split()
    import os
    base = {k: v for k, v in os.environ.items() if k not in PORTABLE}
    pinned = dict(base)
    if not pin(pinned):
        pytest.skip("no AVX2 here, or DEQ_PETSC_KERNELS=native")
    capability, digest = run(pinned)
    assert capability == "AVX2"
    native_capability, native_digest = run(base)
    if native_capability == "AVX2":               # an AVX2 CPU: the pins are its own paths
        assert native_digest == digest
    else:                                         # AVX-512: oneDNN's convolution rounds
        assert native_digest != digest            # otherwise, and the pins reach it


def test_the_version_line_says_which_kernels():
    from deq_petsc.process.kernels import describe
    assert describe(dict(PORTABLE)) == "portable (AVX2 paths)"
    assert describe({"DEQ_PETSC_KERNELS": "native"}) == "native (this CPU's own choice)"
    assert describe({"DEQ_PETSC_KERNELS": "native", "OPENBLAS_CORETYPE": "Zen"}) == \
        "native (OPENBLAS_CORETYPE=Zen)"
    assert describe({**PORTABLE, "MKL_CBWR": "COMPATIBLE"}).startswith("portable (")
