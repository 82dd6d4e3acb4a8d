"""Keras' own workflow beside the custom loop: compile / fit / evaluate on the same objective,
the WarmUp callback, AdamNormGrad as a Keras optimizer, and a strategy's scope."""
import numpy as np
import pytest
import tensorflow as tf

import tfvamp
from tfvamp import checkpointing
from tfvamp import training

SHAPE = (8, 8, 1)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    protos = np.zeros((2,) + SHAPE, np.float32)
    protos[0, 2:6] = 1
    protos[1, :, 2:6] = 1
    x = protos[rng.integers(0, 2, n)]
    return np.where(rng.random(x.shape) < 0.05, 1.0 - x, x).astype(np.float32)


def test_fit_trains_the_elbo_and_matches_the_custom_loop_model(tmp_path):
    data = _data(400)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tfvamp.build_model("vae", "vampprior", SHAPE, "bernoulli", num_components=6, z1_size=4, seed=3)
        model.compile(optimizer=tfvamp.AdamNormGrad(3e-3))
    history = model.fit(data, epochs=4, batch_size=50, callbacks=[tfvamp.WarmUp(2)], verbose=0,
                        validation_data=data[:100])
    losses = history.history["loss"]
    assert losses[-1] < losses[0] and set(history.history) >= {"loss", "reconstruction", "kl", "val_loss", "beta"}
    assert history.history["beta"] == [0.5, 1.0, 1.0, 1.0]
    # `loss` is the negative ELBO per example: reconstruction + beta * kl, as reported per epoch.
    for loss, recon, kl, beta in zip(losses, history.history["reconstruction"], history.history["kl"],
                                     history.history["beta"]):
        assert loss == pytest.approx(recon + beta * kl, rel=1e-4)
    evaluated = model.evaluate(data[:100], batch_size=50, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(evaluated["reconstruction"] + evaluated["kl"], rel=1e-4)
    # The custom loop's model of the same config, given these weights, gives the same seeded LL.
    config = {"model": "vae", "prior": "vampprior", "likelihood": "bernoulli", "input_shape": list(SHAPE),
              "num_components": 6, "z1_size": 4, "z2_size": 40, "pseudo_inputs_mean": 0.05,
              "pseudo_inputs_std": 0.01, "seed": 3}
    twin = checkpointing.model_from_config(config)
    for a, b in zip(twin.weights, model.weights):
        a.assign(b)
    x = data[:10]
    np.testing.assert_array_equal(twin.log_likelihood(x, 32, seed=4).numpy(), model.log_likelihood(x, 32, seed=4).numpy())
    # The trained model beats a fresh one.
    fresh = tfvamp.build_model("vae", "vampprior", SHAPE, "bernoulli", num_components=6, z1_size=4, seed=3)
    assert model.log_likelihood(x, 32, seed=4).numpy().mean() > fresh.log_likelihood(x, 32, seed=4).numpy().mean()


def test_warmup_callback_follows_the_schedule():
    model = tfvamp.build_model("vae", "standard", SHAPE, "bernoulli", z1_size=2)
    model.compile()
    assert isinstance(model.optimizer, tfvamp.AdamNormGrad)
    callback = tfvamp.WarmUp(4)
    callback.set_model(model)
    for epoch in range(6):
        callback.on_epoch_begin(epoch)
        assert float(model.fit_beta.numpy()) == pytest.approx(training.warmup_beta(epoch + 1, 4))


def test_compile_refuses_a_loss_and_metrics():
    model = tfvamp.build_model("vae", "standard", SHAPE, "bernoulli", z1_size=2)
    with pytest.raises(ValueError, match="own objective"):
        model.compile(optimizer="adam", loss="mse")


def test_the_fit_state_stays_out_of_checkpoints(tmp_path):
    """beta and the metric trackers that compile adds are not model weights: a compiled model's
    checkpoint holds the same model entries as an uncompiled one's (plus Keras's optimizer)."""
    plain = tfvamp.build_model("vae", "standard", SHAPE, "bernoulli", z1_size=2, seed=1)
    compiled = tfvamp.build_model("vae", "standard", SHAPE, "bernoulli", z1_size=2, seed=1)
    compiled.compile()
    compiled.fit(_data(20), epochs=1, batch_size=10, verbose=0)
    counts = {}
    for name, model in (("plain", plain), ("compiled", compiled)):
        path = tf.train.Checkpoint(model=model).save(str(tmp_path / name / "ckpt"))
        names = [k for k, _ in tf.train.list_variables(path) if "OBJECT_GRAPH" not in k and "save_counter" not in k]
        assert not any("beta" in k or "reconstruction" in k or "kl" in k for k in names), names
        counts[name] = len(names)
    assert counts["compiled"] == counts["plain"] + len(compiled.optimizer.variables)
    assert len(compiled.weights) == len(plain.weights)
