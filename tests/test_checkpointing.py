"""Rebuilding models: the Keras config holds every constructor argument, `.keras` files and run
checkpoints round-trip every model x prior with identical seeded log-likelihoods, and
results.json has one merging writer."""
import inspect
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvamp
from tfvamp import checkpointing
from tfvamp import models
from tfvamp.config import RunConfig

SHAPE = (8, 6, 1)


def _images(n, seed=0):
    return (np.random.default_rng(seed).random((n,) + SHAPE) < 0.3).astype(np.float32)


def _arguments(prior):
    """Constructor arguments, none of them a default, so that a key the config drops shows."""
    return dict(image_shape=SHAPE, prior=prior, likelihood="bernoulli", num_components=4, z1_size=3, z2_size=2,
                pseudo_inputs_mean=0.3, pseudo_inputs_std=0.04, seed=5, compute_dtype="float32", init="keras")


@pytest.mark.parametrize("model_name", tfvamp.MODELS)
def test_config_holds_every_constructor_argument(model_name):
    cls = models.model_class(model_name)
    arguments = _arguments("weighted_vampprior")
    model = cls(**arguments, name="mine")
    config = model.get_config()
    signature = set(inspect.signature(models.LatentVariableModel.__init__).parameters) - {"self", "kwargs"}
    # Every argument but the images (pseudo-inputs are weights, restored with the others).
    assert signature - {"pseudo_inputs_data"} == set(arguments)
    for key, value in arguments.items():
        assert config[key] == value, key
    assert config["name"] == "mine"  # Keras' own keys are merged in
    clone = cls.from_config(config)
    assert clone.get_config() == config and len(clone.weights) == len(model.weights)


@pytest.mark.parametrize("prior", tfvamp.PRIORS)
@pytest.mark.parametrize("model_name", tfvamp.MODELS)
def test_keras_file_round_trip(model_name, prior, tmp_path):
    data = _images(12, seed=1) if prior == "vampprior_data" else None
    model = tfvamp.build_model(model_name, prior, SHAPE, "bernoulli", num_components=4, z1_size=3, z2_size=2,
                               pseudo_inputs_data=data, seed=2)
    # Weights that are not the initial ones, so that a fresh model could not pass.
    rng = np.random.default_rng(3)
    for w in model.trainable_weights:
        w.assign(w.numpy() + rng.normal(scale=0.05, size=w.shape).astype(np.float32))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    x = _images(3, seed=4)
    np.testing.assert_array_equal(loaded.log_likelihood(x, num_samples=16, seed=9).numpy(),
                                  model.log_likelihood(x, num_samples=16, seed=9).numpy())
    if prior == "vampprior_data":  # the fixed images came back from the weights, not the config
        np.testing.assert_array_equal(loaded.prior_layer.pseudo_inputs().numpy(),
                                      model.prior_layer.pseudo_inputs().numpy())
        assert set(np.unique(loaded.prior_layer.pseudo_inputs().numpy())) <= {0.0, 1.0}


def test_run_checkpoint_restores_the_data_pseudo_inputs(tmp_path):
    """A vampprior_data run rebuilt from its directory: the same schema as `.keras` files, and
    the K training images come back from the checkpoint."""
    config = {"model": "hvae", "prior": "vampprior_data", "likelihood": "bernoulli", "input_shape": list(SHAPE),
              "num_components": 4, "z1_size": 3, "z2_size": 2, "pseudo_inputs_mean": 0.05, "pseudo_inputs_std": 0.01,
              "seed": 3, "compute_dtype": "float32", "init": "keras"}
    data = _images(10, seed=6)
    model = checkpointing.model_from_config(config, pseudo_inputs_data=data)
    assert RunConfig.from_dict(config).model.keras_config() == {k: v for k, v in model.get_config().items()
                                                                if k not in ("name", "trainable", "dtype")}
    model_dir = str(tmp_path / "run")
    checkpointing.save_config(model_dir, config)
    tf.train.Checkpoint(model=model).save(os.path.join(model_dir, "best", "ckpt"))
    loaded, _ = checkpointing.load_model(model_dir, "best")
    u = loaded.prior_layer.pseudo_inputs().numpy()
    assert any(np.array_equal(u[0], image) for image in data)
    np.testing.assert_array_equal(u, model.prior_layer.pseudo_inputs().numpy())
    x = _images(2, seed=7)
    np.testing.assert_array_equal(loaded.log_likelihood(x, 8, seed=1).numpy(), model.log_likelihood(x, 8, seed=1).numpy())


def test_build_model_refuses_vampprior_data_without_images():
    with pytest.raises(ValueError, match="needs training images"):
        tfvamp.build_model("vae", "vampprior_data", SHAPE, "bernoulli", num_components=4)


def test_results_have_one_merging_writer(tmp_path):
    model_dir = str(tmp_path)
    checkpointing.update_results(model_dir, {"training": {"best_epoch": 3}})
    merged = checkpointing.update_results(model_dir, {"test": {"log_likelihood": -1.5}})
    with open(tmp_path / "results.json") as f:
        on_disk = json.load(f)
    assert on_disk == merged == {"training": {"best_epoch": 3}, "test": {"log_likelihood": -1.5}}
    (tmp_path / "results.json").write_text("{not json")
    assert checkpointing.update_results(model_dir, {"test": {}}) == {"test": {}}  # a broken file is replaced
