"""Models: the objective against closed forms, IS-LL >= ELBO, shapes, PixelCNN sampling."""
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
    logits = model._decode(enc["z_mean"])[0].numpy().astype(np.float64)
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


@pytest.mark.parametrize("model_name", tfvamp.MODELS)
@pytest.mark.parametrize("prior", tfvamp.PRIORS)
def test_importance_sampled_ll_bounds_elbo_and_tightens(model_name, prior):
    heavy = model_name in ("convhvae", "pixelhvae")
    shape = FREY if heavy else BINARY  # both image shapes go through every code path
    model = _small(model_name, prior, shape)
    x = _binary(4, shape, seed=3)
    # Expectations, not single draws: E[ELBO] <= E[LL_5] <= E[LL_500] (Burda et al. 2016).
    elbo = np.mean([-model.loss_terms(x)["loss"].numpy() for _ in range(10)])
    ll_5 = np.mean([model.log_likelihood(x, num_samples=5).numpy() for _ in range(10)])
    ll_500 = model.log_likelihood(x, num_samples=500, chunk_size=125)
    assert ll_500.shape == (4,) and ll_500.dtype == tf.float64
    assert np.all(np.isfinite(ll_500.numpy()))
    assert ll_500.numpy().mean() >= ll_5 >= elbo


def test_ll_estimate_is_exact_when_q_equals_p_and_chunks_do_not_divide_s():
    """q(z|x) = p(z) = N(0, I) and a decoder that ignores z: every log-weight is log p(x).

    Then the estimate must equal log p(x) exactly for any S and chunking; counting the
    padded samples of a last, partial chunk would shift it by log(padded / S).
    """
    model = _small("vae", "standard")
    model.q_z_head.kernel.assign(tf.zeros_like(model.q_z_head.kernel))
    model.q_z_head.bias.assign(tf.zeros_like(model.q_z_head.bias))
    model.p_x_head.kernel.assign(tf.zeros_like(model.p_x_head.kernel))
    logits = np.random.default_rng(8).normal(size=model.p_x_head.bias.shape).astype(np.float32)
    model.p_x_head.bias.assign(logits)
    x = _binary(3)
    exact = (x.reshape(3, -1) * log_expit(logits) + (1 - x.reshape(3, -1)) * log_expit(-logits)).sum(-1)
    for num_samples, chunk in [(10, 3), (10, 10), (7, 4), (1, 1)]:
        np.testing.assert_allclose(model.log_likelihood(x, num_samples, chunk).numpy(), exact, rtol=1e-6)


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


def test_model_config_round_trip():
    model = _small("convhvae", "weighted_vampprior", FREY, "discretized_logistic")
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert len(clone.weights) == len(model.weights)


def test_pixelhvae_decoder_is_causal():
    model = _small("pixelhvae", "standard", (6, 5, 1))
    rng = np.random.default_rng(6)
    z1, z2 = rng.normal(size=(1, 6)).astype(np.float32), rng.normal(size=(1, 5)).astype(np.float32)
    x = _binary(1, (6, 5, 1))
    base = model._decode(z1, z2, x)[0].numpy().reshape(-1)
    for pos in range(30):
        changed = x.copy().reshape(-1)
        changed[pos] = 1.0 - changed[pos]
        out = model._decode(z1, z2, changed.reshape(1, 6, 5, 1))[0].numpy().reshape(-1)
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
    probs = tf.sigmoid(model._decode(z1, z2, x)[0]).numpy()
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


def test_float32_prior_in_the_estimator_agrees_with_float64():
    """The estimator's centred float32 prior changes log p(z) only by rounding (same samples)."""
    model = _small("hvae", "vampprior")
    x = _binary(3)
    noise = lambda shape: tf.random.stateless_normal(shape, seed=[3, 4])  # noqa: E731
    terms = {}
    for dtype in ("float32", "float64"):
        encoded, log_prior, _ = model._estimator_setup(x, dtype)
        terms[dtype] = model._terms(x, encoded, 8, log_prior, noise, False)
    np.testing.assert_array_equal(terms["float32"][0].numpy(), terms["float64"][0].numpy())  # same samples
    np.testing.assert_allclose(terms["float32"][2].numpy(), terms["float64"][2].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="prior_dtype"):
        model.log_likelihood(x, num_samples=4, prior_dtype="float16")


def test_log_likelihood_seed_makes_it_reproducible():
    model = _small("hvae", "vampprior")
    x = _binary(3)
    first = model.log_likelihood(x, num_samples=12, chunk_size=5, seed=7).numpy()
    np.testing.assert_array_equal(model.log_likelihood(x, num_samples=12, chunk_size=5, seed=7).numpy(), first)
    assert np.all(model.log_likelihood(x, num_samples=12, chunk_size=5, seed=8).numpy() != first)
    assert np.all(model.log_likelihood(x, num_samples=12, chunk_size=5).numpy() != first)  # seed drawn afresh


@pytest.mark.parametrize("shape", [(4, 7), (3, 5, 9), (1,)])
def test_stateless_normal_draws_are_standard_normal_and_reproducible(shape):
    """The Box-Muller draws against SciPy's normal: the distribution (KS), the pairing of a
    radius with cos and sin (uncorrelated halves), the tail, and the seed."""
    from scipy.stats import kstest

    seed = tf.constant([5, 6])
    draws = tfvamp.models.stateless_normal(shape, seed).numpy()
    assert draws.shape == shape and draws.dtype == np.float32
    np.testing.assert_array_equal(tfvamp.models.stateless_normal(shape, seed).numpy(), draws)
    many = tfvamp.models.stateless_normal([200_001], tf.constant([1, 2])).numpy().astype(np.float64)
    assert kstest(many, "norm").pvalue > 1e-3
    half = len(many) // 2  # cos draws first, then the sin draws of the same (radius, angle)
    assert abs(np.corrcoef(many[:half], many[half:2 * half])[0, 1]) < 4 / np.sqrt(half)
    assert abs(np.corrcoef(many[:half] ** 2, many[half:2 * half] ** 2)[0, 1]) < 4 / np.sqrt(half)
    tail = np.mean(np.abs(many) > 3.0)
    assert abs(tail - 2 * norm.sf(3.0)) < 5 * np.sqrt(2 * norm.sf(3.0) / len(many))
    assert np.abs(many).max() <= 5.8 and not np.array_equal(
        tfvamp.models.stateless_normal([200_001], tf.constant([1, 3])).numpy(), many.astype(np.float32))


@pytest.mark.parametrize("model_name", ["vae", "hvae"])
def test_sampler_terms_match_scipy_on_the_same_draws(model_name):
    """The importance sampler's per-sample terms (dense Bernoulli through the head, log q from
    the noise) against SciPy on logits and latents recomputed from the same noise."""
    model = _small(model_name, "vampprior")
    x = _binary(3)
    num_samples, rng = 4, np.random.default_rng(9)
    draws = []

    def noise_fn(shape):
        draws.append(rng.normal(size=shape.numpy() if hasattr(shape, "numpy") else shape).astype(np.float32))
        return tf.constant(draws[-1])

    encoded, log_prior, _ = model._estimator_setup(x)
    assert "px_context" in encoded  # MLP heads take the per-image shortcut
    log_px, log_q, _ = (t.numpy().astype(np.float64) for t in model._terms(x, encoded, num_samples, log_prior,
                                                                           noise_fn, False))
    top = "mean" if model_name == "vae" else "mean2"
    mean, logvar = (encoded[top].numpy().astype(np.float64), encoded[top.replace("mean", "logvar")].numpy())
    top_z = (mean[None] + np.exp(0.5 * logvar)[None] * draws[0]).reshape(-1, mean.shape[-1])
    expected_q = norm.logpdf(top_z, np.tile(mean, (num_samples, 1)), np.tile(np.exp(0.5 * logvar), (num_samples, 1)))
    expected_q = expected_q.sum(-1)
    top_z = tf.constant(top_z, tf.float32)
    if model_name == "vae":
        logits = model._decode(top_z)[0]
    else:
        x_features = tf.tile(encoded["x_features"], [num_samples, 1])
        mean1, logvar1 = (t.numpy().astype(np.float64) for t in model._q_z1(x_features, top_z))
        z1 = mean1 + np.exp(0.5 * logvar1) * draws[1].reshape(mean1.shape)
        expected_q += norm.logpdf(z1, mean1, np.exp(0.5 * logvar1)).sum(-1)
        logits = model._decode(tf.constant(z1, tf.float32), top_z)[0]
    logits = logits.numpy().astype(np.float64).reshape(num_samples, 3, -1)
    flat = x.reshape(1, 3, -1)
    expected_px = (flat * log_expit(logits) + (1 - flat) * log_expit(-logits)).sum(-1)
    np.testing.assert_allclose(log_px, expected_px, rtol=1e-5)
    np.testing.assert_allclose(log_q, expected_q.reshape(num_samples, 3), rtol=1e-5, atol=1e-4)
