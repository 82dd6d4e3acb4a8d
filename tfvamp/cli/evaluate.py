"""Evaluates a trained run: test log-likelihood, ELBO, bits/dim, active units and pictures:
`tfvamp-evaluate`, `python scripts/evaluate.py`.

    tfvamp-evaluate --model_dir runs/mnist_hvae_vamp [--split test] [--eval_samples 5000]

Reads `<model_dir>/config.json` and the best weights (`--which latest` for the newest
checkpoint), evaluates the chosen split with a progress bar (images/s), and writes

    <model_dir>/results.json                  {split: summary} merged into what is there
    <model_dir>/eval_<split>.npz              per-example log_likelihood, elbo, reconstruction, kl
    <model_dir>/pictures/*.png                samples, reconstructions, pseudo-inputs,
                                              samples from chosen pseudo-inputs, LL histogram
    <model_dir>/tensorboard/eval/             the same pictures, the numbers, an LL histogram

See docs/evaluation.md.
"""
import json

from tfvamp import console  # noqa: E402

console.quiet()  # before TensorFlow starts

from absl import flags  # noqa: E402

from tfvamp import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory written by scripts/train.py (required).")
flags.DEFINE_enum("split", "test", ("test", "validation"), "Which split to evaluate.")
flags.DEFINE_enum("which", "best", ("best", "latest"), "Best weights or the newest checkpoint.")
flags.DEFINE_integer("eval_samples", 5000, "Importance samples S per image for log p(x).", lower_bound=1)
flags.DEFINE_integer("chunk_size", 0, "Importance samples per network pass (0 = automatic, ~256 MB).")
flags.DEFINE_string("compute_dtype", None,
                    "Precision of this evaluation (default: the run's): float32, mixed, bfloat16 or auto "
                    "(tfvamp/precision.py). --compute_dtype=float32 evaluates any run in float32; mixed is "
                    "faster on CPUs with AVX512-BF16 or AMX; see docs/benchmarks.md for the effect on the LL.")
flags.DEFINE_enum("prior_dtype", "float32", ("float32", "float64"),
                  "Precision of the mixture prior's log-density in the IS estimator (float32 is centred "
                  "per image and within ~1e-5 nats of float64).")
flags.DEFINE_integer("eval_batch_size", 0, "Images per batch (0 = the run's eval_batch_size, else 100).")
flags.DEFINE_integer("max_batches", 0, "Evaluate only this many batches (0 = the whole split; "
                     "for smoke tests: the numbers then cover part of the split).")
flags.DEFINE_string("dataset", None, "Override the run's dataset name (default: config.json's).")
flags.DEFINE_string("data_dir", None, "Override where prepared datasets are cached.")
flags.DEFINE_string("manual_dir", None, "Override where the original dataset files are.")
flags.DEFINE_string("images", None, "Evaluate these images instead of a split: a .npy file [N, H, W, C] "
                    "in [0, 1]; results are stored under the file's base name.")
flags.DEFINE_bool("pictures", True, "Write PNG files and TensorBoard images.")
flags.DEFINE_integer("num_pictures", 64, "Samples drawn from the model for the pictures (0 = none; "
                     "PixelHVAE samples pixel by pixel and is slow on CPU).")
flags.DEFINE_integer("num_reconstructions", 32, "Test images shown next to their reconstructions.")
flags.DEFINE_integer("num_pseudo_inputs", 8, "Pseudo-inputs to generate from (VampPrior priors).")
flags.DEFINE_integer("picture_scale", 0, "Enlargement of every tile (0 = a tile at least 56 px high).",
                     lower_bound=0)
flags.DEFINE_integer("samples_per_pseudo_input", 8, "Images generated from each chosen pseudo-input.")
flags.DEFINE_integer("seed", 0, "Seed of the importance samples (batch i uses seed + i), the pictures' "
                     "samples and the choice of pseudo-inputs: the same command gives the same numbers.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_integer("threads", 0, "Cores TensorFlow may use (0 = every core), laid out as in training (--threads in docs/training.md).", lower_bound=0)


def _main(argv):
    del argv
    if not FLAGS.model_dir:
        return console.fail(f"--model_dir is required. {console.FLAG_HINT}", 2)
    from tfvamp import data
    from tfvamp import distribute
    distribute.set_threads(FLAGS.threads)
    try:
        evaluate_run()
    except KeyboardInterrupt:
        return console.fail("Interrupted; nothing was written.", 130)
    except (FileNotFoundError, ValueError, data.DataError) as e:
        return console.fail(str(e), 1)
    return 0


def evaluate_run():
    """Evaluates --model_dir's weights on a split (or --images) and writes the results
    (`tfvamp.run.evaluate_run`, with this program's flags as its options)."""
    from tfvamp import run  # pylint: disable=import-outside-toplevel

    options = {name: FLAGS[name].value for name in run.EVALUATE_DEFAULTS}
    result = run.evaluate_run(FLAGS.model_dir, **options)
    for name, path in result["pictures"].items():
        print(f"{name:>24}: {path}")
    print(json.dumps({result["split"]: result["summary"]}, indent=2, sort_keys=True))
    print(f"results: {result['results_path']}")


def main():
    cli.run(_main, __name__)


if __name__ == "__main__":
    main()
