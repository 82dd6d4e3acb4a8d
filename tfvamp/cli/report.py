"""Tables of finished runs' test results beside the paper's (tfvamp.paper): `tfvamp-report`,
`python scripts/report.py`.

    python scripts/report.py runs/budget/*                         # the reduced-budget table
    python scripts/report.py --paper_budget runs/paper_budget/*    # the paper-budget record and table

Reads each run directory's config.json and results.json (written by scripts/train.py) and prints
a Markdown table. Without --paper_budget: epochs (best), S, test LL ± s.e., ELBO, bits/dim,
active units, the paper's number and training minutes (docs/results.md, reduced budget).

With --paper_budget, for each finished run directory (results.json with a test section) it
writes `<output_dir>/<run>.json` (config.json merged with results.json, plus the CPU model),
draws every run's validation loss per epoch (from its TensorBoard events; red: the best epoch)
into `<output_dir>/curves.png`, and prints the table of docs/results.md's paper budget: paper
against tfvamp, standard errors, epochs to early stopping, wall time, threads, active units,
components in use and pseudo-inputs moved.
"""
import glob
import json
import math
import os

from tfvamp import console

console.quiet()  # before TensorFlow starts its work

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfvamp import cli  # noqa: E402
from tfvamp import paper  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("paper_budget", False, "The paper-budget record: per-run JSON and curves.png in --output_dir, "
                  "and its table (paper, tfvamp ± s.e., difference, epochs and stop, time, threads, ...).")
flags.DEFINE_string("output_dir", "docs/results/paper_budget", "With --paper_budget: where the JSON files and "
                    "curves.png go.")


# ---- the reduced-budget table --------------------------------------------------------------------
def row(run_dir):
    """One run's cells of the reduced-budget table."""
    from tfvamp import checkpointing  # pylint: disable=import-outside-toplevel

    config = checkpointing.load_config(run_dir)
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    test, training = results["test"], results.get("training", {})
    gray = "bits_per_dim" in test
    units = test.get("active_units", {})
    dataset, model, prior = config.data.dataset, config.model.model, config.model.prior
    published = paper.published(dataset, model, prior)
    return {
        "run": os.path.basename(os.path.normpath(run_dir)), "dataset": dataset, "model": model, "prior": prior,
        "epochs": training.get("epochs_trained"), "best_epoch": training.get("best_epoch"),
        "S": test.get("num_samples"),
        "ll": f"{test['log_likelihood']:.2f} ± {test.get('log_likelihood_sem', float('nan')):.2f}",
        "elbo": f"{test['elbo']:.2f}",
        "bpd": f"{test['bits_per_dim']:.3f}" if gray else "-",
        "active": ", ".join(f"{k} {v}" for k, v in sorted(units.items())),
        "paper": (f"{published:.2f} bits/dim" if gray else f"{published:.2f}") if published is not None else "-",
        "minutes": f"{training.get('train_seconds', 0) / 60:.1f}",
    }


def results_table(argv):
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


# ---- the paper-budget record -----------------------------------------------------------------------
def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def record(run_dir):
    """config.json (`RunConfig.to_dict()`) merged with results.json (and the CPU model), or None
    for an unfinished run."""
    from tfvamp import checkpointing  # pylint: disable=import-outside-toplevel

    results = checkpointing.load_results(run_dir)
    if "test" not in results:
        return None
    return {"run": os.path.basename(os.path.normpath(run_dir)), "config": checkpointing.load_config(run_dir).to_dict(),
            **results, "machine": {"cpu": results.get("machine", {}).get("cpu") or _cpu()}}


def validation_curve(run_dir):
    """(epochs, validation losses) from the run's TensorBoard events."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    points = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))):
        for event_record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(event_record.numpy())
            for value in event.summary.value:
                if value.tag == "validation/loss":
                    points[event.step] = float(tf.make_ndarray(value.tensor))
    epochs = sorted(points)
    return epochs, [points[e] for e in epochs]


def _duration(seconds):
    minutes = seconds / 60.0
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def table_row(rec):
    """One run's cells of the paper-budget table."""
    from tfvamp.config import RunConfig  # pylint: disable=import-outside-toplevel

    config, test, training = RunConfig.from_dict(rec["config"]), rec["test"], rec["training"]
    gray = "bits_per_dim" in test
    sem = test["log_likelihood_sem"]
    pixels = math.prod(config.model.image_shape)
    ours = (f"{test['bits_per_dim']:.3f} ± {sem / (pixels * math.log(2)):.3f}" if gray
            else f"{test['log_likelihood']:.2f} ± {sem:.2f}")
    published = paper.published(config.data.dataset, config.model.model, config.model.prior)
    diff = (test["bits_per_dim"] if gray else test["log_likelihood"]) - published if published is not None else None
    units = ", ".join(f"{k} {v}" for k, v in sorted(test.get("active_units", {}).items()))
    return [rec["run"], f"{published:.2f}" if published is not None else "-", ours,
            f"{diff:+.3f}" if diff is not None else "-",
            f"{training['epochs_trained']} ({training['best_epoch']}), {training['stop_reason'].replace('_', ' ')}",
            _duration(training["train_seconds"]), str(config.training.threads or "all"), units,
            str(test.get("components_in_use", "-")), str(test.get("pseudo_inputs_moved", "-"))]


def _write_curves(panels, output_dir):
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tfvamp import pictures  # pylint: disable=import-outside-toplevel

    columns = 2
    blank = np.full_like(panels[0], 255)
    rows = [np.concatenate((panels + [blank])[i:i + columns], 1) for i in range(0, len(panels), columns)]
    return pictures.save_png(os.path.join(output_dir, "curves.png"), np.concatenate(rows, 0))


def paper_budget_report(argv):
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
        print(f"curves: {_write_curves(panels, FLAGS.output_dir)}")
    header = ["run", "paper", "tfvamp ± s.e.", "difference", "epochs (best), stop", "train time", "threads",
              "active units", "components in use", "pseudo-inputs moved"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for _, rec in records:
        print("| " + " | ".join(table_row(rec)) + " |")
    print(f"\nMachine: {records[0][1]['machine']['cpu']}")
    return 0


def _main(argv):
    return paper_budget_report(argv) if FLAGS.paper_budget else results_table(argv)


def main():
    cli.run(_main, __name__)


if __name__ == "__main__":
    main()
