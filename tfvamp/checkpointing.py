"""The layout of a run directory, and rebuilding a model from one.

    <model_dir>/config.json      the run's settings (model, prior, likelihood, sizes, dataset...)
    <model_dir>/checkpoints/     every epoch: model, optimizer, epoch, beta, best loss, patience, RNG
    <model_dir>/best/            the weights with the best validation loss so far
    <model_dir>/results.json     training summary, test-set evaluation, where the export is
    <model_dir>/tensorboard/     TensorBoard event files
    <model_dir>/.lock            while a run uses the directory: its host and process id

Every checkpoint stores the model under the key `model`, so `load_model` can read the
best weights or any training checkpoint. `RunLock` keeps a second process out of a directory
that a run is using; `remove_leftovers` deletes what a killed run left half-written.
"""
import datetime
import glob
import json
import math
import os
import shutil
import socket

import numpy as np
import tensorflow as tf

from tfvamp import models
from tfvamp import precision
from tfvamp.config import RunConfig, as_run_config

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
RESULTS_FILE = "results.json"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"

def run_name(model_dir):
    """A run's name: the basename of its model_dir."""
    return os.path.basename(os.path.normpath(model_dir))


def default_export_dir(model_dir):
    """Where a run's SavedModel goes unless --export_dir says: `<model_dir>/saved_model`
    (saved_models/ holds only the curated pretrained models)."""
    return os.path.join(model_dir, "saved_model")


def save_config(model_dir, config):
    """Writes a run config (a `RunConfig`, or its flat dict) to `<model_dir>/config.json`, as
    `RunConfig.to_dict()`. Refuses one whose model is not filled in (not validated)."""
    config = as_run_config(config)
    missing = [k for k, v in config.model.keras_config().items() if v is None and k != "seed"]
    if missing:
        raise ValueError(f"Run config lacks {missing}; it needs {list(config.model.keras_keys())}.")
    return write_json(os.path.join(model_dir, CONFIG_FILE), config.to_dict())


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
    """A run directory's `RunConfig` (`RunConfig.from_dict` of its config.json: older runs'
    files too)."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {model_dir!r}: is it a tfvamp run directory "
                                "(written by scripts/train.py)?")
    with open(path) as f:
        return RunConfig.from_dict(json.load(f))


def model_from_config(config, pseudo_inputs_data=None):
    """Builds the (untrained) model a run config (a `RunConfig`, or its flat dict) describes.

    With `pseudo_inputs_data` (training images), through `models.build_model`, as for training.
    Without, through the model class's `from_config` (`config.model.keras_config()`), as before
    restoring weights: the pseudo-inputs of `vampprior_data` are weights, so they come with the
    checkpoint.
    """
    model = as_run_config(config).model
    if pseudo_inputs_data is not None:
        options = model.keras_config()
        shape, prior, likelihood = options.pop("image_shape"), options.pop("prior"), options.pop("likelihood")
        return models.build_model(model.model, prior, shape, likelihood, pseudo_inputs_data=pseudo_inputs_data,
                                  **options)
    return models.model_class(model.model).from_config(model.keras_config())


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
      compute_dtype: None keeps the run's; a mode of `tfvamp.precision` ('float32', 'mixed',
        'bfloat16', 'auto': resolved on this machine) rebuilds the model in that precision
        (variables are float32 in every mode, so the same checkpoint restores), e.g. to evaluate
        a float32-trained model faster on CPUs with AVX512-BF16, or a mixed one in float32.

    Returns:
      (model, config): `config` is the run's `RunConfig`, recording the compute_dtype used.
      Raises FileNotFoundError when the run has no such checkpoint.
    """
    config = load_config(model_dir)
    if compute_dtype is not None:
        config = config.replace(compute_dtype=precision.resolve(compute_dtype).mode)
    path = checkpoint_path(model_dir, which)
    if path is None:
        raise FileNotFoundError(f"No {which!r} checkpoint in {model_dir!r} (looked in "
                                f"{os.path.join(model_dir, BEST_DIR if which == 'best' else CHECKPOINT_DIR)}).")
    model = model_from_config(config)
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model, config


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


def _process_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory: `<model_dir>/.lock` holds the owner's host and pid.

    Taken with `O_EXCL`, so two processes cannot both get it; released (the file removed) on
    `release` or when the `with` block ends, however it ends. A lock left by a process that is
    gone (same host, pid not running) is stale and taken over. A lock from another host cannot
    be checked, so it is honoured; the message says how to clear it.
    """

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.held = False

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_owner()  # raises unless the old lock is stale (and then removes it)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            self.held = True
            return self
        raise RunDirectoryBusy(f"Could not lock {os.path.dirname(self.path)}: another process keeps taking it.")

    def _check_owner(self):
        try:
            with open(self.path) as f:
                owner = json.load(f)
        except (OSError, json.JSONDecodeError):
            owner = {}
        host, pid = owner.get("host"), owner.get("pid")
        if host == socket.gethostname() and pid is not None and not _process_alive(pid):
            os.remove(self.path)  # stale: its process is gone
            return
        if not owner:  # being written right now, or garbage: leave it to the next attempt
            raise RunDirectoryBusy(f"{os.path.dirname(self.path)} is locked ({self.path} is unreadable). If no "
                                   f"run uses it, delete {self.path}.")
        raise RunDirectoryBusy(
            f"{os.path.dirname(self.path)} is in use by process {pid} on {host} (since {owner.get('started')}). "
            "Wait for that run to finish, or use another --model_dir. If that process is gone, delete "
            f"{self.path}.")

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def remove_leftovers(model_dir):
    """Deletes what a killed run left half-written in `model_dir`: checkpoint `*_temp*` folders
    (TensorFlow writes a checkpoint there, then renames it). Returns the paths removed."""
    removed = []
    for sub in (CHECKPOINT_DIR, BEST_DIR):
        for path in glob.glob(os.path.join(model_dir, sub, "*_temp*")):
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            removed.append(path)
    return removed


def check_writable(directory, what, fix):
    """Raises OSError naming `what`, the folder and `fix` unless files can be written in it."""
    directory = os.path.abspath(os.fspath(directory))
    probe = os.path.join(directory, f".tfvamp_write_test_{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise OSError(f"Cannot write {what} to {directory}: {e.strerror or e}. {fix}") from None
