"""Models: the objective against closed forms, shapes, PixelCNN causality and sampling, mixed precision."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_expit
from scipy.stats import norm

import tfvamp

BINARY = (28, 28, 1)
FREY = (28, 20, 1)


def _binary(n, shape=BINARY, seed=0):
    return (np.random.default_rng(seed).uniform(size=(n,) + shape) < 0.3).astype(np.float32)


def _gray(n, shape=FREY, seed=0):
    return ((np.random.default_rng(seed).integers(0, 256, size=(n,) + shape) + 0.5) / 256).astype(np.float32)


def _small(model_name, prior, shape=BINARY, likelihood="bernoulli", **kw):
    data = _binary(12, shape) if prior == "vampprior_data" else None
    return tfvamp.build_model(model_name, prior, shape, likelihood, num_components=5, z1_size=6, z2_size=5,
                              pseudo_inputs_data=data, seed=1, **kw)


def test_standard_prior_mc_kl_matches_closed_form():
    model = _small("vae", "standard")
    x = _binary(4)
    enc = model.encode(x)
    mean, var = enc["z_mean"].numpy().astype(np.float64), np.exp(enc["z_logvar"].numpy().astype(np.float64))
    closed = 0.5 * (var + mean ** 2 - 1.0 - np.log(var)).sum(-1)
    draws = np.stack([model.loss_terms(x)["kl"].numpy() for _ in range(400)])
    stderr = draws.std(0) / np.sqrt(len(draws))
    np.testing.assert_array_less(np.abs(draws.mean(0) - closed), 4 * stderr + 1e-3)


def test_loss_terms_keep_every_constant():
    """With zero noise (z = posterior mean) every term has a closed form in NumPy."""
    model = _small("vae", "standard")
    x = _binary(3)
    terms = model.loss_terms(x, beta=0.3, noise_fn=tf.zeros)
    enc = model.encode(x)
    mean, logvar = enc["z_mean"].numpy().astype(np.float64), enc["z_logvar"].numpy().astype(np.float64)
    log_q = norm.logpdf(mean, mean, np.exp(0.5 * logvar)).sum(-1)  # includes -D/2 log(2 pi)
    log_p = norm.logpdf(mean).sum(-1)
    np.testing.assert_allclose(terms["kl"].numpy(), log_q - log_p, rtol=1e-5, atol=1e-4)
    logits = model.decode(enc["z_mean"])[0].numpy().astype(np.float64)
    log_px = (x * log_expit(logits) + (1 - x) * log_expit(-logits)).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(terms["reconstruction"].numpy(), -log_px, rtol=1e-5)
    np.testing.assert_allclose(terms["loss"].numpy(), -log_px + 0.3 * (log_q - log_p), rtol=1e-5)


def test_hvae_kl_sums_both_layers_with_constants():
    model = _small("hvae", "standard")
    x = _binary(2)
    terms = model.loss_terms(x, noise_fn=tf.zeros)
    enc = model.encode(x)
    m1, lv1 = enc["z1_mean"].numpy(), enc["z1_logvar"].numpy()
    m2, lv2 = enc["z2_mean"].numpy(), enc["z2_logvar"].numpy()
    pm1, plv1 = (t.numpy() for t in model._p_z1(enc["z2_mean"]))
    log_q = norm.logpdf(m1, m1, np.exp(0.5 * lv1)).sum(-1) + norm.logpdf(m2, m2, np.exp(0.5 * lv2)).sum(-1)
    log_p = norm.logpdf(m1, pm1, np.exp(0.5 * plv1)).sum(-1) + norm.logpdf(m2).sum(-1)
    np.testing.assert_allclose(terms["kl"].numpy(), log_q - log_p, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape,likelihood", [(BINARY, "bernoulli"), (FREY, "discretized_logistic"),
                                              (FREY, "discretized_logistic_normalized")])
@pytest.mark.parametrize("model_name", tfvamp.MODELS)
def test_shapes_and_ranges(model_name, shape, likelihood):
    model = _small(model_name, "vampprior", shape, likelihood)
    x = _gray(3, shape) if likelihood != "bernoulli" else _binary(3, shape)
    terms = model.loss_terms(x)
    assert all(t.shape == (3,) for t in terms.values())
    for images in (model.sample(2, seed=4), model.reconstruct(x)):
        images = images.numpy()
        assert images.shape[1:] == shape and images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(model.sample(2, seed=4).numpy(), model.sample(2, seed=4).numpy())
    assert model.prior_layer.pseudo_inputs().shape == (5,) + shape
    assert set(model.encode(x)) == {f"{name}_{p}" for name in model.latent_sizes for p in ("mean", "logvar")}


def test_bad_inputs_are_clear_errors():
    model = _small("vae", "standard")
    with pytest.raises(ValueError, match=r"\[batch, 28, 28, 1\]"):
        model.loss_terms(np.zeros((2, 28, 20, 1), np.float32))
    with pytest.raises(ValueError, match="Unknown model"):
        tfvamp.build_model("resnet", "standard", BINARY, "bernoulli")
    with pytest.raises(ValueError, match="Unknown likelihood"):
        tfvamp.build_model("vae", "standard", BINARY, "gaussian")
    with pytest.raises(TypeError, match="unknown options"):
        tfvamp.build_model("vae", "standard", BINARY, "bernoulli", pseudo_input_mean=0.1)
    with pytest.raises(ValueError, match="num_samples"):
        model.log_likelihood(_binary(1), num_samples=0)


def test_pixelhvae_decoder_is_causal():
    model = _small("pixelhvae", "standard", (6, 5, 1))
    rng = np.random.default_rng(6)
    z1, z2 = rng.normal(size=(1, 6)).astype(np.float32), rng.normal(size=(1, 5)).astype(np.float32)
    x = _binary(1, (6, 5, 1))
    base = model.decode(z1, z2, x)[0].numpy().reshape(-1)
    for pos in range(30):
        changed = x.copy().reshape(-1)
        changed[pos] = 1.0 - changed[pos]
        out = model.decode(z1, z2, changed.reshape(1, 6, 5, 1))[0].numpy().reshape(-1)
        np.testing.assert_array_equal(out[:pos + 1], base[:pos + 1])


def test_pixelhvae_autoregressive_sampling_follows_the_conditionals():
    """E[x_j] over ancestral samples = E[p(x_j = 1 | x_<j, z)] with the teacher-forced decoder.

    An off-by-one or a wrong pixel order in the sampler breaks this equality.
    """
    shape = (4, 3, 1)
    model = _small("pixelhvae", "standard", shape)
    n = 3000
    rng = np.random.default_rng(7)
    z1 = np.repeat(rng.normal(size=(1, 6)), n, 0).astype(np.float32)
    z2 = np.repeat(rng.normal(size=(1, 5)), n, 0).astype(np.float32)
    x = model._generate_x(tf.constant(z1), tf.constant(z2), tf.constant([1, 2])).numpy()
    assert set(np.unique(x)) <= {0.0, 1.0}
    probs = tf.sigmoid(model.decode(z1, z2, x)[0]).numpy()
    empirical, predicted = x.reshape(n, -1).mean(0), probs.reshape(n, -1).mean(0)
    np.testing.assert_allclose(empirical, predicted, atol=4 * np.sqrt(0.25 / n))
    # The first pixel sees no data: its probability is the same for every sample.
    np.testing.assert_allclose(probs.reshape(n, -1)[:, 0], probs.reshape(n, -1)[0, 0], rtol=1e-5)


@pytest.mark.parametrize("model_name", tfvamp.MODELS)
def test_bfloat16_hidden_layers_keep_float32_densities(model_name):
    """Mixed precision: bf16 matmuls in the hidden layers, float32 variables and log-densities,
    and the same objective as float32 up to bf16 rounding (same weights)."""
    shape = (6, 5, 1) if model_name == "pixelhvae" else FREY
    kw = dict(num_components=5, z1_size=6, z2_size=5, seed=1)
    f32 = tfvamp.build_model(model_name, "vampprior", shape, "discretized_logistic", **kw)
    bf16 = tfvamp.build_model(model_name, "vampprior", shape, "discretized_logistic", compute_dtype="bfloat16", **kw)
    assert all(w.dtype == "float32" for w in bf16.weights)
    for a, b in zip(bf16.weights, f32.weights):
        a.assign(b)
    x = _gray(3, shape)
    exact = f32.loss_terms(x, noise_fn=tf.zeros)["loss"].numpy()
    mixed = bf16.loss_terms(x, noise_fn=tf.zeros)["loss"]
    assert mixed.dtype == tf.float32
    np.testing.assert_allclose(mixed.numpy(), exact, rtol=0.05)
    assert np.abs(mixed.numpy() - exact).max() > 0  # bf16 really ran
    with pytest.raises(ValueError, match="compute_dtype"):
        tfvamp.build_model("vae", "standard", shape, "bernoulli", compute_dtype="float16")


def test_pixelhvae_with_colour_is_causal_over_pixels_and_channels():
    """RGB: the decoder's parameters for (pixel p, channel c) have zero gradient with respect to
    every later pixel and to channels >= c of pixel p, and a non-zero one to some earlier ones."""
    shape = (4, 3, 3)
    model = _small("pixelhvae", "standard", shape, "discretized_logistic")
    rng = np.random.default_rng(11)
    z1, z2 = rng.normal(size=(1, 6)).astype(np.float32), rng.normal(size=(1, 5)).astype(np.float32)
    x = tf.constant(_gray(1, shape, seed=2))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loc = model.decode(z1, z2, x)[0][0]  # [H, W, C] means of each (pixel, channel)
        outputs = tf.reshape(loc, [-1])
    jacobian = tape.jacobian(outputs, x).numpy().reshape(outputs.shape[0], -1)  # [(p, c), (p', c')]
    order = np.arange(np.prod(shape))  # raster order of (pixel, channel): p * C + c
    for out in order:
        later = order >= out  # later pixels, and channels >= c at the same pixel
        assert np.all(jacobian[out, later] == 0.0), out
    assert np.count_nonzero(jacobian[np.prod(shape) - 1, :-1]) > 0  # the last one sees earlier ones
    # Within the first pixel: G sees R, B sees R and G, R sees nothing of x.
    assert jacobian[1, 0] != 0 and jacobian[2, 0] != 0 and jacobian[2, 1] != 0
    assert np.all(jacobian[0] == 0)


def test_pixelhvae_colour_sampler_draws_each_pixel_and_channel_in_order():
    """The sampler with a fixed seed gives the image obtained by drawing each (pixel, channel), in
    raster and channel order, from the decoder's conditional on the finished image with that
    step's seed: only possible if each draw saw exactly the (pixel, channel)s before it."""
    shape = (3, 3, 3)
    model = _small("pixelhvae", "standard", shape, "discretized_logistic")
    for w in model.pixelcnn.weights + model.p_x_head.weights:  # strong dependencies: a wrong order shows
        if "kernel" in w.name:
            w.assign(w * 4.0)
    rng = np.random.default_rng(5)
    z1 = tf.constant(rng.normal(size=(2, 6)).astype(np.float32))
    z2 = tf.constant(rng.normal(size=(2, 5)).astype(np.float32))
    seed = tf.constant([3, 4], tf.int32)
    x = model._generate_x(z1, z2, seed).numpy()
    rebuilt = np.zeros_like(x)
    params = model.decode(z1, z2, tf.constant(x))  # teacher forcing on the finished image
    base = tfvamp.likelihoods.distribution("discretized_logistic", params).distribution
    flat = rebuilt.reshape(2, -1)
    for i in range(int(np.prod(shape))):
        draw = base.sample(seed=tf.random.experimental.stateless_fold_in(seed, i)).numpy().reshape(2, -1)
        flat[:, i] = draw[:, i]
    np.testing.assert_array_equal(rebuilt, x)
    assert len(np.unique(x[..., 0])) > 1 and not np.array_equal(x[..., 0], x[..., 1])
