"""The release's initialisation (`init="release"`) against the formulas of its PyTorch code,
layer type by layer type, in every model family; `init="keras"`; checkpoints across the two;
old runs (no `init` in config.json) resuming with Keras'."""
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import synthetic_splits, tiny_config
import tfvamp
from tfvamp import checkpointing
from tfvamp import heads
from tfvamp import layers as tl
from tfvamp import run
from tfvamp.config import RunConfig

SHAPE = (28, 20, 1)  # Frey Faces: every family, the conv ones included


def _fan_in(kernel):
    return int(np.prod(kernel.shape[:-1]))


def _check_normal(w, std, label):
    """Mean 0 and variance std^2 within 5 standard errors; untruncated: the share beyond 2 std
    is the normal's 4.55% (a truncated normal, Keras' HeNormal, has none there)."""
    w = w.ravel().astype(np.float64)
    n = w.size
    assert abs(w.mean()) < 5 * std / math.sqrt(n), label
    # Var(sample variance) = 2 sigma^4 / (n - 1) for a normal.
    assert abs(w.var() - std ** 2) < 5 * math.sqrt(2.0 / (n - 1)) * std ** 2, (label, w.var(), std ** 2)
    tail = np.mean(np.abs(w) > 2 * std)
    p = 0.0455
    assert abs(tail - p) < 5 * math.sqrt(p * (1 - p) / n), (label, tail)


def _check_uniform(w, bound, label):
    """Support within [-bound, bound]; for enough draws, variance bound^2 / 3 within 5 s.e. and
    the extremes near the bounds."""
    w = w.ravel().astype(np.float64)
    assert np.all(np.abs(w) <= bound * (1 + 1e-6)), (label, np.abs(w).max(), bound)
    n = w.size
    if n >= 200:
        # Var(sample variance) of U(-b, b): (mu4 - sigma^4) / n = (b^4 / 5 - b^4 / 9) / n.
        assert abs(w.var() - bound ** 2 / 3) < 5 * math.sqrt((1 / 5 - 1 / 9) / n) * bound ** 2, (label, w.var())
        assert np.abs(w).max() > 0.95 * bound, label


# What the release's PyTorch layers draw (models/*.py, utils/nn.py): (kernel kind, has a bias).
def _expected(layer, model):
    if isinstance(layer, (tl.GatedDense, heads.GaussianHead)):
        return "he_normal", True
    if isinstance(layer, heads.ImageHead):
        if not layer.conv:
            return "he_normal", True
        release_bias = not (model.model_name == "pixelhvae" and layer.likelihood != "bernoulli")
        return "uniform", release_bias
    if isinstance(layer, tl.GatedConv2D):
        return "uniform", True
    if isinstance(layer, tl.MaskedConv2D):
        return "uniform", None  # no bias variable at all
    return None


def _layers(model):
    return [l for l in model._flatten_layers() if _expected(l, model) is not None]  # pylint: disable=protected-access


def _kernels_and_biases(layer):
    pairs = [(layer.kernel, getattr(layer, "bias", None))]
    if hasattr(layer, "gate_kernel"):
        pairs.append((layer.gate_kernel, layer.gate_bias))
    return pairs


@pytest.mark.parametrize("family", tfvamp.models.MODELS)
@pytest.mark.parametrize("likelihood", ["discretized_logistic", "bernoulli"])
def test_release_init_follows_the_release_layer_by_layer(family, likelihood):
    keras.utils.set_random_seed(5)
    model = tfvamp.build_model(family, "vampprior", SHAPE, likelihood, num_components=7, z1_size=6, z2_size=5,
                               seed=0, pseudo_inputs_mean=0.5, pseudo_inputs_std=0.02)
    assert model.get_config()["init"] == "release"  # the default
    found = set()
    for layer in _layers(model):
        kind, has_bias = _expected(layer, model)
        found.add(type(layer).__name__)
        for kernel, bias in _kernels_and_biases(layer):
            k = kernel.numpy()
            fan_in = _fan_in(k)  # [in, out] -> in; [k, k, in, out] -> k * k * in (the whole kernel)
            label = f"{family} {layer.name} {kernel.path}"
            if kind == "he_normal":
                _check_normal(k, math.sqrt(2.0 / fan_in), label)
            else:
                _check_uniform(k, 1.0 / math.sqrt(fan_in), label)
            if has_bias is None:
                assert bias is None, label
            elif has_bias:
                _check_uniform(bias.numpy(), 1.0 / math.sqrt(fan_in), label + " bias")
            else:
                np.testing.assert_array_equal(bias.numpy(), 0.0)
    expected = {"vae": {"GatedDense", "GaussianHead", "ImageHead"},
                "hvae": {"GatedDense", "GaussianHead", "ImageHead"},
                "convhvae": {"GatedDense", "GaussianHead", "ImageHead", "GatedConv2D"},
                "pixelhvae": {"GatedDense", "GaussianHead", "ImageHead", "GatedConv2D", "MaskedConv2D"}}[family]
    assert found == expected
    # The pseudo-inputs: N(mean, std) before hardtanh(0, 1), as before.
    u = model.prior_layer.pseudo_inputs_variable.numpy() if hasattr(model.prior_layer, "pseudo_inputs_variable") \
        else None
    if u is not None:
        _check_normal(u - 0.5, 0.02, "pseudo-inputs")


@pytest.mark.parametrize("family", ["hvae", "pixelhvae"])
def test_keras_init_is_truncated_he_normal_with_zero_biases(family):
    keras.utils.set_random_seed(5)
    model = tfvamp.build_model(family, "standard", SHAPE, "discretized_logistic", z1_size=6, z2_size=5, init="keras")
    for layer in _layers(model):
        for kernel, bias in _kernels_and_biases(layer):
            k = kernel.numpy()
            std = math.sqrt(2.0 / _fan_in(k))
            # Keras draws N(0, s^2) truncated at 2 s with s = std / 0.8796 (the truncated normal's
            # standard deviation is 0.8796 s), so that the variance is 2 / fan_in.
            assert np.all(np.abs(k) <= 2 * std / 0.87962566 * 1.0001), kernel.path
            if k.size > 2000:
                assert abs(k.var() - std ** 2) < 5 * math.sqrt(2.0 / k.size) * std ** 2
            if bias is not None:
                np.testing.assert_array_equal(bias.numpy(), 0.0)


def test_init_is_checked():
    with pytest.raises(ValueError, match="unknown initialisation 'torch'.*release, keras"):
        tfvamp.build_model("vae", "standard", SHAPE, "discretized_logistic", init="torch")


def test_a_checkpoint_of_either_init_loads_into_the_other(tmp_path):
    keras.utils.set_random_seed(1)
    a = tfvamp.build_model("convhvae", "vampprior", SHAPE, "discretized_logistic", num_components=4, seed=0,
                           init="release")
    b = tfvamp.build_model("convhvae", "vampprior", SHAPE, "discretized_logistic", num_components=4, seed=0,
                           init="keras")
    path = tf.train.Checkpoint(model=a).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=b).read(path).assert_consumed()
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


def test_a_run_from_before_init_resumes_with_keras_init(tmp_path):
    """config.json without `init` (every run before the flag): the model config says keras, and
    re-running with today's default (release) resumes instead of refusing another run's folder."""
    config = tiny_config(tmp_path / "run", init="keras", epochs=1)
    run.run(config, tf.distribute.get_strategy(), synthetic_splits())
    path = os.path.join(config.training.model_dir, checkpointing.CONFIG_FILE)
    with open(path) as f:
        old = json.load(f)
    del old["init"]
    with open(path, "w") as f:
        json.dump(old, f)
    assert RunConfig.from_dict(old).model.init == "keras"
    model, _ = checkpointing.load_model(config.training.model_dir, "latest")
    assert model.get_config()["init"] == "keras"
    resumed = tiny_config(tmp_path / "run", epochs=2)
    assert resumed.model.init == "release"
    results = run.run(resumed, tf.distribute.get_strategy(), synthetic_splits())
    assert results["training"]["epochs_trained"] == 2
    assert checkpointing.load_config(config.training.model_dir).model.init == "keras"
