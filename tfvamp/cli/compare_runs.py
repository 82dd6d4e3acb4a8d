"""Paired comparison of two evaluated runs on the same test set (e.g. float32 against mixed):
`tfvamp-compare-runs`, `python scripts/compare_runs.py`.

    tfvamp-compare-runs runs/frey_float32 runs/frey_mixed [--split test]

Reads each run's `eval_<split>.npz` (per-image log-likelihoods, written by scripts/evaluate.py;
evaluate both with the same --seed and --eval_samples) and prints, as JSON, each run's mean
log-likelihood (and bits/dim for 8-bit images), and the paired difference second minus first
in nats per image with its standard error over test images (`tfvamp.evaluation.paired_difference`).
"""
import json
import math
import os

import numpy as np
from absl import app
from absl import flags

from tfvamp import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("split", "test", ("test", "validation"), "Which evaluation to compare (eval_<split>.npz).")


def summarize(model_dir, split):
    """A run's per-image log-likelihoods and its summary: log_likelihood, and bits_per_dim for gray data."""
    from tfvamp import checkpointing, evaluation  # pylint: disable=import-outside-toplevel
    config = checkpointing.load_config(model_dir)
    lls = np.load(os.path.join(model_dir, f"eval_{split}.npz"))["log_likelihood"].astype(np.float64)
    summary = {"model_dir": model_dir, "compute_dtype": config.model.compute_dtype,  # float32 for older runs
               "log_likelihood": float(lls.mean())}
    if (config.model.likelihood or "").startswith("discretized_logistic"):
        summary["bits_per_dim"] = float(evaluation.bits_per_dim(lls.mean(), math.prod(config.model.image_shape)))
    return lls, summary


def _main(argv):
    if len(argv) != 3:
        raise app.UsageError("usage: compare_runs.py BASELINE_RUN OTHER_RUN [--split test]")
    from tfvamp import evaluation  # pylint: disable=import-outside-toplevel
    base, base_summary = summarize(argv[1], FLAGS.split)
    other, other_summary = summarize(argv[2], FLAGS.split)
    result = {"baseline": base_summary, "other": other_summary, **evaluation.paired_difference(base, other)}
    print(json.dumps(result, indent=2))
    return 0


def main():
    cli.run(_main, __name__)


if __name__ == "__main__":
    main()
