"""Speed of training and evaluation, as fractions of this machine's dense matmul throughput:
`tfvamp-benchmark`, `python scripts/benchmark.py`.

    python scripts/benchmark.py                        # the grid of docs/benchmarks.md
    python scripts/benchmark.py --quick                # a smoke test (a minute)
    python scripts/benchmark.py --models vae,hvae --components 500 --output_json bench.json
    python scripts/benchmark.py --models vae,convhvae --components 500 --compute_dtypes float32,mixed --threads 1

    python scripts/benchmark.py --evaluation --eval_model hvae --eval_components 500 --eval_samples 5000
    python scripts/benchmark.py --xla_steps 10 -- --flagfile configs/static_mnist_hvae_vampprior.cfg

For each model x prior (standard; vampprior at each K) on 28x28 binary data it measures the
real training step (`tfvamp.training.Trainer.train_step`: strategy, AdamNormGrad, noise) on a
fixed batch, steps/s after compilation and warm-up (median of repeats), the VampPrior's
overhead against the standard prior, importance-sampled evaluation throughput
(`model.log_likelihood` at --eval_samples), and peak memory. FLOPs are counted from the traced
graphs (tfvamp.profiling), never guessed; achieved FLOP rates are divided by the float32
matmul throughput measured in the same run (best of square sizes 1024-3072, at the start).
The last column divides them instead by a matmul rate measured just before and after each
timing, which separates a shared host's drift during a long run from the code's speed.
Each configuration runs in its own process so that its peak memory is its own.

What a user waits for is the epoch: the VampPrior rows at K = 500 (and --quick) also time
--epochs whole epochs of the real loop (`Trainer.fit`: input pipeline, validation pass,
checkpoint, TensorBoard) and report seconds per epoch and epoch time / (steps x step time),
with a warning above 1.1. The colour rows train convHVAE and PixelHVAE on 32x32x3 8-bit images.

Precision: every configuration runs in each of --compute_dtypes (default float32 and auto, which
is `mixed` on hardware with bfloat16 units: tfvamp/precision.py), one after the other, --rounds
times alternating, so that the two are timed side by side. The run prints the CPU model, both
matmul peaks (float32, bfloat16) and their ratio, and a speed-up table: step and evaluation
speed of each mode against float32 (from wall time, and in brackets from the worker's CPU time,
which other processes on a shared host do not stretch; with --threads 1 it is the work itself),
beside the bfloat16 / float32 matmul ratio measured next to each timing.
"""
import json
import os
import subprocess
import sys
import tempfile

from tfvamp import console  # noqa: E402

console.quiet()  # before TensorFlow starts

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfvamp import cli  # noqa: E402
from tfvamp import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["vae", "hvae", "convhvae", "pixelhvae"], "Model families.")
flags.DEFINE_list("components", ["1", "50", "500", "1000"], "K values of the VampPrior rows.")
flags.DEFINE_integer("batch_size", 100, "Training batch size.")
flags.DEFINE_integer("eval_samples", 5000, "Importance samples per test image.")
flags.DEFINE_integer("eval_images", 100, "Test images timed for the MLP models (VAE, HVAE), and by "
                     "--evaluation.")
flags.DEFINE_integer("conv_eval_images", 2, "Test images timed for convHVAE and PixelHVAE (each takes "
                     "seconds at S=5000).")
flags.DEFINE_list("compute_dtypes", ["float32", "auto"], "Precision modes to time each configuration in, side by "
                  "side (tfvamp/precision.py: float32, mixed, bfloat16, auto); duplicates after resolving auto are "
                  "dropped.")
flags.DEFINE_integer("rounds", 1, "Time every configuration this many times in each mode, alternating the modes "
                     "(the speed-ups use the medians).")
flags.DEFINE_bool("standard_rows", True, "Also the standard-prior rows of each model (the baseline of 'vs std').")
flags.DEFINE_integer("threads", 0, "TensorFlow threads of every process (0 = its default: every core).")
flags.DEFINE_enum("eval_prior_dtype", "float32", ["float64", "float32"],
                  "Precision of the mixture prior's log-density in the IS estimator.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the train step.")
flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
flags.DEFINE_integer("epochs", 5, "Also time this many whole epochs of the real loop (input pipeline, validation, "
                     "checkpoint, TensorBoard) for the VampPrior rows at K = 500 (and in --quick), over static "
                     "MNIST's files when found (--manual_dir / $TFVAMP_MANUAL_DIR), else synthetic images; 0 = off.")
flags.DEFINE_string("manual_dir", None, "Original data files (static MNIST for the epoch rows).")
flags.DEFINE_bool("colour_rows", True, "Also the 32x32x3 rows: convHVAE and PixelHVAE with a VampPrior (K = 500) on "
                  "8-bit colour images.")
flags.DEFINE_bool("quick", False, "Smoke test: VAE and HVAE, K in {1, 50}, S=50, 2 repeats (flags given "
                  "explicitly, e.g. --models, win).")
flags.DEFINE_string("output_json", None, "Write all numbers here as JSON.")
flags.DEFINE_integer("op_profile", 0, "Also print the N slowest ops of each configuration's train step and "
                     "evaluation (a TensorFlow profiler trace; 0 = off).")
flags.DEFINE_string("worker", None, "Internal: run one configuration (JSON) and print its numbers.")
# Two other measurements instead of the grid.
flags.DEFINE_bool("evaluation", False, "Instead of the grid: time `tfvamp.evaluation.evaluate` of a randomly "
                  "initialised --eval_model on --eval_images random binary 28x28 images at --eval_samples and print "
                  "images/s as JSON (speed does not depend on training).")
flags.DEFINE_string("eval_model", "vae", "Model family for --evaluation.")
flags.DEFINE_string("eval_prior", "vampprior", "Prior for --evaluation (K = --eval_components).")
flags.DEFINE_integer("eval_components", 500, "K for --evaluation.")
flags.DEFINE_integer("eval_batch_size", 0, "Images per batch for --evaluation (0 = 100).")
flags.DEFINE_integer("chunk_size", 0, "Importance samples per network pass for --evaluation (0 = automatic).")
flags.DEFINE_bool("progress", True, "A progress bar for --evaluation.")
flags.DEFINE_integer("xla_steps", 0, "Instead of the grid: time this many train steps of the run that scripts/train.py's "
                     "flags after `--` describe, with and without XLA, and print ms/step, e.g. "
                     "--xla_steps 10 -- --flagfile configs/static_mnist_hvae_vampprior.cfg", lower_bound=0)


# ---- one configuration, in its own process ------------------------------------------------
def _worker_setup(spec):
    """The run config, its trainer and one fixed batch of the row's image shape: binary 28x28x1
    (static MNIST's shape and likelihood) or 8-bit colour (e.g. 32x32x3, discretized logistic)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tfvamp import data, training  # pylint: disable=import-outside-toplevel
    from tfvamp import flags as tflags  # pylint: disable=import-outside-toplevel

    shape = tuple(spec.get("image_shape", (28, 28, 1)))
    binary = shape == (28, 28, 1)
    info = data.get_info("static_mnist") if binary else data.DatasetInfo(
        "synthetic_8bit", shape, "discretized_logistic", 0.5, 0.02, {"train": 5000, "validation": 500, "test": 500},
        False, None, "bins")
    config = tflags.validate_config(tflags.default_config(
        dataset=info.name, model=spec["model"], prior=spec["prior"],
        num_components=spec["k"], batch_size=spec["batch_size"], model_dir=tempfile.mkdtemp(prefix="tfvamp_bench_"),
        jit_compile=spec["jit_compile"], compute_dtype=spec["compute_dtype"], progress=False, evaluate=False,
        export=False), info=info)
    rng = np.random.default_rng(0)
    if binary:
        x = (rng.uniform(size=(spec["batch_size"],) + shape) < 0.13).astype(np.float32)
    else:
        x = ((rng.integers(0, 256, (spec["batch_size"],) + shape) + 0.5) / 256).astype(np.float32)
    return config, info, training.Trainer(config), x


def _epoch_splits(spec, info, x):
    """The data of the epoch rows: static MNIST from its files when they are there, else images
    of the row's shape through the same pipeline (`tfvamp.data.from_array`)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tfvamp import data  # pylint: disable=import-outside-toplevel

    if spec.get("manual_dir") and info.name == "static_mnist" and not spec["quick"]:
        return data.load("static_mnist", spec["batch_size"], manual_dir=spec["manual_dir"],
                         eval_batch_size=100), "static MNIST"
    count = 20 * spec["batch_size"] if spec["quick"] else 100 * spec["batch_size"]
    images = np.resize(np.round(x * 255).astype(np.uint8), (count,) + x.shape[1:])
    if info.likelihood == "bernoulli":
        images = (images > 127).astype(np.uint8)
    return data.from_array(images, spec["batch_size"], eval_batch_size=100), f"{count} synthetic images"


def _run_worker(spec):
    from tfvamp import distribute  # pylint: disable=import-outside-toplevel

    distribute.set_threads(spec.get("threads", 0))  # before TensorFlow starts
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tfvamp import profiling  # pylint: disable=import-outside-toplevel

    config, info, trainer, x = _worker_setup(spec)
    out = {"model": spec["model"], "prior": spec["prior"], "k": spec["k"], "jit_compile": trainer.jit_compile,
           "round": spec.get("round", 0),
           "image_shape": list(x.shape[1:]), "compute_dtype": spec["compute_dtype"],
           "train": _beside_peak(lambda: profiling.benchmark_training(trainer, x, repeats=spec["repeats"]))}
    if spec.get("eval_images"):
        x_eval = x[:spec["eval_images"]]
        out["eval"] = _beside_peak(lambda: profiling.benchmark_evaluation(
            trainer.model, x_eval, spec["eval_samples"], repeats=1 if spec["quick"] else 2,
            prior_dtype=spec["eval_prior_dtype"]))
    if spec.get("op_profile"):
        top = int(spec["op_profile"])
        out["train_ops"] = profiling.op_times(trainer.train_step, tf.constant(x), calls=10)[1][:top]
        if spec.get("eval_images"):
            x_eval = tf.constant(x[:spec["eval_images"]])
            out["eval_ops"] = profiling.op_times(
                lambda: trainer.model.log_likelihood(x_eval, spec["eval_samples"], prior_dtype=spec["eval_prior_dtype"]),
                calls=1, warmup=1)[1][:top]
    if spec.get("epochs"):
        splits, source = _epoch_splits(spec, info, x)
        out["epochs"] = dict(profiling.benchmark_epochs(config, splits, x, epochs=spec["epochs"]), data=source)
    out["peak_rss_mb"] = profiling.peak_rss_bytes() / 2 ** 20
    print("RESULT " + json.dumps(out), flush=True)


def _beside_peak(measure):
    """`measure()`'s dict, plus `beside_peak_flops` and `beside_peak_flops_bfloat16`: the float32
    and bfloat16 matmul rates measured just before and after it (the better of the two). On a
    shared host the machine's speed drifts over a long run; a fraction against this peak tells
    the host's drift from the code's, and their ratio is the bfloat16 gain on offer right then."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tfvamp import profiling  # pylint: disable=import-outside-toplevel

    def peaks():
        return [profiling.matmul_peak(sizes=(2048,), repeats=3, dtype=d) for d in (tf.float32, tf.bfloat16)]

    before = peaks()
    result = measure()
    after = peaks()
    result["beside_peak_flops"] = max(before[0], after[0])
    result["beside_peak_flops_bfloat16"] = max(before[1], after[1])
    return result


def _spawn(spec):
    cmd = [sys.executable, "-m", "tfvamp.cli.benchmark", "--worker", json.dumps(spec)]  # its own process
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"Benchmark worker failed for {spec}:\n{proc.stderr[-3000:]}")


# ---- the grid ---------------------------------------------------------------------------------
def _machine():
    import platform  # pylint: disable=import-outside-toplevel

    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tfvamp import distribute  # pylint: disable=import-outside-toplevel
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": distribute.available_cores(), "tensorflow": tf.__version__,
            "python": platform.python_version(), "gpus": len(tf.config.list_physical_devices("GPU"))}


def _table(rows, peak):
    header = ("model", "image", "prior", "K", "dtype", "step ms", "steps/s", "ex/s", "GFLOP/step", "GFLOP/s", "% peak",
              "vs std", "eval img/s", "eval MFLOP/img", "eval % peak", "peak MB", "% beside (train, eval)")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for r in rows:
        t = r["train"]
        rate = t["flops_per_step"] / t["seconds_per_step"]
        ev = r.get("eval")
        ev_rate = ev["flops_per_image"] * ev["images_per_second"] if ev else None
        mode = r.get("compute_dtype", config_lib.LEGACY_DEFAULTS["compute_dtype"])  # rows from before the field
        cells = (r["model"], "x".join(map(str, r.get("image_shape", (28, 28, 1)))), r["prior"],
                 str(r["k"]) if r["prior"] != "standard" else "-", mode,
                 f"{1000 * t['seconds_per_step']:.1f}", f"{t['steps_per_second']:.1f}",
                 f"{t['examples_per_second']:.0f}", f"{t['flops_per_step'] / 1e9:.2f}", f"{rate / 1e9:.0f}",
                 f"{100 * rate / peak:.0f}%", f"{r['overhead']:.2f}x" if r.get("overhead") else "1.00x",
                 f"{ev['images_per_second']:.2f}" if ev else "-",
                 f"{ev['flops_per_image'] / 1e6:.0f}" if ev else "-",
                 f"{100 * ev_rate / peak:.0f}%" if ev else "-", f"{r['peak_rss_mb']:.0f}",
                 f"{100 * rate / t['beside_peak_flops']:.0f}%"
                 + (f", {100 * ev_rate / ev['beside_peak_flops']:.0f}%" if ev else ""))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _grid(models, components, eval_samples, repeats, epochs, manual_dir):
    """The worker specs: each model x (standard, VampPrior at each K) on 28x28x1, then the colour rows."""
    specs = []
    common = {"batch_size": FLAGS.batch_size, "eval_samples": eval_samples, "threads": FLAGS.threads,
              "eval_prior_dtype": FLAGS.eval_prior_dtype, "jit_compile": FLAGS.jit_compile, "repeats": repeats,
              "quick": FLAGS.quick, "manual_dir": manual_dir, "op_profile": FLAGS.op_profile}
    for model in models:
        conv = model in ("convhvae", "pixelhvae")
        standard = [("standard", 1)] if FLAGS.standard_rows else []
        for prior, k in standard + [("vampprior", k) for k in components]:
            paper_k = prior == "standard" or k == 500 or FLAGS.quick
            specs.append(dict(common, model=model, prior=prior, k=k, image_shape=[28, 28, 1],
                              # Evaluation at the paper's K (and the standard prior) only: it is the slow part.
                              eval_images=(FLAGS.conv_eval_images if conv else FLAGS.eval_images) if paper_k else 0,
                              epochs=epochs if (prior == "vampprior" and (k == 500 or FLAGS.quick)
                                                      and not conv) else 0))
    if FLAGS.colour_rows and not FLAGS.quick:
        for model in ("convhvae", "pixelhvae"):
            specs.append(dict(common, model=model, prior="vampprior", k=500, image_shape=[32, 32, 3],
                              eval_images=FLAGS.conv_eval_images, epochs=0))
    return specs


def _print_row(row, peak):
    """One configuration's numbers as they come in (and, with --op_profile, its slowest ops)."""
    t = row["train"]
    print(f"    {1000 * t['seconds_per_step']:.1f} ms/step, "
          f"{100 * t['flops_per_step'] / t['seconds_per_step'] / peak:.0f}% of peak "
          f"({100 * t['flops_per_step'] / t['seconds_per_step'] / t['beside_peak_flops']:.0f}% of the "
          f"matmul rate beside it)"
          + (f"; eval {row['eval']['images_per_second']:.2f} img/s" if "eval" in row else "")
          + (f"; {row['epochs']['seconds_per_epoch']:.2f} s per epoch, epoch/steps "
             f"{row['epochs']['epoch_over_steps']:.2f} (training loop alone {row['epochs']['train_over_steps']:.2f}; "
             f"slowest epoch / median {row['epochs']['slowest_over_median']:.2f})" if "epochs" in row else ""),
          flush=True)
    if "epochs" in row and row["epochs"]["epoch_over_steps"] > 1.1:
        e = row["epochs"]
        print(f"    WARNING: an epoch takes {e['epoch_over_steps']:.2f}x its steps' time ({e['data']}): something "
              f"other than the steps waits (the training loop alone: {e['train_over_steps']:.2f}x, the rest is "
              "the validation pass, checkpoints and TensorBoard).", flush=True)
    for key, label in (("train_ops", "train step"), ("eval_ops", "evaluation")):
        if key in row:
            print(f"      slowest ops of the {label} (ms per call, overlapping):")
            for name, op_type, seconds, count in row[key]:
                print(f"      {1000 * seconds:8.2f}  {count:6.1f}x  {op_type:<24} {name}")


def _compute_dtypes():
    """--compute_dtypes resolved on this machine (auto -> a concrete mode), duplicates dropped:
    [(mode, how it was chosen)]."""
    from tfvamp import precision  # pylint: disable=import-outside-toplevel
    chosen = []
    for requested in FLAGS.compute_dtypes:
        try:
            choice = precision.resolve(requested)
        except ValueError as e:
            raise app.UsageError(f"--compute_dtypes: {e}") from None
        if choice.mode not in [mode for mode, _ in chosen]:
            chosen.append((choice.mode, f"{requested}: {choice.reason}" if requested == "auto" else "given"))
    return chosen


def _median(values):
    values = sorted(values)
    return 0.5 * (values[(len(values) - 1) // 2] + values[len(values) // 2])


def _speedup(key, base, other, baseline, mode):
    """One configuration's medians over rounds in `mode` against `baseline`."""
    both = base + other
    step = lambda rs: 1000 * _median([r["train"]["seconds_per_step"] for r in rs])  # noqa: E731
    entry = {"model": key[0], "prior": key[1], "k": key[2], "image_shape": list(key[3]), "compute_dtype": mode,
             "step_ms": {baseline: step(base), mode: step(other)},
             "matmul_ratio_beside": _median([r["train"]["beside_peak_flops_bfloat16"] / r["train"]["beside_peak_flops"]
                                             for r in both])}
    entry["train_speedup"] = entry["step_ms"][baseline] / entry["step_ms"][mode]
    cpu = lambda rs: _median([r["train"]["cpu_seconds_per_step"] for r in rs])  # noqa: E731
    entry["train_speedup_cpu"] = cpu(base) / cpu(other)
    if all("eval" in r for r in both):
        rate = lambda rs, key="images_per_second": _median([r["eval"][key] for r in rs])  # noqa: E731
        entry["eval_images_per_second"] = {baseline: rate(base), mode: rate(other)}
        entry["eval_speedup"] = rate(other) / rate(base)
        entry["eval_speedup_cpu"] = rate(other, "cpu_images_per_second") / rate(base, "cpu_images_per_second")
    return entry


def speedups(rows, baseline="float32"):
    """Per configuration and mode, the medians over rounds against `baseline`: train step and
    evaluation speed-ups, beside the bfloat16 / float32 matmul ratio measured next to the timings."""
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["prior"], r["k"], tuple(r["image_shape"])), []).append(r)
    out = []
    for key, mine in groups.items():
        base = [r for r in mine if r["compute_dtype"] == baseline]
        for mode in dict.fromkeys(r["compute_dtype"] for r in mine if r["compute_dtype"] != baseline):
            if base:
                out.append(_speedup(key, base, [r for r in mine if r["compute_dtype"] == mode], baseline, mode))
    return out


def _speedup_table(entries, peak_ratio):
    lines = [f"speed-ups against float32 (bfloat16 / float32 matmul peak ratio {peak_ratio:.2f}; with --threads 1 "
             "from CPU time):",
             "model | image | prior | K | mode | step ms float32 -> mode | train speed-up (CPU time) | eval img/s "
             "float32 -> mode | eval speed-up (CPU time) | bf16/fp32 matmul ratio beside",
             "--- | --- | --- | --- | --- | --- | --- | --- | --- | ---"]
    for e in entries:
        base, mode = "float32", e["compute_dtype"]
        ev = e.get("eval_images_per_second")
        lines.append(" | ".join([
            e["model"], "x".join(map(str, e["image_shape"])), e["prior"], str(e["k"]) if e["prior"] != "standard"
            else "-", mode, f"{e['step_ms'][base]:.1f} -> {e['step_ms'][mode]:.1f}",
            f"{e['train_speedup']:.2f}x ({e['train_speedup_cpu']:.2f}x)",
            f"{ev[base]:.2f} -> {ev[mode]:.2f}" if ev else "-",
            f"{e['eval_speedup']:.2f}x ({e['eval_speedup_cpu']:.2f}x)" if ev else "-",
            f"{e['matmul_ratio_beside']:.2f}"]))
    return "\n".join(lines)


def _options():
    """The run's settings, --quick shrinking what the user did not set explicitly."""
    quick = lambda name, small, full: small if FLAGS.quick and not FLAGS[name].present else full  # noqa: E731
    models = quick("models", ["vae", "hvae"], FLAGS.models)
    unknown = sorted(set(models) - {"vae", "hvae", "convhvae", "pixelhvae"})
    if unknown:
        raise app.UsageError(f"--models: unknown model(s) {unknown}; choose from vae, hvae, convhvae, pixelhvae.")
    components = quick("components", [1, 50], [int(k) for k in FLAGS.components])
    if min(components) < 1:
        raise app.UsageError(f"--components must all be >= 1, got {components}.")
    if FLAGS.rounds < 1 or FLAGS.threads < 0:
        raise app.UsageError("--rounds must be >= 1 and --threads >= 0.")
    return dict(models=models, components=components, eval_samples=quick("eval_samples", 50, FLAGS.eval_samples),
                repeats=quick("repeats", 2, FLAGS.repeats), epochs=quick("epochs", 3, FLAGS.epochs),
                manual_dir=FLAGS.manual_dir or os.environ.get("TFVAMP_MANUAL_DIR"))


def _run_grid(options, modes, peak):
    """Every configuration in every mode, --rounds times alternating; the rows as they come."""
    rows = []
    for spec in _grid(options["models"], options["components"], options["eval_samples"], options["repeats"],
                      options["epochs"], options["manual_dir"]):
        label = f"{spec['model']} {spec['prior']}" + (f" K={spec['k']}" if spec["prior"] != "standard" else "")
        for round_index in range(FLAGS.rounds):
            for mode in modes:
                print(f"... {label} {'x'.join(map(str, spec['image_shape']))} {mode}"
                      + (f" (round {round_index + 1})" if FLAGS.rounds > 1 else ""), flush=True)
                row = _spawn(dict(spec, compute_dtype=mode, round=round_index))
                standard = [r for r in rows if r["model"] == row["model"] and r["prior"] == "standard"
                            and r["image_shape"] == row["image_shape"] and r["compute_dtype"] == mode]
                if row["prior"] != "standard" and standard:
                    row["overhead"] = row["train"]["seconds_per_step"] / standard[-1]["train"]["seconds_per_step"]
                rows.append(row)
                _print_row(row, peak)
    return rows


def evaluation_benchmark():
    """Images per second of `evaluate` for a random-init 28x28 model (speed does not depend on training)."""
    # pylint: disable=import-outside-toplevel
    import platform
    import time

    import numpy as np
    import tensorflow as tf

    import tfvamp
    from tfvamp import estimator
    from tfvamp import evaluation

    model = tfvamp.build_model(FLAGS.eval_model, FLAGS.eval_prior, (28, 28, 1), "bernoulli",
                               num_components=FLAGS.eval_components, seed=0)
    batch_size = FLAGS.eval_batch_size or 100
    images = (np.random.default_rng(0).random((FLAGS.eval_images, 28, 28, 1)) < 0.2).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    chunk = FLAGS.chunk_size or None
    evaluation.evaluate(model, dataset.take(1), num_samples=2, chunk_size=chunk, progress=False)  # tracing
    cpu = time.process_time()
    summary, _ = evaluation.evaluate(model, dataset, num_samples=FLAGS.eval_samples, chunk_size=chunk,
                                     progress=FLAGS.progress)
    cpu = time.process_time() - cpu  # all threads: robust to other processes sharing the cores
    used_chunk = chunk or estimator.default_chunk_size(model, min(batch_size, FLAGS.eval_images),
                                                       FLAGS.eval_samples)
    print(json.dumps({"model": FLAGS.eval_model, "prior": FLAGS.eval_prior,
                      "num_components": FLAGS.eval_components, "num_samples": FLAGS.eval_samples,
                      "batch_size": batch_size, "chunk_size": used_chunk, "images": summary["num_examples"],
                      "seconds": round(summary["seconds"], 2),
                      "images_per_second": round(summary["images_per_second"], 3),
                      "cpu_seconds_per_image": round(cpu / summary["num_examples"], 4),
                      "load_average": os.getloadavg()[0],
                      "tensorflow": tf.__version__, "cpu_count": os.cpu_count(), "machine": platform.processor()
                      or platform.machine()}, indent=2))


def xla_benchmark(argv):
    """ms per train step with and without XLA for the run that the training flags `argv[1:]`
    describe (`tfvamp.profiling.benchmark_xla`), under the strategy and threads training would use."""
    # pylint: disable=import-outside-toplevel
    from tfvamp import data
    from tfvamp import distribute
    from tfvamp import flags as tflags
    from tfvamp import profiling

    train_flags = tflags.define_flags(flags.FlagValues())
    try:
        train_flags([sys.argv[0]] + list(argv[1:]))
        distribute.set_threads(train_flags.threads)
    except (flags.Error, ValueError) as e:
        return console.fail(f"scripts/train.py flags after --: {e}\n{console.FLAG_HINT}", 2)
    devices = distribute.split_cpu(train_flags.cpu_devices) if train_flags.cpu_devices > 1 else None
    try:
        config = tflags.config_from_flags(train_flags)
    except data.DataError as e:
        return console.fail(str(e), 1)
    except ValueError as e:
        return console.fail(f"{e}\n{console.FLAG_HINT}", 2)
    strategy = distribute.make_strategy(config.training.strategy, devices=devices)
    timings = profiling.benchmark_xla(config, steps=FLAGS.xla_steps, strategy=strategy)
    for jit, seconds in sorted(timings.items()):
        print(f"{config.model.model} {config.model.prior} {config.data.dataset} batch {config.training.batch_size} "
              f"jit_compile={jit}: {1000 * seconds:.1f} ms/step")
    return 0


def _main(argv):
    if FLAGS.worker:
        _run_worker(json.loads(FLAGS.worker))
        return 0
    if FLAGS.evaluation:
        return evaluation_benchmark()
    if FLAGS.xla_steps:
        return xla_benchmark(argv)
    options = _options()
    from tfvamp import distribute  # pylint: disable=import-outside-toplevel
    layout = distribute.set_threads(FLAGS.threads)  # the peaks with the workers' thread layout
    from tfvamp import profiling  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    modes = _compute_dtypes()
    machine = _machine()
    peak, peak_bf16 = profiling.matmul_peak(), profiling.matmul_peak(dtype=tf.bfloat16)
    print(f"machine: {machine}" + (f", {FLAGS.threads} thread(s)" if FLAGS.threads else "")
          + f"; TensorFlow threads (intra-op, inter-op): {layout} (0 = TensorFlow's default)")
    print(f"CPU: {machine['cpu']}; dense matmul peak: float32 {peak / 1e9:.0f} GFLOP/s, bfloat16 {peak_bf16 / 1e9:.0f} "
          f"GFLOP/s (bfloat16 / float32 = {peak_bf16 / peak:.2f})", flush=True)
    cpu_peaks = None
    if FLAGS.threads == 1:  # one thread: CPU time is the core's own rate, whatever else runs on the host
        cpu_peaks = [profiling.matmul_peak(sizes=(1024, 2048), dtype=d, cpu=True) for d in (tf.float32, tf.bfloat16)]
        print(f"  by CPU time (one thread): float32 {cpu_peaks[0] / 1e9:.0f} GFLOP/s, bfloat16 {cpu_peaks[1] / 1e9:.0f} "
              f"GFLOP/s (bfloat16 / float32 = {cpu_peaks[1] / cpu_peaks[0]:.2f})", flush=True)
    print("compute dtypes: " + "; ".join(f"{mode} ({how})" for mode, how in modes), flush=True)
    if FLAGS.epochs and not FLAGS.quick and not options["manual_dir"]:
        print("note: the epoch rows run on synthetic images: static MNIST's files were not found (--manual_dir or "
              "TFVAMP_MANUAL_DIR, e.g. ../shared/data).", flush=True)
    rows = _run_grid(options, [mode for mode, _ in modes], peak)
    print()
    print(_table(rows, peak))
    gains = speedups(rows)
    if gains:
        print()
        print(_speedup_table(gains, cpu_peaks[1] / cpu_peaks[0] if cpu_peaks else peak_bf16 / peak))
    result = {"machine": machine, "matmul_peak_flops": peak, "matmul_peak_flops_bfloat16": peak_bf16,
              "matmul_ratio": peak_bf16 / peak, "threads": FLAGS.threads,
              "thread_layout": {"intra_op": layout[0], "inter_op": layout[1]},
              "matmul_peak_flops_cpu_time": cpu_peaks and {"float32": cpu_peaks[0], "bfloat16": cpu_peaks[1],
                                                           "ratio": cpu_peaks[1] / cpu_peaks[0]},
              "batch_size": FLAGS.batch_size,
              "eval_samples": options["eval_samples"], "compute_dtypes": [mode for mode, _ in modes],
              "eval_prior_dtype": FLAGS.eval_prior_dtype, "command": " ".join(sys.argv), "rows": rows,
              "speedups": gains}
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {FLAGS.output_json}")
    return 0


def main():
    cli.run(_main, __name__)


if __name__ == "__main__":
    main()
