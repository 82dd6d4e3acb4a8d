"""Evaluates a trained run: test log-likelihood, ELBO, bits/dim, active units and pictures.

    python scripts/evaluate.py --model_dir runs/mnist_hvae_vamp [--split test] [--eval_samples 5000]

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
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfvamp import console  # noqa: E402

console.quiet()  # before TensorFlow starts

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

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
flags.DEFINE_bool("benchmark", False, "Time the evaluation of a randomly initialised model on random binary "
                  "28x28 images instead (no --model_dir): prints images/s at --eval_samples.")
flags.DEFINE_string("benchmark_model", "vae", "Model family for --benchmark.")
flags.DEFINE_string("benchmark_prior", "vampprior", "Prior for --benchmark (K = --benchmark_components).")
flags.DEFINE_integer("benchmark_components", 500, "K for --benchmark.")
flags.DEFINE_integer("benchmark_images", 100, "Images timed by --benchmark.")


def load_split(config, split, batch_size):
    """The run's dataset split as batches of images (only that split is built)."""
    from tfvamp import data  # the data module pulls in TFDS: import only when needed
    from tfvamp import flags as tflags

    name = FLAGS.dataset or config.get("dataset")
    if not name:
        raise ValueError("config.json names no dataset; pass --dataset.")
    options = tflags.source_options({**tflags.default_config(), **config, "dataset": name})
    return data.load_split(name, split, batch_size, data_dir=FLAGS.data_dir or config.get("data_dir"),
                           manual_dir=FLAGS.manual_dir or config.get("manual_dir"), options=options)


def load_images(path, batch_size):
    """Images from a .npy file `[N, H, W, C]` in [0, 1], as a dataset of batches."""
    import numpy as np
    import tensorflow as tf

    images = np.load(path).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


def benchmark():
    """Images per second of `evaluate` for a random-init 28x28 model (speed does not depend on training)."""
    import platform

    import numpy as np
    import tensorflow as tf

    import tfvamp
    from tfvamp import estimator
    from tfvamp import evaluation

    model = tfvamp.build_model(FLAGS.benchmark_model, FLAGS.benchmark_prior, (28, 28, 1), "bernoulli",
                               num_components=FLAGS.benchmark_components, seed=0)
    batch_size = FLAGS.eval_batch_size or 100
    images = (np.random.default_rng(0).random((FLAGS.benchmark_images, 28, 28, 1)) < 0.2).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    chunk = FLAGS.chunk_size or None
    evaluation.evaluate(model, dataset.take(1), num_samples=2, chunk_size=chunk, progress=False)  # tracing
    cpu = time.process_time()
    summary, _ = evaluation.evaluate(model, dataset, num_samples=FLAGS.eval_samples, chunk_size=chunk,
                                     progress=FLAGS.progress)
    cpu = time.process_time() - cpu  # all threads: robust to other processes sharing the cores
    used_chunk = chunk or estimator.default_chunk_size(model, min(batch_size, FLAGS.benchmark_images),
                                                       FLAGS.eval_samples)
    print(json.dumps({"model": FLAGS.benchmark_model, "prior": FLAGS.benchmark_prior,
                      "num_components": FLAGS.benchmark_components, "num_samples": FLAGS.eval_samples,
                      "batch_size": batch_size, "chunk_size": used_chunk, "images": summary["num_examples"],
                      "seconds": round(summary["seconds"], 2),
                      "images_per_second": round(summary["images_per_second"], 3),
                      "cpu_seconds_per_image": round(cpu / summary["num_examples"], 4),
                      "load_average": os.getloadavg()[0],
                      "tensorflow": tf.__version__, "cpu_count": os.cpu_count(), "machine": platform.processor()
                      or platform.machine()}, indent=2))


def main(argv):
    del argv
    if FLAGS.benchmark:
        return benchmark()
    if not FLAGS.model_dir:
        return console.fail(f"--model_dir is required (or --benchmark). {console.FLAG_HINT}", 2)
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


def _record(model_dir, config, summary):
    """What the evaluation was of, stored beside its numbers."""
    import tensorflow as tf

    from tfvamp import checkpointing

    checkpoint = checkpointing.checkpoint_path(model_dir, FLAGS.which)
    from tfvamp import data

    known = checkpointing.load_results(model_dir).get("data", {}).get("num_examples", {})
    name = FLAGS.dataset or config.get("dataset")
    if not known and name in data.NAMES:
        known = data.get_info(name).num_examples
    size = None if FLAGS.images else known.get(FLAGS.split)
    try:
        best_epoch = int(tf.train.load_variable(checkpoint, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (ValueError, tf.errors.NotFoundError):
        best_epoch = None
    return {"checkpoint": os.path.relpath(checkpoint, model_dir), "best_epoch": best_epoch,
            "dataset": FLAGS.images or FLAGS.dataset or config.get("dataset"), "eval_samples": FLAGS.eval_samples,
            "partial_test_set": bool(FLAGS.max_batches) or (size is not None and summary["num_examples"] < size),
            "compute_dtype": config.get("compute_dtype", "float32"), "prior_dtype": FLAGS.prior_dtype,
            "seed": FLAGS.seed}


def evaluate_run():
    """Evaluates --model_dir's weights on a split (or --images) and writes the results."""
    import numpy as np
    import tensorflow as tf

    from tfvamp import checkpointing
    from tfvamp import evaluation

    model_dir = FLAGS.model_dir
    model, config = checkpointing.load_model(model_dir, FLAGS.which, compute_dtype=FLAGS.compute_dtype)
    batch_size = FLAGS.eval_batch_size or int(config.get("eval_batch_size") or 100)
    if FLAGS.images:
        split = os.path.splitext(os.path.basename(FLAGS.images))[0]
        dataset = load_images(FLAGS.images, batch_size)
    else:
        split = FLAGS.split
        dataset = load_split(config, split, batch_size)
    if FLAGS.max_batches:
        dataset = dataset.take(FLAGS.max_batches)

    summary, per_example = evaluation.evaluate(
        model, dataset, num_samples=FLAGS.eval_samples, chunk_size=FLAGS.chunk_size or None,
        prior_dtype=FLAGS.prior_dtype, seed=FLAGS.seed, progress=FLAGS.progress)
    results_path = evaluation.save_results(model_dir, summary, split, **_record(model_dir, config, summary))
    np.savez(os.path.join(model_dir, f"eval_{split}.npz"), **per_example)

    writer = tf.summary.create_file_writer(os.path.join(model_dir, checkpointing.TENSORBOARD_DIR, "eval"))
    prefix = f"eval_{split}"
    evaluation.write_summaries(writer, summary, step=0, prefix=prefix)
    if FLAGS.pictures:
        # Random (seeded) images of the split: test sets may be sorted by class.
        originals = evaluation.pick_images(dataset, FLAGS.num_reconstructions, summary["num_examples"], FLAGS.seed)
        paths = evaluation.write_pictures(
            model, originals, os.path.join(model_dir, "pictures"),
            log_likelihoods=per_example["log_likelihood"], usage=per_example.get("component_usage"), writer=writer,
            step=0, num_samples=FLAGS.num_pictures, num_reconstructions=FLAGS.num_reconstructions,
            num_pseudo_inputs=FLAGS.num_pseudo_inputs, samples_per_pseudo_input=FLAGS.samples_per_pseudo_input,
            seed=FLAGS.seed, scale=FLAGS.picture_scale or None, prefix=prefix)
        limit = evaluation.PROJECTOR_MAX_IMAGES
        images = np.concatenate([x.numpy() for x in dataset.unbatch().take(limit).batch(1000)])
        paths["projector"] = evaluation.write_projector(
            os.path.join(model_dir, checkpointing.TENSORBOARD_DIR, "eval"),
            per_example[f"{model.top_latent_name}_mean"][:limit], images, per_example["log_likelihood"][:limit])
        for name, path in paths.items():
            print(f"{name:>24}: {path}")
    print(json.dumps({split: summary}, indent=2, sort_keys=True))
    print(f"results: {results_path}")


if __name__ == "__main__":
    app.run(main)
