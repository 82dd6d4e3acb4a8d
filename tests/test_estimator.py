"""The importance sampler (tfvamp.estimator): IS-LL >= ELBO and tightens, exact when q = p,
chunking, seeds, the centred float32 prior, and the per-sample terms against SciPy."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_expit
from scipy.stats import norm

import tfvamp
from tfvamp import estimator

BINARY = (28, 28, 1)
FREY = (28, 20, 1)


def _binary(n, shape=BINARY, seed=0):
    return (np.random.default_rng(seed).uniform(size=(n,) + shape) < 0.3).astype(np.float32)


def _small(model_name, prior, shape=BINARY, likelihood="bernoulli", **kw):
    data = _binary(12, shape) if prior == "vampprior_data" else None
    return tfvamp.build_model(model_name, prior, shape, likelihood, num_components=5, z1_size=6, z2_size=5,
                              pseudo_inputs_data=data, seed=1, **kw)


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


def test_float32_prior_in_the_estimator_agrees_with_float64():
    """The estimator's centred float32 prior changes log p(z) only by rounding (same samples)."""
    model = _small("hvae", "vampprior")
    x = _binary(3)
    noise = lambda shape: tf.random.stateless_normal(shape, seed=[3, 4])  # noqa: E731
    terms = {}
    for dtype in ("float32", "float64"):
        encoded, log_prior, _ = estimator.setup(model, x, dtype)
        terms[dtype] = model.score_latents(x, encoded, 8, log_prior, noise, False)
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

    encoded, log_prior, _ = estimator.setup(model, x)
    assert "px_context" in encoded  # MLP heads take the per-image shortcut
    log_px, log_q, _ = (t.numpy().astype(np.float64) for t in model.score_latents(x, encoded, num_samples,
                                                                                  log_prior, noise_fn, False))
    mean, logvar = encoded["top_mean"].numpy().astype(np.float64), encoded["top_logvar"].numpy()
    top_z = (mean[None] + np.exp(0.5 * logvar)[None] * draws[0]).reshape(-1, mean.shape[-1])
    expected_q = norm.logpdf(top_z, np.tile(mean, (num_samples, 1)), np.tile(np.exp(0.5 * logvar), (num_samples, 1)))
    expected_q = expected_q.sum(-1)
    top_z = tf.constant(top_z, tf.float32)
    if model_name == "vae":
        logits = model.decode(top_z)[0]
    else:
        x_features = tf.tile(encoded["x_features"], [num_samples, 1])
        mean1, logvar1 = (t.numpy().astype(np.float64) for t in model._q_z1(x_features, top_z))
        z1 = mean1 + np.exp(0.5 * logvar1) * draws[1].reshape(mean1.shape)
        expected_q += norm.logpdf(z1, mean1, np.exp(0.5 * logvar1)).sum(-1)
        logits = model.decode(tf.constant(z1, tf.float32), top_z)[0]
    logits = logits.numpy().astype(np.float64).reshape(num_samples, 3, -1)
    flat = x.reshape(1, 3, -1)
    expected_px = (flat * log_expit(logits) + (1 - flat) * log_expit(-logits)).sum(-1)
    np.testing.assert_allclose(log_px, expected_px, rtol=1e-5)
    np.testing.assert_allclose(log_q, expected_q.reshape(num_samples, 3), rtol=1e-5, atol=1e-4)


def test_chunks_fit_the_float_budget():
    """Chunk sizes from the model's per-row floats and the mixture's [rows, K] terms."""
    model = _small("hvae", "vampprior")
    per_row = model.floats_per_sample() + 4 * 5
    assert estimator.floats_per_row(model) == per_row
    assert estimator.rows_per_chunk(model) == estimator.FLOAT_BUDGET // per_row
    assert estimator.default_chunk_size(model, 100, 5000) == min(5000, estimator.FLOAT_BUDGET // per_row // 100)
    assert estimator.default_chunk_size(model, 10 ** 9, 5000) == 1
    assert estimator.floats_per_row(_small("hvae", "standard")) == model.floats_per_sample()
