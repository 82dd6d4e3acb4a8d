"""The five priors against NumPy/SciPy mixtures of diagonal Gaussians."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy.special import logsumexp, softmax
from scipy.stats import norm

import tfvamp
from tfvamp import priors

tfd = tfp.distributions

SHAPE = (28, 28, 1)


def _numpy_mixture_log_prob(z, means, logvars, weights):
    """log sum_k w_k prod_d N(z_d | mean_kd, exp(logvar_kd)), in float64 SciPy."""
    comp = norm.logpdf(z[:, None, :], means[None].astype(np.float64),
                       np.exp(0.5 * logvars[None].astype(np.float64))).sum(-1)
    return logsumexp(comp + np.log(weights)[None], axis=1)


def _vae(prior, k=7, latent=6, **kw):
    return tfvamp.build_model("vae", prior, SHAPE, "bernoulli", num_components=k, z1_size=latent, seed=0, **kw)


@pytest.mark.parametrize("prior", ["vampprior", "weighted_vampprior"])
def test_vampprior_log_prob_matches_numpy_on_clipped_pseudo_inputs(prior):
    model = _vae(prior)
    rng = np.random.default_rng(0)
    # Some entries outside [0, 1], so that the clip matters.
    raw = rng.uniform(-0.5, 1.5, size=model.prior_layer.pseudo_inputs_variable.shape).astype(np.float32)
    model.prior_layer.pseudo_inputs_variable.assign(raw)
    if prior == "weighted_vampprior":
        model.prior_layer.mixture_logits.assign(rng.normal(size=7).astype(np.float32))
    means, logvars = (t.numpy() for t in model.encode_top(np.clip(raw, 0.0, 1.0)))
    weights = (softmax(model.prior_layer.mixture_logits.numpy().astype(np.float64))
               if prior == "weighted_vampprior" else np.full(7, 1 / 7))
    z = rng.normal(size=(11, 6)).astype(np.float32)
    dist = model.prior()
    assert dist.event_shape == (6,) and dist.batch_shape == ()
    np.testing.assert_allclose(dist.log_prob(z).numpy(), _numpy_mixture_log_prob(z, means, logvars, weights),
                               rtol=1e-5)
    np.testing.assert_allclose(model.prior_layer.mixture_weights().numpy().sum(), 1.0, rtol=1e-6)


def test_vampprior_gradients_reach_pseudo_inputs_and_encoder():
    model = _vae("weighted_vampprior")
    raw = model.prior_layer.pseudo_inputs_variable
    values = np.full(raw.shape, 0.5, np.float32)
    values[0, 0, 0, 0] = 1.7  # clipped: no gradient there (release behaviour, documented)
    raw.assign(values)
    z = tf.random.stateless_normal([5, 6], seed=[1, 2])
    with tf.GradientTape() as tape:
        log_p = tf.reduce_sum(model.prior().log_prob(z))
    encoder_kernel = model.q_z.layers[1].kernel
    g_u, g_enc, g_logits = tape.gradient(log_p, [raw, encoder_kernel, model.prior_layer.mixture_logits])
    g_u = g_u.numpy()
    assert np.abs(g_u[1:]).sum() > 0 and np.count_nonzero(g_u) > g_u.size // 2
    assert g_u[0, 0, 0, 0] == 0.0
    assert np.abs(g_enc.numpy()).sum() > 0 and np.abs(g_logits.numpy()).sum() > 0


def test_mog_log_prob_matches_numpy():
    model = _vae("mog", k=5, latent=3)
    rng = np.random.default_rng(3)
    model.prior_layer.means.assign(rng.normal(size=(5, 3)).astype(np.float32))
    model.prior_layer.logvars.assign(rng.uniform(-2, 1, size=(5, 3)).astype(np.float32))
    z = rng.normal(size=(9, 3)).astype(np.float32)
    expected = _numpy_mixture_log_prob(z, model.prior_layer.means.numpy(), model.prior_layer.logvars.numpy(),
                                       np.full(5, 0.2))
    np.testing.assert_allclose(model.prior().log_prob(z).numpy(), expected, rtol=1e-5)


def test_standard_prior_is_unit_gaussian():
    z = np.random.default_rng(4).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(_vae("standard").prior().log_prob(z).numpy(),
                               norm.logpdf(z.astype(np.float64)).sum(-1), rtol=1e-6)


def test_vampprior_data_uses_a_fixed_random_subset_of_training_images():
    images = np.stack([np.full(SHAPE, i / 40.0, np.float32) for i in range(40)])
    model = _vae("vampprior_data", k=7, pseudo_inputs_data=images)
    u = model.prior_layer.pseudo_inputs().numpy()
    levels = np.round(u[:, 0, 0, 0] * 40).astype(int)
    assert len(set(levels)) == 7 and set(levels) <= set(range(40))
    assert list(levels) != list(range(7))  # not "the first K"
    assert all(w is not model.prior_layer.pseudo_inputs_variable for w in model.trainable_weights)
    with pytest.raises(ValueError, match="at least K"):
        _vae("vampprior_data", k=50, pseudo_inputs_data=images)
    with pytest.raises(ValueError, match="pseudo_inputs_data"):
        _vae("vampprior_data", k=7)


def test_prior_sampling_draws_components_by_weight():
    """Components made far apart; sample frequencies follow the (learned) weights."""
    keras.utils.set_random_seed(0)  # the encoder's other layers set the means too
    model = _vae("weighted_vampprior", k=4, latent=6)
    head = model.q_z_head
    kernel = np.zeros(head.kernel.shape, np.float32)
    kernel[:, :6] = np.random.default_rng(5).normal(scale=0.3, size=(kernel.shape[0], 6))
    head.kernel.assign(kernel)
    head.bias.assign(np.concatenate([np.zeros(6), np.full(6, -6.0)]).astype(np.float32))  # tiny variances
    u = np.stack([np.full(SHAPE, v, np.float32) for v in (0.0, 0.3, 0.7, 1.0)])
    model.prior_layer.pseudo_inputs_variable.assign(u)
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    model.prior_layer.mixture_logits.assign(np.log(weights).astype(np.float32))
    means = model.encode_top(u)[0].numpy()
    assert np.min([np.linalg.norm(means[i] - means[j]) for i in range(4) for j in range(i)]) > 1.0
    z = model.prior().sample(8000, seed=tf.constant([7, 8])).numpy()
    nearest = np.argmin(((z[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    freq = np.bincount(nearest, minlength=4) / len(z)
    np.testing.assert_allclose(freq, weights, atol=4 * np.sqrt(0.25 / 8000))


def test_unknown_prior_and_bad_k_are_clear_errors():
    with pytest.raises(ValueError, match="vampprior"):
        _vae("flow")
    with pytest.raises(ValueError, match=">= 1"):
        _vae("vampprior", k=0)
    with pytest.raises(ValueError, match="pseudo_inputs_data must be images"):
        priors.make_prior("vampprior", 4, SHAPE, 3, pseudo_inputs_data=np.zeros((5, 28, 20, 1)))


@pytest.mark.parametrize("dtype,rtol", [(tf.float32, 1e-4), (tf.float64, 2e-6)])
def test_fast_mixture_log_prob_matches_numpy_and_tfp(dtype, rtol):
    """The matmul form used in training and evaluation against SciPy (values and gradients vs TFP)."""
    rng = np.random.default_rng(9)
    means = tf.constant(rng.normal(size=(50, 8)).astype(np.float32), dtype)
    logvars = tf.constant(rng.uniform(-6.0, 2.0, size=(50, 8)).astype(np.float32), dtype)
    logits = tf.constant(rng.normal(size=50).astype(np.float32), dtype)
    z = tf.constant((means.numpy()[rng.integers(0, 50, 30)] + rng.normal(scale=0.1, size=(30, 8))).astype(np.float32),
                    dtype)
    expected = _numpy_mixture_log_prob(z.numpy(), means.numpy(), logvars.numpy(), softmax(logits.numpy().astype(np.float64)))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z, means, logvars])
        dist = priors.GaussianMixture(means, logvars, logits)
        fast = dist.log_prob(z)
        slow = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), priors.diagonal_gaussian(means, logvars)).log_prob(z)
    assert isinstance(dist, tfd.MixtureSameFamily) and fast.dtype == dtype
    assert dist.batch_shape == [] and dist.event_shape == [8]
    np.testing.assert_allclose(fast.numpy(), expected, rtol=rtol)
    for a, b in zip(tape.gradient(fast, [z, means, logvars]), tape.gradient(slow, [z, means, logvars])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-3)
    # Any sample shape, as for every TFP distribution.
    np.testing.assert_allclose(dist.log_prob(tf.reshape(z, [5, 6, 8])).numpy().reshape(-1), fast.numpy(), rtol=1e-6)
    standard = _vae("standard").prior()
    np.testing.assert_allclose(standard.log_prob(tf.cast(z[:, :6], tf.float32)).numpy(),
                               norm.logpdf(z.numpy()[:, :6].astype(np.float64)).sum(-1), rtol=1e-6)


def test_gaussian_mixture_checks_its_parameters():
    with pytest.raises(ValueError, match="same shape"):
        priors.GaussianMixture(tf.zeros([5, 3]), tf.zeros([5, 4]))
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        priors.GaussianMixture(tf.zeros([5]), tf.zeros([5]))
    with pytest.raises(ValueError, match="components"):
        priors.GaussianMixture(tf.zeros([5, 3]), tf.zeros([5, 3]), tf.zeros([4]))
    samples = priors.GaussianMixture(tf.zeros([5, 3]), tf.zeros([5, 3])).sample(7, seed=1)
    assert samples.shape == (7, 3)


def test_by_image_mixture_log_prob_is_accurate_in_float32_where_the_plain_expansion_is_not():
    """The importance sampler's centred form against SciPy in the hard case: narrow components
    (variance at the e^-6 floor) far from the origin, samples near some of them."""
    rng = np.random.default_rng(3)
    k, d, num_images, num_samples = 200, 40, 5, 7
    # Parameters in float32 from the start, so that the reference sees the same inputs.
    means = rng.normal(scale=5.0, size=(k, d)).astype(np.float32)
    logvars = (np.full((k, d), -6.0) + rng.uniform(0.0, 0.5, size=(k, d))).astype(np.float32)
    logits = rng.normal(size=k).astype(np.float32)
    centres = (means[rng.integers(0, k, num_images)] + rng.normal(scale=0.05, size=(num_images, d)))
    z = centres[None] + rng.normal(scale=0.05, size=(num_samples, num_images, d))  # [S, B, D]
    z_flat = z.reshape(-1, d).astype(np.float32)  # sample-major, as the models lay samples out
    expected = _numpy_mixture_log_prob(z_flat.astype(np.float64), means, logvars, softmax(logits.astype(np.float64)))
    dist = priors.GaussianMixture(*(tf.constant(a) for a in (means, logvars, logits)))
    by_image = priors.log_prob_by_image(dist, tf.constant(centres, tf.float32), tf.float32)
    fast = by_image(tf.constant(z_flat)).numpy()
    assert fast.shape == (num_samples * num_images,) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-4)
    plain = dist.log_prob(tf.constant(z_flat)).numpy()
    assert np.abs(plain - expected).max() > 5 * np.abs(fast - expected).max()  # what centring buys
    standard = priors.diagonal_gaussian(tf.zeros(d), tf.zeros(d))
    np.testing.assert_allclose(priors.log_prob_by_image(standard, centres)(z_flat).numpy(),
                               norm.logpdf(z_flat.astype(np.float64)).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("case", ["samples far from the centres", "centres far from the components"])
def test_by_image_mixture_log_prob_falls_back_when_its_shift_does_not_fit(case):
    """The centred prior shifts its logsumexp by log p(centre); when a sample's density is
    ~1e30 times smaller (or larger) than that, exp would underflow (overflow) in float32, and
    the chunk must take the max-shifted path and still match SciPy."""
    rng = np.random.default_rng(4)
    k, d, num_images, num_samples = 30, 8, 3, 5
    means = rng.normal(scale=3.0, size=(k, d)).astype(np.float32)
    logvars = np.full((k, d), -4.0, np.float32)
    logits = rng.normal(size=k).astype(np.float32)
    near = means[rng.integers(0, k, num_images)] + rng.normal(scale=0.05, size=(num_images, d))
    far = near + 1.0  # about 200 nats away under variances of e^-4
    centres, points = (near, far) if case == "samples far from the centres" else (far, near)
    z = (points[None] + rng.normal(scale=0.05, size=(num_samples, num_images, d))).reshape(-1, d)
    z = z.astype(np.float32)
    expected = _numpy_mixture_log_prob(z.astype(np.float64), means, logvars, softmax(logits.astype(np.float64)))
    own = _numpy_mixture_log_prob(centres.astype(np.float32).astype(np.float64), means,
                                  logvars, softmax(logits.astype(np.float64)))
    assert np.abs(expected.reshape(num_samples, num_images) - own[None]).min() > 100  # the shift cannot fit
    dist = priors.GaussianMixture(*(tf.constant(a) for a in (means, logvars, logits)))
    fast = priors.log_prob_by_image(dist, tf.constant(centres, tf.float32))(tf.constant(z)).numpy()
    assert np.all(np.isfinite(fast))
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-4)
