"""Every training flag, defined and validated in one place.

    python scripts/train.py --flagfile configs/frey.cfg [--flag=value ...]

`define_flags()` registers the flags (absl; `--flagfile` works natively and later flags win,
so `--flagfile configs/frey.cfg --flagfile configs/quick.cfg` is the Frey run, shrunk).
`config_from_flags()` turns parsed flags into the run's config dict, filling dataset defaults
(input shape, likelihood, pseudo-input initialisation) and validating everything up front, so
a bad combination fails in a second with a message instead of hours later.
`validate_config()` does the checks for a config built any other way (tests, notebooks).
"""
import math
import os

from absl import flags

from tfvamp import distribute
from tfvamp import likelihoods
from tfvamp import models
from tfvamp import priors

DATASETS = ("static_mnist", "dynamic_mnist", "omniglot", "caltech101_silhouettes", "frey_faces",
            "histopathology")
OPTIMIZERS = ("adam_norm_grad", "adam")
PSEUDO_INPUTS_INIT = ("random", "data")
JIT_CHOICES = ("auto", "true", "false")
VAMP_PRIORS = ("vampprior", "vampprior_data", "weighted_vampprior")
CONV_MODELS = ("convhvae", "pixelhvae")
# The smallest image side the conv encoders take: two stride-2 convolutions must leave a
# spatial map (4 -> 2 -> 1).
MIN_CONV_SIDE = 4

# Defaults a flag leaves to the dataset (None until `config_from_flags` fills them in).
DATASET_DEFAULTS = ("likelihood", "pseudo_inputs_mean", "pseudo_inputs_std")


def define_flags(flag_values=flags.FLAGS):
    """Registers the training flags on `flag_values` (once; calling again is a no-op)."""
    if "dataset" in flag_values:
        return flag_values
    fv = dict(flag_values=flag_values)
    # What to train.
    flags.DEFINE_enum("dataset", None, DATASETS, "Dataset to train on.", **fv)
    flags.DEFINE_enum("model", "vae", models.MODELS, "Model family (SPEC section 4).", **fv)
    flags.DEFINE_enum("prior", "vampprior", priors.PRIORS, "Prior on the top latent (SPEC section 2).", **fv)
    flags.DEFINE_enum("likelihood", None, likelihoods.LIKELIHOODS,
                      "p(x|z); default: the dataset's (bernoulli for binary data, "
                      "discretized_logistic for gray).", **fv)
    flags.DEFINE_integer("num_components", 500, "K: pseudo-inputs (VampPriors) or mixture components (mog).", **fv)
    flags.DEFINE_integer("z1_size", 40, "Size of z1 (the VAE's z).", **fv)
    flags.DEFINE_integer("z2_size", 40, "Size of z2, the top latent of the two-level models.", **fv)
    flags.DEFINE_enum("pseudo_inputs_init", "random", PSEUDO_INPUTS_INIT,
                      "VampPrior pseudo-inputs: 'random' = N(pseudo_inputs_mean, pseudo_inputs_std); "
                      "'data' = K random training images (the release's --use_training_data_init). "
                      "vampprior_data always uses training images.", **fv)
    flags.DEFINE_float("pseudo_inputs_mean", None, "Mean of the pseudo-input init; default: the dataset's.", **fv)
    flags.DEFINE_float("pseudo_inputs_std", None, "Std of the pseudo-input init; default: the dataset's.", **fv)
    # Optimisation.
    flags.DEFINE_enum("optimizer", "adam_norm_grad", OPTIMIZERS,
                      "adam_norm_grad: Adam on per-tensor normalised gradients (the paper's).", **fv)
    flags.DEFINE_float("lr", 5e-4, "Learning rate.", **fv)
    flags.DEFINE_integer("batch_size", 100, "Global training batch size (split over replicas).", **fv)
    flags.DEFINE_integer("eval_batch_size", 100, "Batch size of validation and test evaluation.", **fv)
    flags.DEFINE_integer("epochs", 2000, "Maximum number of epochs.", **fv)
    flags.DEFINE_integer("warmup_epochs", 100, "KL warm-up: beta = min(epoch / warmup_epochs, 1), "
                         "epochs counted from 1; 0 = no warm-up.", **fv)
    flags.DEFINE_integer("early_stopping_epochs", 50, "Stop after this many epochs without a better "
                         "validation loss (the counter is held at 0 during warm-up).", **fv)
    flags.DEFINE_integer("seed", 14, "Seed of initialisation, data order and noise.", **fv)
    flags.DEFINE_integer("max_steps_per_epoch", 0, "Cap on training steps per epoch (0 = a full "
                         "pass). For smoke tests.", **fv)
    flags.DEFINE_integer("max_eval_batches", 0, "Cap on validation and test batches (0 = the whole "
                         "split). For smoke tests only: results then cover part of the test set.", **fv)
    # Evaluation.
    flags.DEFINE_integer("eval_samples", 5000, "Importance samples per test image for log p(x).", **fv)
    flags.DEFINE_integer("eval_chunk_size", 0, "Importance samples per network pass (0 = automatic).", **fv)
    flags.DEFINE_bool("evaluate", True, "Evaluate the best model on the test set at the end.", **fv)
    flags.DEFINE_bool("export", True, "Export the best model as a SavedModel at the end.", **fv)
    flags.DEFINE_string("export_dir", None, "SavedModel directory; default saved_models/<basename of "
                        "model_dir>.", **fv)
    # Where things are.
    flags.DEFINE_string("model_dir", None, "Run directory: config, checkpoints, best weights, "
                        "TensorBoard, results. Re-running with the same directory resumes.", **fv)
    flags.DEFINE_string("data_dir", None, "Where prepared datasets are cached.", **fv)
    flags.DEFINE_string("manual_dir", None, "Where the original dataset files are (default: "
                        "$TFVAMP_MANUAL_DIR).", **fv)
    # Hardware.
    flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                      "auto: MultiWorkerMirrored when TF_CONFIG names several workers, else Mirrored over "
                      "the local GPUs (the CPU when there is none).", **fv)
    flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices and mirror over "
                         "them (testing multi-replica code without GPUs; 0 = don't).", **fv)
    flags.DEFINE_integer("threads", 0, "TensorFlow's intra- and inter-op threads (0 = TensorFlow's "
                         "default: every core). --threads=1 keeps a long run to one core.", **fv)
    flags.DEFINE_enum("compute_dtype", "float32", models.COMPUTE_DTYPES,
                      "Hidden-layer compute dtype: bfloat16 runs the networks' matmuls and convolutions "
                      "in bfloat16 (float32 variables, heads and densities); see docs/benchmarks.md.", **fv)
    flags.DEFINE_enum("jit_compile", "auto", JIT_CHOICES,
                      "XLA-compile the per-replica forward/backward pass. auto: on where it was measured "
                      "to help (docs/training.md).", **fv)
    # Logging.
    flags.DEFINE_integer("image_every_epochs", 10, "TensorBoard image grids (samples, reconstructions, "
                         "pseudo-inputs) every this many epochs (and at the first and last).", **fv)
    flags.DEFINE_integer("num_images", 64, "Images per TensorBoard grid.", **fv)
    flags.DEFINE_integer("checkpoints_to_keep", 3, "Epoch checkpoints kept in <model_dir>/checkpoints.", **fv)
    flags.DEFINE_bool("progress", True, "A progress bar per epoch on the console.", **fv)
    flags.DEFINE_integer("benchmark_xla", 0, "If > 0: time this many train steps with and without XLA, "
                         "print the numbers and exit (no training).", **fv)
    flags.mark_flag_as_required("dataset", flag_values=flag_values)
    return flag_values


# The flags that make up a run's config (everything define_flags defines).
FLAG_NAMES = (
    "dataset", "model", "prior", "likelihood", "num_components", "z1_size", "z2_size",
    "pseudo_inputs_init", "pseudo_inputs_mean", "pseudo_inputs_std", "optimizer", "lr", "batch_size",
    "eval_batch_size", "epochs", "warmup_epochs", "early_stopping_epochs", "seed",
    "max_steps_per_epoch", "max_eval_batches", "eval_samples", "eval_chunk_size", "evaluate", "export",
    "export_dir", "model_dir", "data_dir", "manual_dir", "strategy", "cpu_devices", "threads", "compute_dtype",
    "jit_compile", "image_every_epochs", "num_images", "checkpoints_to_keep", "progress", "benchmark_xla")


def default_config(**overrides):
    """The flags' defaults as a config dict, with `overrides` applied (for building runs in code)."""
    fv = flags.FlagValues()
    define_flags(fv)
    config = {name: fv[name].default for name in FLAG_NAMES}
    unknown = set(overrides) - set(config) - {"input_shape"}
    if unknown:
        raise ValueError(f"Unknown config keys {sorted(unknown)}; known: {sorted(config)}.")
    config.update(overrides)
    return config


def config_from_flags(flag_values=flags.FLAGS):
    """The validated run config (a JSON-able dict) from parsed flags."""
    return validate_config({name: flag_values[name].value for name in FLAG_NAMES})


def _dataset_info(name):
    """`tfvamp.data.get_info(name)`, imported lazily (the data module pulls in TFDS)."""
    from tfvamp import data  # pylint: disable=import-outside-toplevel
    return data.get_info(name)


def run_name(config):
    """The run's name: the basename of its model_dir."""
    return os.path.basename(os.path.normpath(config["model_dir"]))


def validate_config(config, info=None):
    """Checks a run config, fills dataset defaults and returns a new dict.

    Adds `input_shape` (from the dataset) and resolves `likelihood`, `pseudo_inputs_mean`,
    `pseudo_inputs_std` and `export_dir` when they are None. Raises ValueError with a message
    naming the flag for anything that cannot work.

    Args:
      config: dict with the keys `define_flags` defines.
      info: optional `tfvamp.data.DatasetInfo` (default: looked up by `config['dataset']`).
    """
    config = dict(config)
    missing = [k for k in FLAG_NAMES if k not in config]
    if missing:
        raise ValueError(f"Config lacks {missing}.")
    errors = []

    def check(ok, message):
        if not ok:
            errors.append(message)

    dataset = config["dataset"]
    if dataset not in DATASETS:
        raise ValueError(f"--dataset: unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    check(config["model"] in models.MODELS,
          f"--model: unknown model {config['model']!r}; choose one of {', '.join(models.MODELS)}.")
    check(config["prior"] in priors.PRIORS,
          f"--prior: unknown prior {config['prior']!r}; choose one of {', '.join(priors.PRIORS)}.")
    check(config["optimizer"] in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}.")
    check(config["strategy"] in distribute.STRATEGIES,
          f"--strategy must be one of {', '.join(distribute.STRATEGIES)}.")
    check(config["compute_dtype"] in models.COMPUTE_DTYPES,
          f"--compute_dtype must be one of {', '.join(models.COMPUTE_DTYPES)}.")
    check(str(config["jit_compile"]) in JIT_CHOICES, f"--jit_compile must be one of {', '.join(JIT_CHOICES)}.")
    check(config["pseudo_inputs_init"] in PSEUDO_INPUTS_INIT,
          f"--pseudo_inputs_init must be one of {', '.join(PSEUDO_INPUTS_INIT)}.")
    if config["likelihood"] is not None:
        check(config["likelihood"] in likelihoods.LIKELIHOODS,
              f"--likelihood must be one of {', '.join(likelihoods.LIKELIHOODS)}.")
    check(not config["model_dir"] is None and str(config["model_dir"]).strip() != "",
          "--model_dir is required: the run directory (re-using one resumes that run).")
    for name, low in (("num_components", 1), ("z1_size", 1), ("z2_size", 1), ("batch_size", 1),
                      ("eval_batch_size", 1), ("epochs", 1), ("warmup_epochs", 0),
                      ("early_stopping_epochs", 0), ("eval_samples", 1), ("max_steps_per_epoch", 0),
                      ("max_eval_batches", 0), ("eval_chunk_size", 0), ("cpu_devices", 0), ("threads", 0),
                      ("image_every_epochs", 0), ("num_images", 1), ("checkpoints_to_keep", 1),
                      ("benchmark_xla", 0), ("seed", 0)):
        value = config[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            label = "K (--num_components)" if name == "num_components" else f"--{name}"
            errors.append(f"{label} must be an integer >= {low}, got {value!r}.")
    lr = config["lr"]
    check(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0, f"--lr must be a positive number, got {lr!r}.")
    if errors:
        raise ValueError("Invalid training flags:\n  " + "\n  ".join(errors))

    info = info or _dataset_info(dataset)
    shape = tuple(int(d) for d in info.input_shape)
    config["input_shape"] = list(shape)
    if config["likelihood"] is None:
        config["likelihood"] = info.likelihood
    if config["pseudo_inputs_mean"] is None:
        config["pseudo_inputs_mean"] = float(info.pseudo_inputs_mean)
    if config["pseudo_inputs_std"] is None:
        config["pseudo_inputs_std"] = float(info.pseudo_inputs_std)
    if config["export_dir"] in (None, ""):
        config["export_dir"] = os.path.join("saved_models", run_name(config))

    # Combinations.
    gray = info.likelihood != "bernoulli"
    check(not (gray and config["likelihood"] == "bernoulli"),
          f"--likelihood=bernoulli cannot model {dataset}'s gray pixels; use discretized_logistic "
          "(the release's) or discretized_logistic_normalized.")
    if config["model"] in CONV_MODELS:
        check(len(shape) == 3 and min(shape[:2]) >= MIN_CONV_SIDE,
              f"--model={config['model']} needs images of at least {MIN_CONV_SIDE}x{MIN_CONV_SIDE} pixels "
              f"(two stride-2 convolutions); {dataset} has shape {shape}.")
    if config["model"] == "pixelhvae":
        check(shape[-1] == 1, f"--model=pixelhvae's masks assume one channel; {dataset} has {shape[-1]}.")
    mean, std = config["pseudo_inputs_mean"], config["pseudo_inputs_std"]
    check(std >= 0, f"--pseudo_inputs_std must be >= 0, got {std}.")
    if config["prior"] in VAMP_PRIORS and config["pseudo_inputs_init"] == "random" and config["prior"] != "vampprior_data":
        # Pseudo-inputs are clipped to [0, 1]: entries initialised outside never get a gradient.
        check(0.0 <= mean <= 1.0, f"--pseudo_inputs_mean={mean} lies outside [0, 1]: the clipped "
              "pseudo-inputs would start saturated and never learn (SPEC section 9).")
    num_train = int(info.num_examples["train"])
    if config["prior"] == "vampprior_data" or (config["prior"] in VAMP_PRIORS and config["pseudo_inputs_init"] == "data"):
        check(config["num_components"] <= num_train,
              f"K (--num_components={config['num_components']}) training images are needed as pseudo-inputs "
              f"but {dataset} has only {num_train}.")
    if config["prior"] == "standard" and config["pseudo_inputs_init"] == "data":
        errors.append("--pseudo_inputs_init=data needs a VampPrior (--prior=vampprior, weighted_vampprior).")
    check(config["batch_size"] <= num_train,
          f"--batch_size={config['batch_size']} exceeds the {num_train} training images of {dataset} "
          "(the last partial batch is dropped, so no step would run).")
    if errors:
        raise ValueError("Invalid training flags:\n  " + "\n  ".join(errors))
    return config
