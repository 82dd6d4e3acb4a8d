"""The typed, frozen run config (tfvamp.config): its parts hold every flag once, config.json of
old runs loads and resumes, validation returns a new object, and the flat dict round-trips."""
import dataclasses
import json
import os

import pytest
import tensorflow as tf

from helpers import GRAY_INFO, synthetic_splits, tiny_config
from tfvamp import checkpointing
from tfvamp import config as tconfig
from tfvamp import flags as tflags
from tfvamp import initializers
from tfvamp import run

# The config.json of a run from before --compute_dtype, --init and your own images existed (the
# flags of commit 344d185 without compute_dtype, with the since-removed benchmark_xla): the image
# shape is `input_shape`, and there is no `init`, `compute_dtype` or `precision`.
OLD_CONFIG_JSON = """{
  "batch_size": 10,
  "benchmark_xla": 0,
  "checkpoints_to_keep": 100,
  "cpu_devices": 0,
  "data_dir": null,
  "dataset": "frey_faces",
  "early_stopping_epochs": 1,
  "epochs": 1,
  "eval_batch_size": 10,
  "eval_chunk_size": 0,
  "eval_samples": 5000,
  "evaluate": false,
  "export": false,
  "export_dir": "MODEL_DIR/saved_model",
  "export_max_importance_samples": 100000,
  "export_max_samples": 4096,
  "image_every_epochs": 1,
  "input_shape": [
    28,
    20,
    1
  ],
  "jit_compile": "auto",
  "likelihood": "discretized_logistic",
  "lr": 0.0005,
  "manual_dir": null,
  "max_eval_batches": 0,
  "max_steps_per_epoch": 0,
  "model": "hvae",
  "model_dir": "MODEL_DIR",
  "num_components": 5,
  "num_images": 4,
  "optimizer": "adam_norm_grad",
  "prior": "vampprior",
  "progress": false,
  "pseudo_inputs_init": "random",
  "pseudo_inputs_mean": 0.5,
  "pseudo_inputs_std": 0.02,
  "seed": 14,
  "strategy": "default",
  "threads": 0,
  "warmup_epochs": 2,
  "z1_size": 4,
  "z2_size": 4
}
"""


def _old_config(model_dir):
    return json.loads(OLD_CONFIG_JSON.replace("MODEL_DIR", str(model_dir)))


def test_every_flag_is_a_field_of_exactly_one_part():
    names = [f.name for _, cls in tconfig.PARTS for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))
    assert set(names) == set(tflags.FLAG_NAMES) | {"image_shape"}
    assert [f.name for f in dataclasses.fields(tconfig.RunConfig)][:5] == \
        ["data", "model", "training", "evaluation", "export"]


def test_the_model_schema_is_the_model_config(tmp_path):
    config = tiny_config(tmp_path / "run")
    model = checkpointing.model_from_config(config)
    keras_config = model.get_config()
    assert config.model.keras_config() == {k: keras_config[k] for k in tconfig.ModelConfig.keras_keys()}
    assert set(tconfig.ModelConfig.keras_keys()) == \
        {f.name for f in dataclasses.fields(tconfig.ModelConfig)} - {"model"}


def test_an_old_config_json_loads_with_the_right_values(tmp_path):
    config = tconfig.RunConfig.from_dict(_old_config(tmp_path))
    assert config.model.image_shape == (28, 20, 1)
    assert config.model.init == initializers.LEGACY == "keras"
    assert config.model.compute_dtype == "float32"
    assert (config.model.model, config.model.prior, config.model.z1_size, config.model.num_components) == \
        ("hvae", "vampprior", 4, 5)
    assert config.data.dataset == "frey_faces" and config.training.model_dir == str(tmp_path)
    # Flags the old run did not have: their defaults.
    assert (config.data.channels, config.data.resize, config.training.init_from, config.training.picture_scale) == \
        (0, "resize", "", 0)
    assert config.precision is None
    assert config.extra == {"benchmark_xla": 0}  # unknown keys kept, not an error
    assert config.to_dict()["benchmark_xla"] == 0 and config.to_dict()["input_shape"] == [28, 20, 1]
    assert "image_shape" not in config.to_dict()
    # The other name of the image shape is read too.
    flat = dict(_old_config(tmp_path))
    flat["image_shape"] = flat.pop("input_shape")
    assert tconfig.RunConfig.from_dict(flat).model.image_shape == (28, 20, 1)


def test_a_run_directory_with_an_old_config_json_resumes(tmp_path):
    model_dir = tmp_path / "run"
    first = tiny_config(model_dir, init="keras", compute_dtype="float32", epochs=1)
    run.run(first, tf.distribute.get_strategy(), synthetic_splits())
    path = os.path.join(str(model_dir), checkpointing.CONFIG_FILE)
    with open(path, "w") as f:
        f.write(OLD_CONFIG_JSON.replace("MODEL_DIR", str(model_dir)))
    model, loaded = checkpointing.load_model(str(model_dir), "latest")
    assert model.get_config()["init"] == "keras" and model.get_config()["compute_dtype"] == "float32"
    assert loaded.model.image_shape == (28, 20, 1)
    resumed = tiny_config(model_dir, epochs=2)  # today's defaults: init release, compute_dtype auto
    results = run.run(resumed, tf.distribute.get_strategy(), synthetic_splits())
    assert results["training"]["epochs_trained"] == 2
    stored = checkpointing.load_config(str(model_dir))
    assert stored.model.init == "keras" and stored.training.epochs == 2


def test_validation_returns_a_new_config_and_leaves_its_input_alone(tmp_path):
    given = tflags.default_config(dataset="frey_faces", model_dir=str(tmp_path / "{model}_{prior}"), batch_size=10)
    before = given.to_dict()
    validated = tflags.validate_config(given, info=GRAY_INFO)
    assert validated is not given and given.to_dict() == before
    assert given.model.image_shape is None and given.model.likelihood is None and given.export.export_dir is None
    assert validated.model.image_shape == (28, 20, 1) and validated.model.likelihood == "discretized_logistic"
    assert validated.training.model_dir == str(tmp_path / "vae_vampprior")  # templates filled in
    assert validated.model.compute_dtype != "auto" and validated.precision["requested"] == "auto"
    # A flat dict is validated alike, and left alone too.
    flat = dict(before)
    assert tflags.validate_config(flat, info=GRAY_INFO) == validated and flat == before


def test_run_config_is_frozen(tmp_path):
    config = tiny_config(tmp_path / "run")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.z1_size = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.training.lr = 1.0
    changed = config.replace(z1_size=8, lr=1.0)
    assert (changed.model.z1_size, changed.training.lr) == (8, 1.0) and config.model.z1_size == 4
    with pytest.raises(ValueError, match="Unknown config fields"):
        config.replace(input_shape=(1, 1, 1))


def test_to_dict_and_from_dict_round_trip(tmp_path):
    config = tiny_config(tmp_path / "run")
    flat = config.to_dict()
    assert set(flat) == set(tflags.FLAG_NAMES) | {"input_shape", "precision"}
    assert tconfig.RunConfig.from_dict(flat) == config
    assert tconfig.RunConfig.from_dict(json.loads(json.dumps(flat))) == config
    old = tconfig.RunConfig.from_dict(_old_config(tmp_path))
    assert tconfig.RunConfig.from_dict(old.to_dict()) == old
    checkpointing.save_config(str(tmp_path / "run"), config)
    assert checkpointing.load_config(str(tmp_path / "run")) == config
