"""Priors over the (top) latent variable: the paper's five.

| name                 | distribution                                                   |
|----------------------|----------------------------------------------------------------|
| `standard`           | N(0, I)                                                         |
| `mog`                | (1/K) sum_k N(mu_k, diag(exp(logvar_k))), mu and logvar learned |
| `vampprior`          | (1/K) sum_k q(z | u_k), pseudo-inputs u_k learned               |
| `vampprior_data`     | as vampprior with u_k = K random training images, fixed         |
| `weighted_vampprior` | sum_k w_k q(z | u_k), w = softmax(learned logits)               |

Each prior is a Keras layer that owns its parameters; `prior.distribution(encoder)` returns a
TFP distribution with batch shape `[]` and event shape `[latent_size]`. The VampPrior needs
the model's encoder (shared with q(z|x)), passed in as a callable images -> (mean, logvar):
the prior does not own it, so the encoder's weights live in exactly one place.

Mixture priors are `tfd.MixtureSameFamily(Categorical, Independent(Normal, 1))`: each
component is a diagonal Gaussian over the whole latent vector (a bare Normal with batch shape
[K, D] would mix every dimension separately, a known mistake). `log_prob` is a logsumexp
over components with every normalising constant kept.
"""
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

PRIORS = ("standard", "mog", "vampprior", "vampprior_data", "weighted_vampprior")


def check_prior(name):
    if name not in PRIORS:
        raise ValueError(f"Unknown prior {name!r}; choose one of {', '.join(PRIORS)}.")
    return name


def diagonal_gaussian(mean, logvar):
    """`Independent(Normal(mean, exp(logvar / 2)), 1)`: event shape `[D]` from `[..., D]` params."""
    return tfd.Independent(tfd.Normal(mean, tf.exp(0.5 * logvar)), reinterpreted_batch_ndims=1)


def gaussian_mixture(means, logvars, mixture_logits=None):
    """A mixture of K diagonal Gaussians over R^D.

    Args:
      means, logvars: `[K, D]` component means and log-variances.
      mixture_logits: `[K]` unnormalised log-weights; None means uniform weights 1/K.

    Returns:
      `tfd.MixtureSameFamily`, batch shape `[]`, event shape `[D]`.
    """
    if mixture_logits is None:
        mixture_logits = tf.zeros(tf.shape(means)[:1], dtype=means.dtype)
    return tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=mixture_logits),
        components_distribution=diagonal_gaussian(means, logvars))


def _mixture_parts(dist, dtype):
    """(means, log_scales, inverse variances `[K, D]`, log-weights `[K]`) in `dtype`, or None
    when `dist` is not a `gaussian_mixture`."""
    components = getattr(dist, "components_distribution", None)
    normal = getattr(components, "distribution", None)
    if not isinstance(dist, tfd.MixtureSameFamily) or not isinstance(normal, tfd.Normal):
        return None
    means = tf.cast(tf.convert_to_tensor(normal.loc), dtype)
    log_scale = tf.math.log(tf.cast(tf.convert_to_tensor(normal.scale), dtype))
    log_weights = tf.nn.log_softmax(tf.cast(dist.mixture_distribution.logits_parameter(), dtype))
    return means, log_scale, tf.exp(-2.0 * log_scale), log_weights


def mixture_log_prob(dist, z, dtype=None):
    """`dist.log_prob(z)` for a prior of this module, fast for Gaussian mixtures.

    For `gaussian_mixture` distributions the K component densities come from one matmul:
    sum_d (z_d - m_kd)^2 / v_kd = [z^2, z] @ [1 / v_k; -2 m_k / v_k] + sum_d m_kd^2 / v_kd,
    which never forms the `[N, K, D]` intermediate of `MixtureSameFamily.log_prob` (about 10x
    faster here). The expansion cancels when |z - m| is small against |z|: fine for training,
    where rounding is noise; the importance sampler uses `mixture_log_prob_by_image`, which
    centres on each image's posterior instead. Other distributions fall back to `dist.log_prob`.

    Args:
      dist: a distribution from `Prior.distribution`, event shape `[D]`.
      z: `[N, D]`.
      dtype: compute dtype (default: z's). The result is cast back to z's dtype.

    Returns:
      `[N]` log-densities.
    """
    out_dtype = z.dtype
    dtype = tf.as_dtype(dtype or out_dtype)
    parts = _mixture_parts(dist, dtype)
    if parts is None:
        return dist.log_prob(z)
    means, log_scale, inv_var, log_weights = parts
    z = tf.cast(z, dtype)
    # Centre on the components' mean: smaller magnitudes, less cancellation.
    centre = tf.stop_gradient(tf.reduce_mean(means, 0))
    z, means = z - centre, means - centre
    quad = tf.matmul(tf.concat([tf.square(z), z], -1),
                     tf.concat([inv_var, -2.0 * means * inv_var], -1), transpose_b=True)  # [N, K]
    const = tf.reduce_sum(math.log(2.0 * math.pi) + 2.0 * log_scale + tf.square(means) * inv_var, -1)
    return tf.cast(tf.reduce_logsumexp(log_weights - 0.5 * (quad + const), -1), out_dtype)


def mixture_log_prob_by_image(dist, centres, dtype=tf.float32):
    """A fast, well-conditioned `log p(z)` for many samples per image (the importance sampler).

    Centres the matmul expansion of `mixture_log_prob` on each image's own point `c_b` (its
    posterior mean): sum_d (z - m_k)^2 / v_k = [(z - c)^2, z - c] @ [1 / v_k; -2 (m_k - c) / v_k]
    + sum_d (m_k - c)^2 / v_k. Samples of q(z|x_b) lie near c_b, so the terms are no larger
    than the result for the components that carry the logsumexp, and float32 is accurate
    (about 1e-5 nats against 0.05 for the uncentred float32 expansion in the tests' worst case).
    The per-image `[B, 2D + 1, K]` weights are built once here; the returned function then costs one
    batched matmul per chunk of samples. The logsumexp is shifted by log p(c_b), also folded into
    the weights; a chunk whose sums of exps leave [1e-30, 1e30] (a sample very far from c_b)
    takes the usual max-shifted logsumexp instead, so the result does not depend on the path
    (on GPUs the check copies one boolean to the host per chunk).

    Args:
      dist: a distribution from `Prior.distribution`, event shape `[D]`.
      centres: `[B, D]`, one point per image (the posterior mean of the prior's latent).
      dtype: compute dtype of the mixture's log-densities.

    Returns:
      A function `z -> log p(z)`: `[S * B, D]` laid out sample-major (row s * B + b belongs to
      image b) -> `[S * B]` in z's dtype. Non-mixture priors fall back to `dist.log_prob`.
    """
    dtype = tf.as_dtype(dtype)
    parts = _mixture_parts(dist, dtype)
    if parts is None:
        return dist.log_prob
    means, log_scale, inv_var, log_weights = parts
    centres = tf.cast(centres, dtype)
    offsets = means[None] - centres[:, None]  # [B, K, D]
    # The matmul gives the whole exponent: -0.5 folded into the weights, and the constant
    # (log-weight and normaliser) as one more row against a column of ones.
    bias = log_weights - 0.5 * tf.reduce_sum(
        math.log(2.0 * math.pi) + 2.0 * log_scale + tf.square(offsets) * inv_var, -1)  # [B, K]
    # The logsumexp's shift, log p(c_b), is folded into the constant row too, so the
    # exponents come out of the matmul ready for exp (no max and subtract pass per chunk).
    shift = tf.reduce_logsumexp(bias, -1)  # [B]
    weights = tf.concat([-0.5 * tf.broadcast_to(inv_var, tf.shape(offsets)), offsets * inv_var,
                         (bias - shift[:, None])[..., None]], -1)  # [B, K, 2D + 1]
    weights = tf.transpose(weights, [0, 2, 1])  # [B, 2D + 1, K]: no transpose per chunk (1.8 vs 2.6 ms)
    num_images, size = tf.shape(centres)[0], tf.shape(centres)[1]
    # Sums of exps in this range are exact to float rounding; outside it the sample is far
    # from c_b (exp could under- or overflow), and the chunk takes the usual max shift.
    low, high = (1e-30, 1e30) if dtype == tf.float32 else (1e-290, 1e290)

    def log_prob(z):
        out_dtype = z.dtype
        zc = tf.transpose(tf.reshape(tf.cast(z, dtype), [-1, num_images, size]), [1, 0, 2])
        zc = zc - centres[:, None]  # [B, S, D]
        features = tf.concat([tf.square(zc), zc, tf.ones_like(zc[..., :1])], -1)
        exponents = tf.matmul(features, weights)  # [B, S, K], minus log p(c_b)
        total = tf.reduce_sum(tf.exp(exponents), -1)
        in_range = tf.reduce_all((total > low) & (total < high))
        log_p = tf.cond(in_range, lambda: tf.math.log(total),
                        lambda: tf.reduce_logsumexp(exponents, -1)) + shift[:, None]  # [B, S]
        return tf.cast(tf.reshape(tf.transpose(log_p), [-1]), out_dtype)

    return log_prob


class Prior(keras.layers.Layer):
    """Base class: a prior over a `latent_size`-dimensional latent."""

    def __init__(self, latent_size, **kwargs):
        super().__init__(**kwargs)
        if int(latent_size) < 1:
            raise ValueError(f"latent_size must be >= 1, got {latent_size}.")
        self.latent_size = int(latent_size)

    def distribution(self, encoder=None):
        """The prior as a TFP distribution, batch shape `[]`, event shape `[latent_size]`."""
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "latent_size": self.latent_size}


@keras.saving.register_keras_serializable(package="tfvamp")
class StandardPrior(Prior):
    """N(0, I)."""

    def distribution(self, encoder=None):
        zeros = tf.zeros([self.latent_size])
        return diagonal_gaussian(zeros, zeros)


@keras.saving.register_keras_serializable(package="tfvamp")
class MoGPrior(Prior):
    """A uniform mixture of `num_components` learnable diagonal Gaussians."""

    def __init__(self, latent_size, num_components, seed=None, **kwargs):
        super().__init__(latent_size, **kwargs)
        if int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}.")
        self.num_components = int(num_components)
        self.seed = seed
        self.means = self.add_weight(
            name="means", shape=(self.num_components, self.latent_size),
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed))
        self.logvars = self.add_weight(
            name="logvars", shape=(self.num_components, self.latent_size), initializer="zeros")

    def distribution(self, encoder=None):
        return gaussian_mixture(tf.convert_to_tensor(self.means), tf.convert_to_tensor(self.logvars))

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfvamp")
class VampPrior(Prior):
    """Variational mixture of posteriors: p(z) = sum_k w_k q(z | u_k).

    The pseudo-inputs u_k are a `[K, H, W, C]` variable shown to the encoder through
    hardtanh(0, 1), i.e. clipped to [0, 1] as in the release (entries outside [0, 1] get no
    gradient, so initialise inside it).

    Args:
      latent_size: D, the size of the latent the encoder outputs.
      num_components: K, the number of pseudo-inputs.
      image_shape: `(H, W, C)` of the pseudo-inputs (the data's shape).
      pseudo_inputs_mean, pseudo_inputs_std: N(mean, std) initialisation (SPEC section 2).
      pseudo_inputs_data: optional `[K, H, W, C]` images in [0, 1] used as the initial value
        (or, with `trainable_pseudo_inputs=False`, as the fixed pseudo-inputs: `vampprior_data`).
      trainable_pseudo_inputs: False freezes u (the `vampprior_data` prior).
      learn_weights: True learns mixture logits (`weighted_vampprior`); else w_k = 1/K.
    """

    def __init__(self, latent_size, num_components, image_shape, pseudo_inputs_mean=0.05,
                 pseudo_inputs_std=0.01, pseudo_inputs_data=None, trainable_pseudo_inputs=True,
                 learn_weights=False, seed=None, **kwargs):
        super().__init__(latent_size, **kwargs)
        if int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}.")
        if float(pseudo_inputs_std) < 0:
            raise ValueError(f"pseudo_inputs_std must be >= 0, got {pseudo_inputs_std}.")
        self.num_components = int(num_components)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.pseudo_inputs_mean = float(pseudo_inputs_mean)
        self.pseudo_inputs_std = float(pseudo_inputs_std)
        self.trainable_pseudo_inputs = bool(trainable_pseudo_inputs)
        self.learn_weights = bool(learn_weights)
        self.seed = seed
        shape = (self.num_components,) + self.image_shape
        if pseudo_inputs_data is not None:
            data = np.asarray(pseudo_inputs_data, dtype=np.float32)
            if data.shape != shape:
                raise ValueError(f"pseudo_inputs_data must have shape {shape} (K images of the data's "
                                 f"shape), got {data.shape}.")
            if data.min() < 0.0 or data.max() > 1.0:
                raise ValueError("pseudo_inputs_data must lie in [0, 1] (images as the model sees them); "
                                 f"got values in [{data.min()}, {data.max()}].")
            initializer = keras.initializers.Constant(data)
        else:
            if not self.trainable_pseudo_inputs:
                raise ValueError("Fixed pseudo-inputs (the 'vampprior_data' prior) need pseudo_inputs_data: "
                                 "K training images of shape (K, H, W, C).")
            initializer = keras.initializers.RandomNormal(
                self.pseudo_inputs_mean, self.pseudo_inputs_std, seed=seed)
        self.pseudo_inputs_variable = self.add_weight(
            name="pseudo_inputs", shape=shape, initializer=initializer,
            trainable=self.trainable_pseudo_inputs)
        self.mixture_logits = (self.add_weight(name="mixture_logits", shape=(self.num_components,),
                                               initializer="zeros") if self.learn_weights else None)

    def pseudo_inputs(self):
        """The pseudo-inputs as the encoder sees them: `[K, H, W, C]` in [0, 1]."""
        return tf.clip_by_value(self.pseudo_inputs_variable, 0.0, 1.0)

    def mixture_weights(self):
        """`[K]` mixture weights, summing to 1."""
        if self.mixture_logits is None:
            return tf.fill([self.num_components], 1.0 / self.num_components)
        return tf.nn.softmax(self.mixture_logits)

    def distribution(self, encoder=None):
        if encoder is None:
            raise ValueError("The VampPrior needs the model's encoder: distribution(encoder), "
                             "encoder(images) -> (mean, logvar).")
        means, logvars = encoder(self.pseudo_inputs())
        logits = None if self.mixture_logits is None else tf.convert_to_tensor(self.mixture_logits)
        return gaussian_mixture(means, logvars, logits)

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components,
                "image_shape": self.image_shape, "pseudo_inputs_mean": self.pseudo_inputs_mean,
                "pseudo_inputs_std": self.pseudo_inputs_std,
                "trainable_pseudo_inputs": self.trainable_pseudo_inputs,
                "learn_weights": self.learn_weights, "seed": self.seed}


def make_prior(name, latent_size, image_shape, num_components=500, pseudo_inputs_mean=0.05,
               pseudo_inputs_std=0.01, pseudo_inputs_data=None, seed=None):
    """Builds the prior layer called `name` (one of `PRIORS`).

    `pseudo_inputs_data`: for `vampprior_data`, at least K images `[N, H, W, C]` in [0, 1];
    K of them are drawn at random (seeded by `seed`). For `vampprior` and
    `weighted_vampprior` the same draw, when given, initialises the pseudo-inputs.
    """
    check_prior(name)
    if name == "standard":
        return StandardPrior(latent_size, name="prior")
    if int(num_components) < 1:
        raise ValueError(f"num_components (K) must be >= 1, got {num_components}.")
    if name == "mog":
        return MoGPrior(latent_size, num_components, seed=seed, name="prior")
    if pseudo_inputs_data is not None:
        data = np.asarray(pseudo_inputs_data, dtype=np.float32)
        if data.ndim != 4 or tuple(data.shape[1:]) != tuple(image_shape):
            raise ValueError(f"pseudo_inputs_data must be images of shape (N, {', '.join(map(str, image_shape))}), "
                             f"got {data.shape}.")
        if data.shape[0] < num_components:
            raise ValueError(f"pseudo_inputs_data has {data.shape[0]} images but num_components is "
                             f"{num_components}: give at least K images.")
        # A random subset, never "the first K" (those can all share one class).
        index = np.random.default_rng(seed).choice(data.shape[0], num_components, replace=False)
        pseudo_inputs_data = data[np.sort(index)]
    return VampPrior(latent_size, num_components, image_shape,
                     pseudo_inputs_mean=pseudo_inputs_mean, pseudo_inputs_std=pseudo_inputs_std,
                     pseudo_inputs_data=pseudo_inputs_data,
                     trainable_pseudo_inputs=(name != "vampprior_data"),
                     learn_weights=(name == "weighted_vampprior"), seed=seed, name="prior")
