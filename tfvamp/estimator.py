"""The importance-sampled test log-likelihood (Burda et al. 2016; docs/paper_details.md section 7).

    log p(x) ~= logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S,  z_s ~ q(z|x)

    ll = estimator.log_likelihood(model, images, num_samples=5000, seed=0)   # float64 [B]

Written once against the model protocol (`tfvamp.models`), for every family:

* once per batch (`setup`): the encoders' outputs on x (`model.encode_data(x, many_samples=True)`,
  which includes the likelihood's per-image part), and the prior: the pseudo-inputs'
  encodings, with the mixture's expansion centred on each image's posterior mean
  (`GaussianMixture.log_prob_by_image`), which keeps float32 accurate;
* per chunk of samples (`chunk_log_weights`): stateless normal draws (`tfvamp.noise`) from
  the seed folded with the chunk's index, and the log-weights from `model.score_latents`;
* the logsumexp accumulated in float64 over chunks, the last chunk's extra samples masked.

Chunks are sized so that one chunk's activations fit `FLOAT_BUDGET` floats (about 256 MB).
"""
import weakref

import numpy as np
import tensorflow as tf

from tfvamp import noise
from tfvamp import priors

FLOAT_BUDGET = 2 ** 26  # floats of activations per chunk
PRIOR_DTYPES = ("float32", "float64")
_COMPILED = weakref.WeakKeyDictionary()


def floats_per_row(model):
    """Activation floats one (sample, image) row costs, the mixture's `[rows, K]` terms included."""
    per_row = model.floats_per_sample()
    if priors.is_mixture(model.prior_name):
        per_row += 4 * model.num_components
    return per_row


def rows_per_chunk(model):
    """(sample, image) rows per chunk within `FLOAT_BUDGET`."""
    return max(1, FLOAT_BUDGET // floats_per_row(model))


def default_chunk_size(model, batch_size, num_samples):
    """Samples per chunk for a batch of `batch_size` images (at most `num_samples`)."""
    return int(max(1, min(int(num_samples), rows_per_chunk(model) // max(1, int(batch_size)))))


def setup(model, x, prior_dtype="float32"):
    """What the sampler computes once per batch: (`encoded`, `log_prior`, `prior`).

    `encoded` is `model.encode_data(x, many_samples=True)`; `log_prior` maps top latents
    `[S * B, D]` (sample-major) to log p `[S * B]`, centred on each image's posterior mean;
    `prior` is `model.prior()`, which it was built from (`model.encode_with_prior`).
    """
    encoded, prior = model.encode_with_prior(x, many_samples=True)
    return encoded, priors.log_prob_by_image(prior, encoded["top_mean"], tf.as_dtype(prior_dtype)), prior


def chunk_log_weights(model, x, encoded, log_prior, chunk, seed):
    """float64 log-weights `[chunk, B]` of `chunk` samples per image drawn from `seed` (`[2]`)."""
    log_px, log_q, log_p = model.score_latents(x, encoded, chunk, log_prior, noise.noise_fn(seed), False)
    return tf.cast(log_px + log_p - log_q, tf.float64)


def log_likelihood_graph(model, x, num_samples, chunk, seed, prior_dtype="float32"):
    """The estimator on tensors (usable inside any `tf.function`, e.g. a SavedModel's).

    Args:
      model: a tfvamp model.
      x: images `[B, H, W, C]`, checked by the caller.
      num_samples: S, int32 scalar >= 1.
      chunk: samples per chunk, int32 scalar in [1, S].
      seed: `[2]` int32; chunk i draws from `stateless_fold_in(seed, i)`.
      prior_dtype: 'float32' or 'float64', the prior's log-density precision.

    Returns:
      float64 `[B]`.
    """
    encoded, log_prior, _ = setup(model, x, prior_dtype)
    num_chunks = (num_samples + chunk - 1) // chunk
    acc0 = tf.fill(tf.shape(x)[:1], tf.constant(-np.inf, tf.float64))

    def body(i, acc):
        log_w = chunk_log_weights(model, x, encoded, log_prior, chunk,
                                  tf.random.experimental.stateless_fold_in(seed, i))
        # The last chunk may run past S: mask its extra samples out.
        valid = tf.range(chunk) + i * chunk < num_samples
        log_w = tf.where(valid[:, None], log_w, tf.constant(-np.inf, tf.float64))
        return i + 1, tf.reduce_logsumexp(tf.stack([acc, tf.reduce_logsumexp(log_w, 0)]), 0)

    _, acc = tf.while_loop(lambda i, _: i < num_chunks, body, (tf.constant(0), acc0))
    return acc - tf.math.log(tf.cast(num_samples, tf.float64))


def _compiled(model):
    fn = _COMPILED.get(model)
    if fn is None:
        def estimate(x, num_samples, chunk, seed, prior_dtype):
            return log_likelihood_graph(model, x, num_samples, chunk, seed, prior_dtype)

        fn = _COMPILED[model] = tf.function(estimate, reduce_retracing=True)
    return fn


def log_likelihood(model, x, num_samples=5000, chunk_size=None, prior_dtype="float32", seed=None):
    """Importance-sampled log p(x) in nats, per example.

    Args:
      model: a tfvamp model.
      x: images `[B, H, W, C]` of the model's shape, in [0, 1].
      num_samples: S >= 1 (5000 in the paper).
      chunk_size: samples per chunk (default: as many as fit `FLOAT_BUDGET`).
      prior_dtype: 'float32' (default; centred per image, about 1e-5 nats from float64 in the
        tests' worst case) or 'float64' (a reference, 2-3x slower on the prior).
      seed: an int makes the estimate reproducible; None draws the seed from TensorFlow's
        global generator (`tf.random.set_seed`).

    Returns:
      float64 `[B]`.
    """
    if prior_dtype not in PRIOR_DTYPES:
        raise ValueError(f"prior_dtype must be one of {PRIOR_DTYPES}, got {prior_dtype!r}.")
    x = tf.convert_to_tensor(x, tf.float32)
    num_samples = int(num_samples)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    chunk = int(chunk_size or default_chunk_size(model, x.shape[0] or 100, num_samples))
    chunk = max(1, min(chunk, num_samples))
    return _compiled(model)(x, tf.constant(num_samples), tf.constant(chunk), noise.seed_pair(seed, 0),
                            prior_dtype)
