#!/usr/bin/env bash
# The reduced-budget reproduction of docs/results.md: eight runs, one after another, then the table.
#   bash scripts/reproduce_budget.sh [--manual_dir DIR]     (about an hour on 2 CPU cores)
# Each line is one row of the table and can be run on its own; re-running resumes or skips.
# float32, as the table was measured (--compute_dtype=auto would pick mixed on bfloat16 hardware).
set -euo pipefail
cd "$(dirname "$0")/.."
extra=("$@")
for dataset in static_mnist frey_faces; do
  for model in vae hvae; do
    for prior in standard vampprior; do
      name="${dataset}_${model}_${prior}"
      python scripts/train.py --flagfile "configs/${name}.cfg" --flagfile "configs/budget/${dataset}.cfg" \
        --model_dir "runs/budget/${name}" --export_dir "saved_models/budget_${name}" --compute_dtype float32 --noprogress "${extra[@]}"
    done
  done
done
python scripts/results_table.py runs/budget/*
