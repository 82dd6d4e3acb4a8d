#!/usr/bin/env python
"""A Markdown table of finished runs' test results, with the paper's numbers beside them.

    python scripts/results_table.py runs/budget/*

Reads each run directory's config.json and results.json (written by scripts/train.py).
"""
import json
import os
import sys

from absl import app

# Table 1 of the paper (test LL in nats; Frey Faces and histopathology in bits/dim), docs/paper_details.md section 8.
PAPER = {
    ("static_mnist", "vae", "standard"): -88.56, ("static_mnist", "vae", "vampprior"): -85.57,
    ("static_mnist", "hvae", "standard"): -86.05, ("static_mnist", "hvae", "vampprior"): -83.19,
    ("static_mnist", "hvae", "mog"): -85.07, ("static_mnist", "hvae", "vampprior_data"): -85.71,
    ("dynamic_mnist", "vae", "standard"): -84.50, ("dynamic_mnist", "vae", "vampprior"): -82.38,
    ("dynamic_mnist", "hvae", "standard"): -82.42, ("dynamic_mnist", "hvae", "vampprior"): -81.24,
    ("frey_faces", "vae", "standard"): 4.63, ("frey_faces", "vae", "vampprior"): 4.57,
    ("frey_faces", "hvae", "standard"): 4.61, ("frey_faces", "hvae", "vampprior"): 4.51,
}


def row(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    test, training = results["test"], results.get("training", {})
    gray = "bits_per_dim" in test
    units = test.get("active_units", {})
    key = (config["dataset"], config["model"], config["prior"])
    paper = PAPER.get(key)
    return {
        "run": os.path.basename(os.path.normpath(run_dir)), "dataset": config["dataset"],
        "model": config["model"], "prior": config["prior"],
        "epochs": training.get("epochs_trained"), "best_epoch": training.get("best_epoch"),
        "S": test.get("num_samples"),
        "ll": f"{test['log_likelihood']:.2f} ± {test.get('log_likelihood_sem', float('nan')):.2f}",
        "elbo": f"{test['elbo']:.2f}",
        "bpd": f"{test['bits_per_dim']:.3f}" if gray else "-",
        "active": ", ".join(f"{k} {v}" for k, v in sorted(units.items())),
        "paper": (f"{paper:.2f} bits/dim" if gray else f"{paper:.2f}") if paper is not None else "-",
        "minutes": f"{training.get('train_seconds', 0) / 60:.1f}",
    }


def main(argv):
    run_dirs = [d for d in argv[1:] if os.path.exists(os.path.join(d, "results.json"))]
    if not run_dirs:
        raise app.UsageError("Name run directories that hold results.json, e.g. runs/budget/*.")
    header = ["run", "epochs (best)", "S", "test LL (nats) ± s.e.", "test ELBO", "bits/dim", "active units",
              "paper", "train min"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for d in sorted(run_dirs):
        r = row(d)
        cells = [r["run"], f"{r['epochs']} ({r['best_epoch']})", str(r["S"]), r["ll"], r["elbo"], r["bpd"],
                 r["active"], r["paper"], r["minutes"]]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
