#!/usr/bin/env bash
# The main job on its embedded default: set up when needed, then `deq-petsc demo`.
# Extra arguments (ours or PETSc's) are passed through, e.g.
#   bash ci/demo.sh --epochs 2 -anderson_snes_anderson_m 3 -log_view
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/ci/setup-env.sh"
export PATH=$root/.venv/bin:$PATH
exec deq-petsc demo "$@"
