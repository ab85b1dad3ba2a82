#!/usr/bin/env bash
# The project's test command: set up the environment when needed, then run the
# whole suite (the MPI tests launch `mpiexec -n 2` themselves). Extra arguments
# go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/ci/setup-env.sh"
cd "$root"
export PATH=${DEQ_PETSC_VENV:-$root/.venv}/bin:$PATH
exec python -m pytest "$@"
