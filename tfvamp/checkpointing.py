"""The layout of a run directory, and rebuilding a model from one.

    <model_dir>/config.json      the run's settings (model, prior, likelihood, sizes, dataset...)
    <model_dir>/checkpoints/     every epoch: model, optimizer, epoch, beta, best loss, patience, RNG
    <model_dir>/best/            the weights with the best validation loss so far
    <model_dir>/results.json     test-set evaluation of the best weights
    <model_dir>/tensorboard/     TensorBoard event files

Every checkpoint stores the model under the key `model`, so `load_model` can read the
best weights or any training checkpoint.
"""
import json
import math
import os

import numpy as np
import tensorflow as tf

from tfvamp import models

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
RESULTS_FILE = "results.json"
TENSORBOARD_DIR = "tensorboard"

# The config keys build_model reads; everything else in config.json is for the record.
MODEL_KEYS = ("model", "prior", "likelihood", "input_shape", "num_components", "z1_size", "z2_size",
              "pseudo_inputs_mean", "pseudo_inputs_std", "seed")


def run_name(model_dir):
    """A run's name: the basename of its model_dir."""
    return os.path.basename(os.path.normpath(model_dir))


def default_export_dir(model_dir):
    """Where a run's SavedModel goes unless --export_dir says: saved_models/<run name>."""
    return os.path.join("saved_models", run_name(model_dir))


def save_config(model_dir, config):
    """Writes `config` (a JSON-able dict with at least MODEL_KEYS) to `<model_dir>/config.json`."""
    missing = [k for k in MODEL_KEYS if k not in config]
    if missing:
        raise ValueError(f"Run config lacks {missing}; it needs {list(MODEL_KEYS)}.")
    return write_json(os.path.join(model_dir, CONFIG_FILE), config)


def to_jsonable(value):
    """`value` with NumPy scalars and arrays made plain, non-finite floats as strings
    ('inf', 'nan': JSON has no such numbers) and anything else unknown as its str()."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def write_json(path, obj):
    """Writes `obj` as JSON atomically (a temporary file, then a rename): never half-written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(to_jsonable(obj), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def update_results(model_dir, sections):
    """Merges `sections` ({name: dict}) into `<model_dir>/results.json`, atomically; returns the
    whole results dict. The one writer of that file: training, evaluation and export each add
    their section, and what is already there is kept."""
    path = os.path.join(model_dir, RESULTS_FILE)
    results = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, json.JSONDecodeError):
            results = {}
        if not isinstance(results, dict):
            results = {}
    results.update(sections)
    write_json(path, results)
    return results


def load_results(model_dir):
    """`<model_dir>/results.json` as a dict ({} when there is none)."""
    path = os.path.join(model_dir, RESULTS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_config(model_dir):
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {model_dir!r}: is it a tfvamp run directory "
                                "(written by scripts/train.py)?")
    with open(path) as f:
        return json.load(f)


def model_config(config):
    """The model's Keras config (its constructor arguments) from a run config: the schema that
    `model.get_config()` writes and `from_config` reads, for checkpoints and `.keras` files alike."""
    return {"image_shape": tuple(config["input_shape"]), "prior": config["prior"],
            "likelihood": config["likelihood"], "num_components": config["num_components"],
            "z1_size": config["z1_size"], "z2_size": config["z2_size"],
            "pseudo_inputs_mean": config["pseudo_inputs_mean"], "pseudo_inputs_std": config["pseudo_inputs_std"],
            "seed": config.get("seed"), "compute_dtype": config.get("compute_dtype", "float32")}


def model_from_config(config, pseudo_inputs_data=None):
    """Builds the (untrained) model a run config describes.

    With `pseudo_inputs_data` (training images), through `models.build_model`, as for training.
    Without, through the model class's `from_config`, as before restoring weights: the
    pseudo-inputs of `vampprior_data` are weights, so they come with the checkpoint.
    """
    if pseudo_inputs_data is not None:
        options = model_config(config)
        shape, name = options.pop("image_shape"), config["model"]
        prior, likelihood = options.pop("prior"), options.pop("likelihood")
        return models.build_model(name, prior, shape, likelihood, pseudo_inputs_data=pseudo_inputs_data, **options)
    return models.model_class(config["model"]).from_config(model_config(config))


def checkpoint_path(model_dir, which="best"):
    """The newest checkpoint file prefix of `which` ('best' or 'latest'), or None."""
    sub = BEST_DIR if which == "best" else CHECKPOINT_DIR
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}.")
    return tf.train.latest_checkpoint(os.path.join(model_dir, sub))


def load_model(model_dir, which="best", compute_dtype=None):
    """Rebuilds a run's model and restores its weights.

    Args:
      model_dir: a run directory written by scripts/train.py.
      which: 'best' or 'latest'.
      compute_dtype: None keeps the run's; 'bfloat16' or 'float32' rebuilds the hidden layers
        in that precision (variables are float32 either way, so the same checkpoint restores),
        e.g. to evaluate a float32-trained model faster on CPUs with AVX512-BF16.

    Returns:
      (model, config); `config` records the compute_dtype used. Raises FileNotFoundError when
      the run has no such checkpoint.
    """
    config = load_config(model_dir)
    if compute_dtype is not None:
        config = {**config, "compute_dtype": compute_dtype}
    path = checkpoint_path(model_dir, which)
    if path is None:
        raise FileNotFoundError(f"No {which!r} checkpoint in {model_dir!r} (looked in "
                                f"{os.path.join(model_dir, BEST_DIR if which == 'best' else CHECKPOINT_DIR)}).")
    model = model_from_config(config)
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model, config
