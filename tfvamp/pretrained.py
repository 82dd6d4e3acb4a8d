"""Trained models shipped in `saved_models/<name>/`, and any tfvamp SavedModel, back in Python.

    model, config = tfvamp.load_pretrained("frey_faces_hvae_vampprior")   # a Keras model
    model.log_likelihood(images, num_samples=1000, seed=0)

Each shipped folder is a SavedModel of `tfvamp.export` (signatures `sample`, `reconstruct`,
`encode`, `log_likelihood`, `pseudo_inputs`: TensorFlow serves it without tfvamp), plus
`README.md` (the model card), `card.json` (the card's numbers), `samples.png` and
`pseudo_inputs.png`. The Keras model is rebuilt from the export's
`assets.extra/tfvamp_config.json` and its weights read from the SavedModel's own variables:
the export tracks them as the list `model_variables`, in `model.variables` order, and
`assets.extra/tfvamp_variables.json` names each (path and shape), so nothing is stored twice.

`copy_matching_weights(model, export_dir)` starts another model from an export where the
shapes allow (fine-tuning: `--init_from`).
"""
import json
import os

import tensorflow as tf

from tfvamp import checkpointing
from tfvamp.config import RunConfig

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_MODELS = os.path.join(PACKAGE_ROOT, "saved_models")
CONFIG_FILE = "tfvamp_config.json"
VARIABLES_FILE = "tfvamp_variables.json"
CARD_FILE = "card.json"
MAX_FILE_BYTES = 15 * 10 ** 6
MAX_TOTAL_BYTES = 40 * 10 ** 6


def available():
    """Names of the models shipped in saved_models/."""
    if not os.path.isdir(SAVED_MODELS):
        return []
    return sorted(n for n in os.listdir(SAVED_MODELS) if os.path.exists(os.path.join(SAVED_MODELS, n, "saved_model.pb")))


def resolve(name_or_path):
    """The export folder of a shipped model's name, or the path given."""
    if os.path.exists(os.path.join(name_or_path, "saved_model.pb")):
        return name_or_path
    path = os.path.join(SAVED_MODELS, name_or_path)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    shipped = ", ".join(available()) or "none"
    raise FileNotFoundError(f"{name_or_path!r} is neither a SavedModel folder nor a shipped model (shipped: "
                            f"{shipped}). Export a run with scripts/export.py, or give a shipped model's name.")


def export_config(export_dir):
    """The run config recorded in an export (`assets.extra/tfvamp_config.json`)."""
    path = os.path.join(export_dir, "assets.extra", CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{export_dir} has no assets.extra/{CONFIG_FILE}: not a tfvamp export.")
    with open(path) as f:
        return json.load(f)


def _export_values(export_dir):
    """{index: array} of the export's `model_variables/<index>`."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    values = {}
    for key in reader.get_variable_to_shape_map():
        parts = key.split("/")
        if len(parts) >= 2 and parts[0] == "model_variables" and parts[1].isdigit():
            values[int(parts[1])] = reader.get_tensor(key)
    return values


def _export_names(export_dir, count):
    path = os.path.join(export_dir, "assets.extra", VARIABLES_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        names = [entry["path"] for entry in json.load(f)]
    return names if len(names) == count else None


def variable_records(model):
    """[{path, shape}] of `model.variables`, in order: what `tfvamp_variables.json` holds."""
    return [{"path": v.path, "shape": [int(d) for d in v.shape]} for v in model.variables]


def load_pretrained(name_or_path, compute_dtype="float32"):
    """A shipped model (by name) or any tfvamp export (by path) as a Keras model.

    Returns (model, config): the `LatentVariableModel` with the exported weights, and the run
    config it was trained with (a `tfvamp.config.RunConfig`, computing in `compute_dtype`).
    `compute_dtype`: a `tfvamp.precision` mode to compute in.
    Raises FileNotFoundError for an unknown name, ValueError if the weights do not fit.
    """
    export_dir = resolve(name_or_path)
    config = RunConfig.from_dict(export_config(export_dir)).replace(compute_dtype=compute_dtype)
    model = checkpointing.model_from_config(config)
    values = _export_values(export_dir)
    if len(values) != len(model.variables):
        raise ValueError(f"{export_dir} holds {len(values)} variables, the model built from its config "
                         f"{len(model.variables)}: exported by another tfvamp version?")
    for i, variable in enumerate(model.variables):
        value = values[i]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{export_dir}: variable {i} ({variable.path}) has shape {tuple(value.shape)} in the "
                             f"export, {tuple(variable.shape)} in the model.")
        variable.assign(value)
    return model, config


def copy_matching_weights(model, export_dir):
    """Sets every variable of `model` whose path and shape match one in the export (fine-tuning
    from a pretrained model). Returns (copied, skipped): lists of variable paths."""
    export_dir = resolve(export_dir)
    values = _export_values(export_dir)
    names = _export_names(export_dir, len(values))
    if names is None:  # an export without names: by position, if the model is the same one
        names = [v.path for v in model.variables] if len(values) == len(model.variables) else []
    by_name = {name: values[i] for i, name in enumerate(names)}
    copied, skipped = [], []
    for variable in model.variables:
        value = by_name.get(variable.path)
        if value is not None and tuple(value.shape) == tuple(variable.shape):
            variable.assign(value)
            copied.append(variable.path)
        else:
            skipped.append(variable.path)
    if not copied:
        raise ValueError(f"No weight of {export_dir} fits this model (another family, or other sizes).")
    return copied, skipped


def folder_sizes(root=SAVED_MODELS):
    """(largest file (path, bytes), total bytes) under `root`."""
    largest, total = ("", 0), 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            size = os.path.getsize(path)
            total += size
            if size > largest[1]:
                largest = (path, size)
    return largest, total


def load_card(name_or_path):
    """The card's numbers (`card.json`) of a shipped model."""
    with open(os.path.join(resolve(name_or_path), CARD_FILE)) as f:
        return json.load(f)
