#!/usr/bin/env bash
# The project's test command: set up the environment when needed, then run the
# whole suite (the MPI tests launch `mpiexec -n 2` themselves) on one pytest-xdist
# worker per core, a module at a time. Extra arguments go to pytest (`-n 0`: one
# process; DEQ_PETSC_TEST_WORKERS sets the number of workers).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/ci/setup-env.sh"
cd "$root"
export PATH=${DEQ_PETSC_VENV:-$root/.venv}/bin:$PATH
exec python -m pytest -n "${DEQ_PETSC_TEST_WORKERS:-auto}" --dist loadfile "$@"
