#!/usr/bin/env bash
# The paper's own protocol (docs/results.md, "Paper budget"): up to 2000 epochs, warm-up 100,
# patience 50, the best validation epoch kept, test LL with S = 5000 on the whole test set.
#   bash scripts/reproduce_paper_budget.sh [CELL ...] [-- extra train.py flags]
# CELL is <dataset>_<model>_<prior> (a configs/ flagfile); default: the eight cells of
# docs/results.md. Each run goes to $RUNS_DIR/CELL (default runs/paper_budget), its SavedModel to
# $RUNS_DIR/exports/CELL; re-running resumes or skips.
# THREADS (default 1) keeps each run to that many cores, so that two can train side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
cells=()
while [[ $# -gt 0 && "$1" != "--" ]]; do cells+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
extra=("$@")
if [[ ${#cells[@]} -eq 0 ]]; then
  cells=(frey_faces_vae_standard frey_faces_vae_vampprior frey_faces_hvae_standard frey_faces_hvae_vampprior
         static_mnist_vae_vampprior static_mnist_hvae_vampprior static_mnist_vae_standard static_mnist_hvae_standard)
fi
runs="${RUNS_DIR:-runs/paper_budget}"
for cell in "${cells[@]}"; do
  mkdir -p "${runs}"
  echo "== ${cell} ($(date -u +%FT%TZ))"
  python scripts/train.py --flagfile "configs/${cell}.cfg" --model_dir "${runs}/${cell}" \
    --export_dir "${runs}/exports/${cell}" --threads "${THREADS:-1}" --compute_dtype float32 \
    --noprogress "${extra[@]}" 2>&1 | tee -a "${runs}/${cell}.log"
done
