#!/usr/bin/env python
"""The paper-budget reproduction's record: per-run JSON, validation curves and the table.

    python scripts/paper_budget_report.py runs/paper_budget/*      # after scripts/reproduce_paper_budget.sh

For each finished run directory (results.json with a test section) it writes
`docs/results/paper_budget/<run>.json` (config.json merged with results.json, plus the CPU
model), draws every run's validation loss per epoch (from its TensorBoard events; red: the best
epoch) into `docs/results/paper_budget/curves.png`, and prints the Markdown table of
docs/results.md: paper against tfvamp, standard errors, epochs to early stopping, wall time,
threads, active units, components in use and pseudo-inputs moved.
"""
import glob
import json
import math
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from tfvamp import console  # noqa: E402

console.quiet()  # before TensorFlow starts

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "docs/results/paper_budget", "Where the JSON files and curves.png go.")

# Table 1 of the paper (docs/paper_details.md section 8): nats, Frey Faces in bits/dim.
PAPER = {("static_mnist", "vae", "standard"): -88.56, ("static_mnist", "vae", "vampprior"): -85.57,
         ("static_mnist", "hvae", "standard"): -86.05, ("static_mnist", "hvae", "vampprior"): -83.19,
         ("frey_faces", "vae", "standard"): 4.63, ("frey_faces", "vae", "vampprior"): 4.57,
         ("frey_faces", "hvae", "standard"): 4.61, ("frey_faces", "hvae", "vampprior"): 4.51}


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def record(run_dir):
    """config.json merged with results.json (and the CPU model), or None for an unfinished run."""
    from tfvamp import checkpointing  # pylint: disable=import-outside-toplevel

    results = checkpointing.load_results(run_dir)
    if "test" not in results:
        return None
    return {"run": os.path.basename(os.path.normpath(run_dir)), "config": checkpointing.load_config(run_dir),
            **results, "machine": {"cpu": results.get("machine", {}).get("cpu") or _cpu()}}


def validation_curve(run_dir):
    """(epochs, validation losses) from the run's TensorBoard events."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    points = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "validation/loss":
                    points[event.step] = float(tf.make_ndarray(value.tensor))
    epochs = sorted(points)
    return epochs, [points[e] for e in epochs]


def _duration(seconds):
    minutes = seconds / 60.0
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def table_row(rec):
    config, test, training = rec["config"], rec["test"], rec["training"]
    key = (config["dataset"], config["model"], config["prior"])
    gray = "bits_per_dim" in test
    sem = test["log_likelihood_sem"]
    ours = (f"{test['bits_per_dim']:.3f} ± {sem / (math.prod(config['input_shape']) * math.log(2)):.3f}" if gray
            else f"{test['log_likelihood']:.2f} ± {sem:.2f}")
    paper = PAPER.get(key)
    diff = (test["bits_per_dim"] if gray else test["log_likelihood"]) - paper if paper is not None else None
    units = ", ".join(f"{k} {v}" for k, v in sorted(test.get("active_units", {}).items()))
    return [rec["run"], f"{paper:.2f}" if paper is not None else "-", ours,
            f"{diff:+.3f}" if diff is not None else "-",
            f"{training['epochs_trained']} ({training['best_epoch']}), {training['stop_reason'].replace('_', ' ')}",
            _duration(training["train_seconds"]), str(config.get("threads") or "all"), units,
            str(test.get("components_in_use", "-")), str(test.get("pseudo_inputs_moved", "-"))]


def main(argv):
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tfvamp import checkpointing, pictures  # pylint: disable=import-outside-toplevel

    records = [(d, r) for d in sorted(argv[1:]) for r in [record(d)] if r is not None]
    if not records:
        return console.fail("Name finished run directories (with results.json), e.g. runs/paper_budget/*.", 2)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    panels = []
    for run_dir, rec in records:
        checkpointing.write_json(os.path.join(FLAGS.output_dir, f"{rec['run']}.json"), rec)
        epochs, losses = validation_curve(run_dir)
        if len(epochs) > 1:
            panels.append(pictures.line_chart((epochs, losses), title=f"{rec['run']}: validation loss",
                                              marker=rec["training"]["best_epoch"]))
    if panels:
        columns = 2
        blank = np.full_like(panels[0], 255)
        rows = [np.concatenate((panels + [blank])[i:i + columns], 1) for i in range(0, len(panels), columns)]
        path = pictures.save_png(os.path.join(FLAGS.output_dir, "curves.png"), np.concatenate(rows, 0))
        print(f"curves: {path}")
    header = ["run", "paper", "tfvamp ± s.e.", "difference", "epochs (best), stop", "train time", "threads",
              "active units", "components in use", "pseudo-inputs moved"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for _, rec in records:
        print("| " + " | ".join(table_row(rec)) + " |")
    print(f"\nMachine: {records[0][1]['machine']['cpu']}")
    return 0


if __name__ == "__main__":
    app.run(main)
