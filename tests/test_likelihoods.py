"""Likelihoods against the formulas of docs/paper_details.md written in NumPy."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import expit, log_expit

from tfvamp import likelihoods


def _release_log_prob(x, loc, log_scale):
    """docs/paper_details.md section 3, written out: the release's discretized logistic."""
    s = np.exp(log_scale)
    bin_ = np.clip(np.floor(256 * x), 0, 255) / 256
    return np.log(expit((bin_ + 1 / 256 - loc) / s) - expit((bin_ - loc) / s) + 1e-7)


def test_discretized_logistic_matches_release_formula():
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, size=(4, 7, 5, 1)) + 0.5) / 256
    loc = rng.uniform(likelihoods.LOC_MIN, likelihoods.LOC_MAX, size=x.shape)
    log_scale = rng.uniform(-4.5, 0.0, size=x.shape)
    dist = likelihoods.distribution("discretized_logistic",
                                    [tf.constant(loc, tf.float64), tf.constant(log_scale, tf.float64)])
    assert dist.event_shape == (7, 5, 1) and dist.batch_shape == (4,)
    expected = _release_log_prob(x, loc, log_scale).reshape(4, -1).sum(-1)
    np.testing.assert_allclose(dist.log_prob(x).numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("loc,log_scale", [(0.5, -4.5), (0.5, 0.0), (1 / 512, -4.5), (1 - 1 / 512, -2.0),
                                           (0.01, -1.0), (0.3, -3.3)])
def test_normalized_bins_sum_to_one(loc, log_scale):
    bins = (np.arange(256) + 0.5) / 256
    base = likelihoods.DiscretizedLogistic(np.full(256, loc, np.float32), np.full(256, log_scale, np.float32),
                                           normalized=True)
    total = np.exp(base.log_prob(bins.astype(np.float32)).numpy().astype(np.float64)).sum()
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # The release's formula loses the mass beyond both edges (it is not a distribution);
    # only its +1e-7 per bin can push it past the normalised total.
    release = np.exp(_release_log_prob(bins, loc, log_scale)).sum()
    assert release - 256 * 1e-7 <= total + 1e-6


def test_normalized_interior_bins_match_exact_cdf_difference():
    rng = np.random.default_rng(1)
    x = (rng.integers(1, 255, size=1000) + 0.5) / 256  # interior bins only
    loc = rng.uniform(0.2, 0.8, size=1000)
    log_scale = rng.uniform(-4.5, 0.0, size=1000)
    got = likelihoods.DiscretizedLogistic(loc, log_scale, normalized=True).log_prob(x).numpy()
    lower = np.floor(256 * x) / 256
    s = np.exp(log_scale)
    a, b = (lower + 1 / 256 - loc) / s, (lower - loc) / s
    # sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a): take the side far from 1 (no cancellation).
    mass = np.where(b > 0, expit(-b) - expit(-a), expit(a) - expit(b))
    keep = mass > 1e-12
    np.testing.assert_allclose(got[keep], np.log(mass[keep]), rtol=1e-7)
    assert np.all(np.isfinite(got)) and keep.sum() > 900
    # Edge bins take the tails: first bin = CDF at 1/256, last = 1 - CDF at 255/256.
    edge = likelihoods.DiscretizedLogistic(np.array([0.5, 0.5]), np.array([-1.0, -1.0]), normalized=True)
    np.testing.assert_allclose(edge.log_prob(np.array([0.5 / 256, 255.5 / 256])).numpy(),
                               [log_expit((1 / 256 - 0.5) / np.exp(-1.0)),
                                log_expit(-(255 / 256 - 0.5) / np.exp(-1.0))], rtol=1e-10)


def test_discretized_logistic_sampler_matches_bin_masses():
    """A chi-square-style check of sample frequencies against the normalised bin masses."""
    loc, log_scale = 0.37, -3.0
    base = likelihoods.DiscretizedLogistic(np.float64(loc), np.float64(log_scale), normalized=True)
    draws = base.sample(40000, seed=tf.constant([3, 4])).numpy()
    assert np.all(np.isin(np.round(draws * 256 - 0.5), np.arange(256)))  # bin centres only
    bins = (np.arange(256) + 0.5) / 256
    probs = np.exp(base.log_prob(bins).numpy())
    counts = np.bincount(np.round(draws * 256 - 0.5).astype(int), minlength=256)
    expected = probs * len(draws)
    keep = expected > 20
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert chi2 < 2.0 * keep.sum() + 30, chi2  # ~ dof in expectation


def test_bernoulli_on_logits_matches_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=4.0, size=(3, 4, 4, 1))
    x = (rng.uniform(size=logits.shape) < 0.5).astype(np.float64)
    dist = likelihoods.distribution("bernoulli", [tf.constant(logits)])
    expected = (x * log_expit(logits) + (1 - x) * log_expit(-logits)).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(dist.log_prob(x).numpy(), expected, rtol=1e-10)
    # The fast path the models use, with x broadcast over a leading sample axis.
    fast = likelihoods.log_prob("bernoulli", [tf.constant(np.stack([logits, -logits]))], x)
    np.testing.assert_allclose(fast.numpy()[0], expected, rtol=1e-10)
    flipped = (x * log_expit(-logits) + (1 - x) * log_expit(logits)).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(fast.numpy()[1], flipped, rtol=1e-10)


@pytest.mark.parametrize("shape", [(28, 28, 1), (28, 20, 1), (13, 1, 1)])
def test_grouped_bernoulli_sum_in_float32_with_extreme_logits(shape):
    """The grouped product of (1 + exp(-|l|)) against SciPy, with logits up to +-120 (no
    overflow), a prime pixel count (groups of one), and its written-out gradient."""
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=6.0, size=(2, 3) + shape)
    logits.reshape(-1)[:6] = [120.0, -120.0, 88.5, -88.5, 0.0, 1e-7]
    x = (rng.uniform(size=(3,) + shape) < 0.5).astype(np.float32)
    expected = (x * log_expit(logits) + (1 - x) * log_expit(-logits)).reshape(2, 3, -1).sum(-1)
    l32 = tf.constant(logits, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(l32)
        value = likelihoods.log_prob("bernoulli", [l32], x)
        weighted = tf.reduce_sum(value * tf.constant([[1.0], [2.0]]))
    grad = tape.gradient(weighted, l32)
    assert value.shape == (2, 3) and value.dtype == tf.float32
    # float32 summation of terms up to 120: a few 1e-5 relative.
    np.testing.assert_allclose(value.numpy(), expected, rtol=2e-6, atol=1e-3)
    expected_grad = np.array([1.0, 2.0]).reshape(2, 1, 1, 1, 1) * (x - expit(logits))
    np.testing.assert_allclose(grad.numpy(), expected_grad, atol=1e-6)


def test_unknown_likelihood_names_the_choices():
    with pytest.raises(ValueError, match="bernoulli"):
        likelihoods.check_likelihood("gaussian")
    with pytest.raises(ValueError, match="parameter maps"):
        likelihoods.distribution("discretized_logistic", [tf.zeros([1, 2, 2, 1])])


@pytest.mark.parametrize("dtype,rtol", [(tf.float64, 1e-10), (tf.float32, 2e-5)])
@pytest.mark.parametrize("pixels", [784, 13])
def test_dense_bernoulli_from_the_head_features_matches_scipy(pixels, dtype, rtol):
    """The importance sampler's Bernoulli (the linear term through the head's weights, |l|
    from the matmul) against SciPy on the logits it stands for, and its gradients with
    respect to features, kernel and bias against the closed form x - sigmoid(l)."""
    rng = np.random.default_rng(11)
    num_samples, num_images, width = 3, 4, 7
    features = rng.normal(size=(num_samples, num_images, width))
    kernel = rng.normal(scale=3.0, size=(width, pixels))
    bias = rng.normal(scale=2.0, size=pixels)
    bias[:2] = [80.0, -80.0]  # confident pixels, right and wrong
    x = (rng.uniform(size=(num_images, pixels)) < 0.4).astype(np.float64)
    weights = rng.uniform(0.5, 2.0, size=(num_samples, num_images))
    if dtype == tf.float32:  # the reference sees the rounded inputs
        features, kernel, bias = (a.astype(np.float32).astype(np.float64) for a in (features, kernel, bias))
    logits = features @ kernel + bias  # [S, B, P]
    expected = (x * log_expit(logits) + (1 - x) * log_expit(-logits)).sum(-1)
    tensors = [tf.constant(a, dtype) for a in (features, kernel, bias)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        context = likelihoods.bernoulli_sampler_context(tf.constant(x, dtype), tensors[1], tensors[2])
        value = likelihoods.bernoulli_log_prob_dense(*tensors, context)
        weighted = tf.reduce_sum(value * tf.constant(weights, dtype))
    grads = [g.numpy() for g in tape.gradient(weighted, tensors)]
    assert value.shape == (num_samples, num_images) and value.dtype == dtype
    np.testing.assert_allclose(value.numpy(), expected, rtol=rtol)
    d_logits = weights[..., None] * (x - expit(logits))  # [S, B, P]
    scale = np.abs(d_logits).sum() * np.abs(features).max()
    np.testing.assert_allclose(grads[0], d_logits @ kernel.T, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(grads[1], np.einsum("sbf,sbp->fp", features, d_logits), rtol=rtol,
                               atol=rtol * scale)
    np.testing.assert_allclose(grads[2], d_logits.sum((0, 1)), rtol=rtol, atol=rtol * np.abs(d_logits).sum())
