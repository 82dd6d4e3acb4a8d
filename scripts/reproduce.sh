#!/usr/bin/env bash
# The reproductions of docs/results.md, one run after another:
#   bash scripts/reproduce.sh --budget paper   [CELL ...] [-- extra train.py flags]
#   bash scripts/reproduce.sh --budget reduced [CELL ...] [-- extra train.py flags, e.g. --manual_dir DIR]
# CELL is <dataset>_<model>_<prior> (a configs/ flagfile); default: the eight cells of docs/results.md.
# Re-running resumes or skips finished runs.
#
# paper:   the paper's own protocol (up to 2000 epochs, warm-up 100, patience 50, the best validation
#          epoch kept, test LL with S = 5000 on the whole test set). Each run goes to $RUNS_DIR/CELL
#          (default runs/paper_budget), its SavedModel to $RUNS_DIR/exports/CELL, its console to
#          $RUNS_DIR/CELL.log. THREADS (default 1) keeps each run to that many cores, so that two can
#          train side by side. Then: python scripts/report.py --paper_budget runs/paper_budget/*
# reduced: configs/budget/<dataset>.cfg on top (about an hour on 2 CPU cores for the eight): runs in
#          runs/budget/CELL, SavedModels in saved_models/budget_CELL; the table is printed at the end.
# Both in float32, as the tables were measured (--compute_dtype=auto would pick mixed on bfloat16 hardware).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash scripts/reproduce.sh --budget paper|reduced [CELL ...] [-- extra train.py flags]"
budget=""
cells=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --budget) [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }; budget="$2"; shift 2 ;;
    --budget=*) budget="${1#--budget=}"; shift ;;
    -*) echo "unknown option $1; $usage" >&2; exit 2 ;;
    *) cells+=("$1"); shift ;;
  esac
done
[[ $# -gt 0 ]] && shift
extra=("$@")
case "${budget}" in
  paper)
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
        --noprogress ${extra[@]+"${extra[@]}"} 2>&1 | tee -a "${runs}/${cell}.log"
    done
    ;;
  reduced)
    if [[ ${#cells[@]} -eq 0 ]]; then
      cells=(static_mnist_vae_standard static_mnist_vae_vampprior static_mnist_hvae_standard static_mnist_hvae_vampprior
             frey_faces_vae_standard frey_faces_vae_vampprior frey_faces_hvae_standard frey_faces_hvae_vampprior)
    fi
    for name in "${cells[@]}"; do
      dataset="${name%_*_*}"  # <dataset>_<model>_<prior>
      [[ -f "configs/budget/${dataset}.cfg" ]] || { echo "no reduced budget for ${dataset} (configs/budget/)" >&2; exit 2; }
      python scripts/train.py --flagfile "configs/${name}.cfg" --flagfile "configs/budget/${dataset}.cfg" \
        --model_dir "runs/budget/${name}" --export_dir "saved_models/budget_${name}" --compute_dtype float32 --noprogress ${extra[@]+"${extra[@]}"}
    done
    python scripts/report.py runs/budget/*
    ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
