#!/usr/bin/env bash
# The small trained model per task that ships in the package (deq_petsc/science/shipped/),
# so that `deq-petsc predict --task polarity --smiles ...` works on a fresh install without
# a training run. Each is `deq-petsc train` with the settings below (seed 0, the data's
# own subset), its checkpoint and run record (run.json, report.json) copied beside it.
# Run: make models   (about 30 minutes on 2 cores; TASKS="polarity" for one)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/ci/setup-env.sh"
export PATH=$root/.venv/bin:$PATH
shipped=$root/deq_petsc/science/shipped
declare -A FLAGS=(
  [polarity]="--limit 2000 --epochs 8"
  [gap]="--limit 2000 --epochs 8 --objective regress"
  [crystals]="--limit 8000 --epochs 15 --lr-schedule cosine"
  [mof-pore]="--limit 2000 --epochs 12"
)
for task in ${TASKS:-polarity gap crystals mof-pore}; do
  out=$root/runs/ship-$task
  echo "[ship] $task: deq-petsc train --task $task ${FLAGS[$task]} --seed 0"
  # shellcheck disable=SC2086
  deq-petsc train --task "$task" ${FLAGS[$task]} --seed 0 --out "$out" --overwrite --no-progress
  cp "$out/checkpoint.pt" "$shipped/$task.pt"
  cp "$out/report.json" "$shipped/$task.report.json"
  cp "$out/run.json" "$shipped/$task.run.json"
done
echo "[ship] wrote $(cd "$shipped" && ls -- *.pt | tr '\n' ' ')"
