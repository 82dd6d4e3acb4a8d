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

Mixture priors are `GaussianMixture`, a `tfd.MixtureSameFamily(Categorical,
Independent(Normal, 1))`: each component is a diagonal Gaussian over the whole latent vector (a
bare Normal with batch shape [K, D] would mix every dimension separately, a known mistake).
Its `log_prob` is one matmul and a logsumexp over components with every normalising constant
kept; training, `model.prior().log_prob` and the importance sampler all use it.

Which priors have pseudo-inputs (`PSEUDO_INPUT_PRIORS`, `has_pseudo_inputs`) and which need
training images to be built (`needs_training_images`) is decided here and nowhere else.
"""
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvamp import layers

tfd = tfp.distributions

PRIORS = ("standard", "mog", "vampprior", "vampprior_data", "weighted_vampprior")
# The priors whose components are the encoder's posteriors on pseudo-inputs.
PSEUDO_INPUT_PRIORS = ("vampprior", "vampprior_data", "weighted_vampprior")
PSEUDO_INPUTS_INIT = ("random", "data")
LOG_2PI = math.log(2.0 * math.pi)


def check_prior(name):
    if name not in PRIORS:
        raise ValueError(f"Unknown prior {name!r}; choose one of {', '.join(PRIORS)}.")
    return name


def has_pseudo_inputs(name):
    """True for the VampPrior family (its components are q(z | u_k) on pseudo-inputs u_k)."""
    return check_prior(name) in PSEUDO_INPUT_PRIORS


def has_learnable_pseudo_inputs(name):
    """True for the VampPriors that learn their pseudo-inputs (all but `vampprior_data`)."""
    return has_pseudo_inputs(name) and name != "vampprior_data"


def is_mixture(name):
    """True for every prior but `standard`: a `GaussianMixture` over the top latent."""
    return check_prior(name) != "standard"


def needs_training_images(name, pseudo_inputs_init="random"):
    """True when building the prior takes training images: `vampprior_data` always (its fixed
    pseudo-inputs are K of them), the other VampPriors with `pseudo_inputs_init='data'`."""
    if pseudo_inputs_init not in PSEUDO_INPUTS_INIT:
        raise ValueError(f"pseudo_inputs_init must be one of {PSEUDO_INPUTS_INIT}, got {pseudo_inputs_init!r}.")
    return name == "vampprior_data" or (has_pseudo_inputs(name) and pseudo_inputs_init == "data")


def diagonal_gaussian(mean, logvar):
    """`Independent(Normal(mean, exp(logvar / 2)), 1)`: event shape `[D]` from `[..., D]` params."""
    return tfd.Independent(tfd.Normal(mean, tf.exp(0.5 * logvar)), reinterpreted_batch_ndims=1)


class GaussianMixture(tfd.MixtureSameFamily):
    """A mixture of K diagonal Gaussians over R^D, with a fast log-density.

    A `tfd.MixtureSameFamily(Categorical(logits), Independent(Normal(means, exp(logvars / 2)),
    1))` in every respect (sampling, mean, batch/event shapes), batch shape `[]`, event shape
    `[D]`; only `log_prob` is computed differently. The K component log-densities come from
    one matmul instead of the `[N, K, D]` intermediate of the parent class: with z - c and
    m_k - c taken about a centre c,

        log w_k + log N(z | m_k, v_k) = [(z - c)^2, z - c, 1] . [-1 / (2 v_k), (m_k - c) / v_k, b_k]
        b_k = log w_k - (1/2) sum_d [log 2 pi + log v_kd + (m_kd - c_d)^2 / v_kd]

    followed by a logsumexp over k. `log_prob` centres on the components' mean.
    `log_prob_by_image` centres on one point per image (the importance sampler), which keeps
    float32 accurate when many samples lie near each image's posterior.

    Args:
      means, logvars: `[K, D]` component means and log-variances.
      mixture_logits: `[K]` unnormalised log-weights; None means uniform weights 1/K.
      validate_args: check the parameters' shapes when they are only known at run time.
    """

    def __init__(self, means, logvars, mixture_logits=None, validate_args=False, allow_nan_stats=True,
                 name="GaussianMixture"):
        parameters = dict(locals())
        means = tf.convert_to_tensor(means, dtype_hint=tf.float32, name="means")
        logvars = tf.convert_to_tensor(logvars, dtype=means.dtype, name="logvars")
        if mixture_logits is None:
            logits = tf.zeros(tf.shape(means)[:1], dtype=means.dtype)
        else:
            logits = tf.convert_to_tensor(mixture_logits, dtype=means.dtype, name="mixture_logits")
        self._means, self._logvars, self._mixture_logits = means, logvars, mixture_logits
        _check_static_shapes(means, logvars, logits)
        super().__init__(mixture_distribution=tfd.Categorical(logits=logits),
                         components_distribution=diagonal_gaussian(means, logvars),
                         validate_args=validate_args, allow_nan_stats=allow_nan_stats, name=name)
        self._parameters = parameters  # ours, not the parent's: rebuilding takes these arguments

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return dict(means=tfp.util.ParameterProperties(event_ndims=2),
                    logvars=tfp.util.ParameterProperties(event_ndims=2),
                    mixture_logits=tfp.util.ParameterProperties(event_ndims=1))

    @property
    def means(self):
        return self._means

    @property
    def logvars(self):
        return self._logvars

    @property
    def mixture_logits(self):
        return self._mixture_logits

    def _parameter_control_dependencies(self, is_init):
        # Static shapes are checked in __init__, before TFP's own, less specific messages.
        assertions = list(super()._parameter_control_dependencies(is_init))
        if is_init and self.validate_args and not (self._means.shape.is_fully_defined()
                                                   and self._logvars.shape.is_fully_defined()):
            assertions.append(tf.debugging.assert_equal(tf.shape(self._means), tf.shape(self._logvars),
                                                        message="means and logvars must have one shape [K, D]"))
        return assertions

    def _centred_weights(self, centres, dtype):
        """Per centre, the matmul weights `[G, 2D + 1, K]` of the exponents (class docstring).

        `centres`: `[G, D]`. Also returns log p(c_g) `[G]`, the natural shift of a logsumexp
        over samples near c_g.
        """
        means, logvars = tf.cast(self._means, dtype), tf.cast(self._logvars, dtype)
        inv_var = tf.exp(-logvars)
        log_weights = tf.nn.log_softmax(tf.cast(self.mixture_distribution.logits_parameter(), dtype))
        offsets = means[None] - tf.cast(centres, dtype)[:, None]  # [G, K, D]
        bias = log_weights - 0.5 * tf.reduce_sum(LOG_2PI + logvars + tf.square(offsets) * inv_var, -1)
        weights = tf.concat([-0.5 * tf.broadcast_to(inv_var, tf.shape(offsets)), offsets * inv_var,
                             bias[..., None]], -1)  # [G, K, 2D + 1]
        # Stored [G, 2D + 1, K] so that no transpose runs per matmul.
        return tf.transpose(weights, [0, 2, 1]), tf.reduce_logsumexp(bias, -1)

    def component_log_probs(self, z):
        """log w_k + log N(z | m_k, v_k) for every component: `[N, D]` -> `[N, K]` (one matmul).

        Centred on the components' mean (constant for the gradient): smaller magnitudes, less
        cancellation in the expansion than about the origin.
        """
        centre = tf.stop_gradient(tf.reduce_mean(tf.cast(self._means, z.dtype), 0, keepdims=True))
        weights, _ = self._centred_weights(centre, z.dtype)
        zc = z - centre
        features = tf.concat([tf.square(zc), zc, tf.ones_like(zc[:, :1])], -1)
        return tf.matmul(features, weights[0])

    def responsibilities(self, z):
        """p(k | z), `[N, D]` -> `[N, K]`, each row summing to 1."""
        return tf.nn.softmax(self.component_log_probs(z), -1)

    def _log_prob(self, x):
        flat = tf.reshape(x, [-1, tf.shape(self._means)[-1]])
        log_p = tf.reduce_logsumexp(self.component_log_probs(flat), -1)
        return tf.reshape(log_p, tf.shape(x)[:-1])

    def log_prob_by_image(self, centres, dtype=tf.float32):
        """A fast, well-conditioned `log p(z)` for many samples per image (the importance sampler).

        The expansion of the class docstring centred on each image's own point c_b (its posterior
        mean): samples of q(z|x_b) lie near c_b, so the terms are no larger than the result for
        the components that carry the logsumexp, and float32 is accurate (about 1e-5 nats in the
        tests' worst case, against 0.05 for an expansion about the origin). The per-image weights
        are built once here; each call then costs one batched matmul. The logsumexp is shifted by
        log p(c_b), folded into the weights, so the exponents come out ready for exp; a chunk
        whose sums of exps leave [1e-30, 1e30] (a sample far from c_b) takes the usual
        max-shifted logsumexp instead (on GPUs the check copies one boolean per call to the host).

        Args:
          centres: `[B, D]`, one point per image.
          dtype: compute dtype of the log-densities ('float32' or 'float64').

        Returns:
          A function `z -> log p(z)`: `[S * B, D]` laid out sample-major (row s * B + b belongs to
          image b) -> `[S * B]` in z's dtype.
        """
        dtype = tf.as_dtype(dtype)
        weights, shift = self._centred_weights(centres, dtype)
        weights = tf.concat([weights[:, :-1], weights[:, -1:] - shift[:, None, None]], 1)
        centres = tf.cast(centres, dtype)
        num_images, size = tf.shape(centres)[0], tf.shape(centres)[1]
        low, high = (1e-30, 1e30) if dtype == tf.float32 else (1e-290, 1e290)

        def log_prob(z):
            zc = tf.transpose(tf.reshape(tf.cast(z, dtype), [-1, num_images, size]), [1, 0, 2])
            zc = zc - centres[:, None]  # [B, S, D]
            features = tf.concat([tf.square(zc), zc, tf.ones_like(zc[..., :1])], -1)
            exponents = tf.matmul(features, weights)  # [B, S, K], minus log p(c_b)
            total = tf.reduce_sum(tf.exp(exponents), -1)
            in_range = tf.reduce_all((total > low) & (total < high))
            log_p = tf.cond(in_range, lambda: tf.math.log(total),
                            lambda: tf.reduce_logsumexp(exponents, -1)) + shift[:, None]  # [B, S]
            return tf.cast(tf.reshape(tf.transpose(log_p), [-1]), z.dtype)

        return log_prob


def _check_static_shapes(means, logvars, logits):
    """Clear errors for mixture parameters whose known shapes cannot work."""
    if means.shape.rank is not None and means.shape.rank != 2:
        raise ValueError(f"GaussianMixture means must be [K, D], got shape {means.shape}.")
    if means.shape.is_fully_defined() and logvars.shape.is_fully_defined() and means.shape != logvars.shape:
        raise ValueError(f"GaussianMixture means {means.shape} and logvars {logvars.shape} must have the same "
                         "shape [K, D].")
    k, k_logits = means.shape[0], logits.shape[-1] if logits.shape.rank else None
    if k is not None and k_logits is not None and k != k_logits:
        raise ValueError(f"GaussianMixture has {k} components (means) but {k_logits} mixture logits.")


def log_prob_by_image(distribution, centres, dtype=tf.float32):
    """`distribution.log_prob_by_image(centres, dtype)` for a `GaussianMixture`; for any other
    prior (the standard normal) its own `log_prob`, which needs no centring."""
    if isinstance(distribution, GaussianMixture):
        return distribution.log_prob_by_image(centres, dtype)
    return distribution.log_prob


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
        return GaussianMixture(tf.convert_to_tensor(self.means), tf.convert_to_tensor(self.logvars))

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
      pseudo_inputs_mean, pseudo_inputs_std: N(mean, std) initialisation
        (docs/paper_details.md section 2).
      pseudo_inputs_data: optional `[K, H, W, C]` images in [0, 1] used as the initial value
        (or, with `trainable_pseudo_inputs=False`, as the fixed pseudo-inputs: `vampprior_data`).
        Without it, fixed pseudo-inputs start from the N(mean, std) initialisation: that is
        how a model is rebuilt before its weights are restored (`from_config`, checkpoints);
        `make_prior` refuses `vampprior_data` without images.
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
            initializer = keras.initializers.RandomNormal(
                self.pseudo_inputs_mean, self.pseudo_inputs_std, seed=seed)
        self.pseudo_inputs_variable = self.add_weight(
            name="pseudo_inputs", shape=shape, initializer=initializer,
            trainable=self.trainable_pseudo_inputs)
        self.mixture_logits = (self.add_weight(name="mixture_logits", shape=(self.num_components,),
                                               initializer="zeros") if self.learn_weights else None)

    def pseudo_inputs(self):
        """The pseudo-inputs as the encoder sees them: `[K, H, W, C]` in [0, 1]."""
        return layers.hardtanh(self.pseudo_inputs_variable, 0.0, 1.0)

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
        return GaussianMixture(means, logvars, logits)

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components,
                "image_shape": self.image_shape, "pseudo_inputs_mean": self.pseudo_inputs_mean,
                "pseudo_inputs_std": self.pseudo_inputs_std,
                "trainable_pseudo_inputs": self.trainable_pseudo_inputs,
                "learn_weights": self.learn_weights, "seed": self.seed}


def make_prior(name, latent_size, image_shape, num_components=500, pseudo_inputs_mean=0.05,
               pseudo_inputs_std=0.01, pseudo_inputs_data=None, seed=None, restoring=False):
    """Builds the prior layer called `name` (one of `PRIORS`).

    `pseudo_inputs_data`: for `vampprior_data`, at least K images `[N, H, W, C]` in [0, 1];
    K of them are drawn at random (seeded by `seed`). For `vampprior` and
    `weighted_vampprior` the same draw, when given, initialises the pseudo-inputs.
    `restoring=True` builds `vampprior_data` without images, for weights about to be restored.
    """
    check_prior(name)
    if name == "vampprior_data" and pseudo_inputs_data is None and not restoring:
        raise ValueError("The 'vampprior_data' prior needs training images (pseudo_inputs_data: at least "
                         "K images of shape (N, H, W, C)); its pseudo-inputs are K of them, fixed.")
    if name == "standard":
        return StandardPrior(latent_size, name="prior")
    if int(num_components) < 1:
        raise ValueError(f"num_components (K) must be >= 1, got {num_components}.")
    if name == "mog":
        return MoGPrior(latent_size, num_components, seed=seed, name="prior")
    if pseudo_inputs_data is not None:
        # An array, or anything with `shape` and rows by a sorted index array (a streamed
        # source's training images, read only where chosen: tfvamp.data.training_images).
        data = pseudo_inputs_data if hasattr(pseudo_inputs_data, "shape") else np.asarray(pseudo_inputs_data)
        if len(data.shape) != 4 or tuple(data.shape[1:]) != tuple(image_shape):
            raise ValueError(f"pseudo_inputs_data must be images of shape (N, {', '.join(map(str, image_shape))}), "
                             f"got {tuple(data.shape)}.")
        if data.shape[0] < num_components:
            raise ValueError(f"pseudo_inputs_data has {data.shape[0]} images but num_components is "
                             f"{num_components}: give at least K images.")
        # A random subset, never "the first K" (those can all share one class).
        index = np.random.default_rng(seed).choice(data.shape[0], num_components, replace=False)
        pseudo_inputs_data = np.asarray(data[np.sort(index)], dtype=np.float32)
    return VampPrior(latent_size, num_components, image_shape,
                     pseudo_inputs_mean=pseudo_inputs_mean, pseudo_inputs_std=pseudo_inputs_std,
                     pseudo_inputs_data=pseudo_inputs_data,
                     trainable_pseudo_inputs=has_learnable_pseudo_inputs(name),
                     learn_weights=(name == "weighted_vampprior"), seed=seed, name="prior")
