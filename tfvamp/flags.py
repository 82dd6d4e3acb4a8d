"""Every training flag, defined and validated in one place.

    python scripts/train.py --flagfile configs/frey.cfg [--flag=value ...]

`FLAGS` is the one table of flags: `define_flags()` registers them (absl; `--flagfile` works
natively and later flags win, so `--flagfile configs/frey.cfg --flagfile configs/quick.cfg` is
the Frey run, shrunk), and `FLAG_NAMES`, the keys of a run's config, is read off it.
`config_from_flags()` turns parsed flags into the run's config (a frozen `tfvamp.config.RunConfig`),
filling dataset defaults (image shape, likelihood, pseudo-input initialisation) and validating
everything up front, so a bad combination fails in a second with a message instead of hours later.
`validate_config()` does the checks for a config built any other way (tests, notebooks:
`default_config(**overrides)`), and returns a new config.
"""
import math

from absl import flags

from tfvamp import checkpointing
from tfvamp import config as config_lib
from tfvamp import data
from tfvamp import distribute
from tfvamp import export
from tfvamp import image_sources
from tfvamp import initializers
from tfvamp import likelihoods
from tfvamp import models
from tfvamp import optimizers
from tfvamp import precision
from tfvamp import priors
from tfvamp.config import RunConfig

DATASETS = data.NAMES  # and your own images: folder:PATH, array:PATH, tfds:NAME[/CONFIG]
JIT_CHOICES = ("auto", "true", "false")
CONV_MODELS = ("convhvae", "pixelhvae")
# Defaults a flag leaves to the dataset (None until `validate_config` fills them in).
DATASET_DEFAULTS = ("likelihood", "pseudo_inputs_mean", "pseudo_inputs_std")

# (name, kind, default, choices or None, help). kind: enum, integer, float, bool, string.
FLAGS = (
    # What to train.
    ("dataset", "string", None, None, f"Dataset to train on: {', '.join(DATASETS)}; or your own images: "
     "folder:PATH (PNG/JPEG/BMP/GIF, sub-folders walked), array:PATH (.npy/.npz), tfds:NAME[/CONFIG] "
     "(docs/own_data.md)."),
    # Your own images (ignored by the paper datasets, which are read as the paper does).
    ("channels", "integer", 0, None, "Your images: 1 converts to grey, 3 to RGB (0 = as the files are)."),
    ("image_size", "string", "", None, "Your images: HxW to resize (or centre-crop) them all to; empty = they "
     "must share one size."),
    ("resize", "enum", "resize", image_sources.RESIZE, "Your images with --image_size: 'resize' (area average) "
     "or 'crop' (centre crop)."),
    ("binarize", "enum", "none", image_sources.BINARIZE, "Your grey images: 'dynamic' re-draws pixel ~ "
     "Bernoulli(grey) every batch, 'static' once (both then use the Bernoulli likelihood)."),
    ("validation_fraction", "float", 0.1, None, "Your images without a validation split: this fraction of the "
     "training images becomes it (a fixed permutation)."),
    ("test_fraction", "float", 0.1, None, "Your images without a test split: this fraction of the training "
     "images becomes it."),
    ("skip_unreadable", "bool", False, None, "Your image folder: leave out files that cannot be read instead of "
     "stopping."),
    ("model", "enum", "vae", models.MODELS, "Model family (docs/paper_details.md section 4)."),
    ("prior", "enum", "vampprior", priors.PRIORS, "Prior on the top latent (docs/paper_details.md section 2)."),
    ("likelihood", "enum", None, likelihoods.LIKELIHOODS,
     "p(x|z); default: the dataset's (bernoulli for binary data, discretized_logistic for gray)."),
    ("num_components", "integer", 500, None, "K: pseudo-inputs (VampPriors) or mixture components (mog)."),
    ("z1_size", "integer", 40, None, "Size of z1 (the VAE's z)."),
    ("z2_size", "integer", 40, None, "Size of z2, the top latent of the two-level models."),
    ("pseudo_inputs_init", "enum", "random", priors.PSEUDO_INPUTS_INIT,
     "VampPrior pseudo-inputs: 'random' = N(pseudo_inputs_mean, pseudo_inputs_std); 'data' = K random "
     "training images (the release's --use_training_data_init). vampprior_data always uses training images."),
    ("pseudo_inputs_mean", "float", None, None, "Mean of the pseudo-input init; default: the dataset's."),
    ("pseudo_inputs_std", "float", None, None, "Std of the pseudo-input init; default: the dataset's."),
    ("init_from", "string", "", None, "Start a new run from a SavedModel export, or a pretrained model's name "
     "(saved_models/), copying every weight whose name and shape match (fine-tuning); a resumed run ignores it."),
    ("init", "enum", initializers.DEFAULT, initializers.INITS,
     "How the weights start: release = the official release's (He normal on dense kernels, PyTorch's "
     "uniform defaults on convolutions and biases); keras = truncated He normal, zero biases "
     "(tfvamp/initializers.py). A resumed run keeps its own."),
    # Optimisation.
    ("optimizer", "enum", "adam_norm_grad", optimizers.OPTIMIZERS,
     "adam_norm_grad: Adam on per-tensor normalised gradients (the paper's)."),
    ("lr", "float", 5e-4, None, "Learning rate."),
    ("batch_size", "integer", 100, None, "Global training batch size (split over replicas)."),
    ("eval_batch_size", "integer", 100, None, "Batch size of validation and test evaluation."),
    ("epochs", "integer", 2000, None, "Maximum number of epochs."),
    ("warmup_epochs", "integer", 100, None,
     "KL warm-up: beta = min(epoch / warmup_epochs, 1), epochs counted from 1; 0 = no warm-up."),
    ("early_stopping_epochs", "integer", 50, None, "Stop after this many epochs without a better validation "
     "loss (the counter is held at 0 during warm-up)."),
    ("seed", "integer", 14, None, "Seed of initialisation, data order and noise."),
    ("max_steps_per_epoch", "integer", 0, None, "Cap on training steps per epoch (0 = a full pass). For smoke "
     "tests."),
    ("max_eval_batches", "integer", 0, None, "Cap on validation and test batches (0 = the whole split). For "
     "smoke tests only: results then cover part of the test set."),
    # Evaluation and export.
    ("eval_samples", "integer", 5000, None, "Importance samples per test image for log p(x)."),
    ("eval_chunk_size", "integer", 0, None, "Importance samples per network pass (0 = automatic)."),
    ("evaluate", "bool", True, None, "Evaluate the best model on the test set at the end."),
    ("export", "bool", True, None, "Export the best model as a SavedModel at the end."),
    ("export_dir", "string", None, None, "SavedModel directory; default <model_dir>/saved_model. "
     "{dataset}, {model} and {prior} are filled in, as in --model_dir."),
    ("export_max_samples", "integer", export.MAX_SAMPLES, None,
     "The exported `sample` signature refuses requests for more images than this."),
    ("export_max_importance_samples", "integer", export.MAX_IMPORTANCE_SAMPLES, None,
     "The exported `log_likelihood` signature refuses more importance samples than this."),
    # Where things are.
    ("model_dir", "string", None, None, "Run directory: config, checkpoints, best weights, TensorBoard, "
     "results. Re-running with the same directory resumes. {dataset}, {model} and {prior} are filled in "
     "(configs/quick.cfg: runs/quick/{dataset}_{model}_{prior})."),
    ("data_dir", "string", None, None, "Where prepared datasets are cached."),
    ("manual_dir", "string", None, None, "Where the original dataset files are (default: $TFVAMP_MANUAL_DIR)."),
    # Hardware.
    ("strategy", "enum", "auto", distribute.STRATEGIES,
     "auto: MultiWorkerMirrored when TF_CONFIG names several workers, else Mirrored over the local GPUs "
     "(the CPU when there is none)."),
    ("cpu_devices", "integer", 0, None, "Split the CPU into this many logical devices and mirror over them "
     "(testing multi-replica code without GPUs; 0 = don't)."),
    ("threads", "integer", 0, None, "Cores TensorFlow may use (0 = every core; with a GPU, TensorFlow's default). "
     "On two, two ops run side by side with one thread each (faster at batch 100); --threads=1 keeps a long "
     "run to one core."),
    ("compute_dtype", "string", "auto", None,
     "Compute precision (variables are float32 in every mode): auto = mixed where the hardware has bfloat16 "
     "units (GPU compute capability >= 8.0, CPU with AMX or AVX512-BF16), else float32; mixed = the measured "
     "per-part policy (bfloat16 everywhere but the Gaussian heads); bfloat16 = the hidden layers only; "
     "float32; bfloat16_except:PART,... for measuring (tfvamp/precision.py, docs/training.md). A resumed run "
     "keeps its own unless given explicitly."),
    ("jit_compile", "enum", "auto", JIT_CHOICES,
     "XLA-compile the per-replica forward/backward pass. auto: off (measured slower on CPUs, docs/training.md)."),
    # Logging.
    ("image_every_epochs", "integer", 10, None, "TensorBoard image grids (samples, reconstructions, "
     "pseudo-inputs) every this many epochs (and at the first and last)."),
    ("num_images", "integer", 64, None, "Images per TensorBoard grid."),
    ("picture_scale", "integer", 0, None, "Enlargement of every tile in the pictures (0 = a tile at least 56 px "
     "high: 2x for 28x28 images)."),
    ("checkpoints_to_keep", "integer", 3, None, "Epoch checkpoints kept in <model_dir>/checkpoints."),
    ("progress", "bool", True, None, "A progress bar per epoch on the console."),
)
FLAG_NAMES = tuple(spec[0] for spec in FLAGS)
# The smallest value of every integer flag.
_LOWER_BOUNDS = {"num_components": 1, "z1_size": 1, "z2_size": 1, "batch_size": 1, "eval_batch_size": 1,
                 "epochs": 1, "eval_samples": 1, "num_images": 1, "checkpoints_to_keep": 1,
                 "export_max_samples": 1, "export_max_importance_samples": 1}


def define_flags(flag_values=flags.FLAGS):
    """Registers the training flags on `flag_values` (once; calling again is a no-op)."""
    if "dataset" in flag_values:
        return flag_values
    definers = {"integer": flags.DEFINE_integer, "float": flags.DEFINE_float, "bool": flags.DEFINE_bool,
                "string": flags.DEFINE_string}
    for name, kind, default, choices, help_text in FLAGS:
        if kind == "enum":
            flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
        else:
            definers[kind](name, default, help_text, flag_values=flag_values)
    flags.mark_flag_as_required("dataset", flag_values=flag_values)
    return flag_values


def default_config(**overrides):
    """The flags' defaults as a `RunConfig`, with `overrides` (flat names; `input_shape` too)
    applied: for building runs in code. Not validated: see `validate_config`."""
    values = config_lib.flag_defaults()
    unknown = set(overrides) - set(values) - {config_lib.SHAPE_KEY, config_lib.MODEL_SHAPE_KEY}
    if unknown:
        raise ValueError(f"Unknown config keys {sorted(unknown)}; known: {sorted(values)}.")
    return RunConfig.from_dict({**values, **overrides}, defaults=values)


def config_from_flags(flag_values=flags.FLAGS):
    """The validated `RunConfig` from parsed flags."""
    return validate_config(RunConfig.from_flags(flag_values))


def _check_values(config, skip=()):
    """Each flag on its own: known choices, integer bounds, a positive learning rate."""
    errors = []
    values = config.to_dict()  # the table's checks go by flag name
    for name, kind, _, choices, _ in FLAGS:
        value = values[name]
        if name in skip:
            continue
        if kind == "enum" and value is not None and value not in choices:
            errors.append(f"--{name}: unknown {name} {value!r}; choose one of {', '.join(choices)}.")
        elif kind == "integer":
            low = _LOWER_BOUNDS.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                label = "K (--num_components)" if name == "num_components" else f"--{name}"
                errors.append(f"{label} must be an integer >= {low}, got {value!r}.")
    lr = config.training.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        errors.append(f"--lr must be a positive number, got {lr!r}.")
    model_dir = config.training.model_dir
    if model_dir is None or str(model_dir).strip() == "":
        errors.append("--model_dir is required: the run directory (re-using one resumes that run).")
    for name in ("validation_fraction", "test_fraction"):
        if not 0.0 < float(values[name]) < 0.5:
            errors.append(f"--{name} must lie in (0, 0.5), got {values[name]!r}.")
    try:
        precision.check_mode(config.model.compute_dtype)
    except ValueError as e:
        errors.append(f"--{e}")
    if config.data.image_size:  # every source: a paper dataset refuses the flag later, your images read it
        try:
            image_sources.parse_image_size(config.data.image_size)
        except image_sources.DataError as e:
            errors.append(str(e))
    if config.data.channels not in (0, 1, 3):
        errors.append(f"--channels must be 0 (as the files are), 1 (grey) or 3 (RGB), got {config.data.channels!r}.")
    return errors


# Flags for your own images only: a paper dataset refuses them when they differ from the default.
_OWN_IMAGE_FLAGS = ("channels", "image_size", "binarize", "skip_unreadable")


def source_options(config):
    """How to read the run's images (`tfvamp.data.SourceOptions`), None for a paper dataset."""
    part = config.data
    if part.dataset in DATASETS:
        defaults = config_lib.flag_defaults()
        changed = [k for k in _OWN_IMAGE_FLAGS if getattr(part, k) != defaults[k]]
        if changed:
            raise ValueError(f"--{changed[0]} is for your own images (folder:, array:, tfds:); {part.dataset} "
                             "is read as the paper does.")
        return None
    return data.SourceOptions(channels=part.channels, image_size=part.image_size or "",
                              resize=part.resize, binarize=part.binarize,
                              validation_fraction=float(part.validation_fraction),
                              test_fraction=float(part.test_fraction),
                              skip_unreadable=bool(part.skip_unreadable), data_dir=part.data_dir)


def _fill_templates(config):
    """A new config with {dataset}, {model} and {prior} in --model_dir and --export_dir filled in."""
    names = {"dataset": config.data.dataset, "model": config.model.model, "prior": config.model.prior}
    filled = {}
    for key, value in (("model_dir", config.training.model_dir), ("export_dir", config.export.export_dir)):
        if isinstance(value, str) and "{" in value:
            try:
                filled[key] = value.format(**names)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"--{key}={value!r}: only {{dataset}}, {{model}} and {{prior}} can be filled "
                                 f"in ({e}).") from None
    return config.replace(**filled)


def _fill_dataset_defaults(config, info):
    """A new config with the image shape, likelihood, pseudo-input init and export dir from the
    dataset and run where they are not given."""
    model = config.model
    filled = {"image_shape": tuple(int(d) for d in info.image_shape)}
    if model.likelihood is None:
        filled["likelihood"] = info.likelihood
    if model.pseudo_inputs_mean is None:
        filled["pseudo_inputs_mean"] = float(info.pseudo_inputs_mean)
    if model.pseudo_inputs_std is None:
        filled["pseudo_inputs_std"] = float(info.pseudo_inputs_std)
    if config.export.export_dir in (None, ""):
        filled["export_dir"] = checkpointing.default_export_dir(config.training.model_dir)
    return config.replace(**filled)


def _check_combinations(config, info):
    """The flags against each other and against the dataset."""
    errors = []
    model, training = config.model, config.training
    shape, dataset = tuple(model.image_shape), config.data.dataset
    if info.likelihood != "bernoulli" and model.likelihood == "bernoulli":
        errors.append(f"--likelihood=bernoulli cannot model {dataset}'s gray pixels; use discretized_logistic "
                      "(the release's) or discretized_logistic_normalized" +
                      (", or --binarize=dynamic|static." if dataset not in DATASETS else "."))
    if info.likelihood == "bernoulli" and model.likelihood != "bernoulli":
        errors.append(f"--likelihood={model.likelihood} models 8-bit pixels, but {dataset}'s are binary; "
                      "use --likelihood=bernoulli (the default for binary data).")
    if model.model in CONV_MODELS and min(shape[:2]) < models.MIN_CONV_SIDE:
        errors.append(f"--model={model.model} needs images of at least {models.MIN_CONV_SIDE}x{models.MIN_CONV_SIDE} "
                      f"pixels (two stride-2 convolutions); {dataset} has shape {shape}.")
    mean, std = model.pseudo_inputs_mean, model.pseudo_inputs_std
    if std < 0:
        errors.append(f"--pseudo_inputs_std must be >= 0, got {std}.")
    from_data = priors.needs_training_images(model.prior, training.pseudo_inputs_init)
    if priors.has_pseudo_inputs(model.prior) and not from_data and not 0.0 <= mean <= 1.0:
        # Pseudo-inputs are clipped to [0, 1]: entries initialised outside never get a gradient.
        errors.append(f"--pseudo_inputs_mean={mean} lies outside [0, 1]: the clipped pseudo-inputs would start "
                      "saturated and never learn (docs/paper_details.md section 9).")
    num_train = int(info.num_examples["train"])
    if from_data and model.num_components > num_train:
        errors.append(f"K (--num_components={model.num_components}) training images are needed as "
                      f"pseudo-inputs but {dataset} has only {num_train}.")
    if training.pseudo_inputs_init == "data" and not priors.has_pseudo_inputs(model.prior):
        errors.append("--pseudo_inputs_init=data needs a VampPrior (--prior=vampprior, weighted_vampprior).")
    if training.batch_size > num_train:
        errors.append(f"--batch_size={training.batch_size} exceeds the {num_train} training images of {dataset} "
                      "(the last partial batch is dropped, so no step would run).")
    return errors


def validate_config(config, info=None):
    """Checks a run config and returns a new, filled-in `RunConfig`; `config` is not changed.

    Sets the image shape (from the dataset) and resolves `likelihood`, `pseudo_inputs_mean`,
    `pseudo_inputs_std` and `export_dir` when they are None, the templates of `model_dir` and
    `export_dir`, and `compute_dtype` (`precision` records how). Raises ValueError with a
    message naming the flag for anything that cannot work, every problem at once.

    Args:
      config: a `RunConfig`, or a flat dict with the keys `FLAG_NAMES`.
      info: optional `tfvamp.data.DatasetInfo` (default: looked up by the config's dataset).
    """
    if not isinstance(config, RunConfig):
        missing = [k for k in FLAG_NAMES if k not in config]
        if missing:
            raise ValueError(f"Config lacks {missing}.")
        config = RunConfig.from_dict(config)
    dataset = config.data.dataset
    if info is None and dataset not in DATASETS and not image_sources.is_source(dataset or ""):
        raise ValueError(f"--dataset: unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}, or your "
                         "images as folder:PATH, array:PATH or tfds:NAME.")
    errors = _check_values(config)
    if errors:
        raise ValueError("Invalid training flags:\n  " + "\n  ".join(errors))
    config = _resolve_precision(_fill_templates(config))
    info = info or data.get_info(dataset, source_options(config))
    config = _fill_dataset_defaults(config, info)
    errors = _check_combinations(config, info)
    if errors:
        raise ValueError("Invalid training flags:\n  " + "\n  ".join(errors))
    return config


def _resolve_precision(config):
    """A new config whose `--compute_dtype=auto` is a concrete mode, before anything is built;
    `precision` records what was asked, the choice, the CPU/GPU model and why (results.json keeps it)."""
    choice = precision.resolve(config.model.compute_dtype)
    known = config.precision
    if isinstance(known, dict) and known.get("mode") == choice.mode:  # re-validation keeps the record
        return config.replace(compute_dtype=choice.mode)
    return config.replace(compute_dtype=choice.mode, precision=choice.as_dict())


def run_name(config):
    """The run's name: the basename of its model_dir."""
    return checkpointing.run_name(config.training.model_dir)
