"""The paper's four model families as Keras model subclasses (SPEC section 4).

* `VAE`:       one latent z; MLP q(z|x) and p(x|z).
* `HVAE`:      two latents, prior on z2: q(z2|x) q(z1|x,z2), p(z2) p(z1|z2) p(x|z1,z2); MLPs.
* `ConvHVAE`:  HVAE with gated-convolution encoders and a gated-convolution decoder.
* `PixelHVAE`: ConvHVAE encoders with a PixelCNN decoder (autoregressive over pixels).

Every model shares one objective and one estimator, written once in `LatentVariableModel`:
a model only says what it computes from x once (`_encode_x`), how it draws its latents and
scores them (`_terms`), how it encodes to the prior's latent (`_encode_top`) and how it
generates (`_generate`).

Shapes: images are `[B, H, W, C]` float32 in [0, 1]. `S` importance samples of every latent
are laid out sample-major as `[S * B, ...]` inside the networks, and `[S, B]` in the log-weights.
"""
import math

import keras
import numpy as np
import tensorflow as tf

from tfvamp import layers as tl
from tfvamp import likelihoods
from tfvamp import priors

MODELS = ("vae", "hvae", "convhvae", "pixelhvae")
LOG_2PI = math.log(2.0 * math.pi)
LOGVAR_MIN, LOGVAR_MAX = -6.0, 2.0  # the release's hardtanh on every variance head
HIDDEN = 300
_FLOAT_BUDGET = 2 ** 26  # floats of activations per importance-sampling chunk (~256 MB)


def log_normal_diag(x, mean, logvar):
    """log N(x | mean, diag(exp(logvar))), summed over the last axis, constants kept.

    `[..., D]` (broadcastable) -> `[...]`.
    """
    return -0.5 * tf.reduce_sum(LOG_2PI + logvar + tf.square(x - mean) * tf.exp(-logvar), axis=-1)


def stateless_normal(shape, seed):
    """Standard normals of `shape` from `seed` (`[2]` int32), stateless.

    The Box-Muller transform of Philox uniforms, which is also what
    `tf.random.stateless_normal` computes, written here in vectorised ops: about half its
    cost for the importance sampler's draws on this CPU (docs/benchmarks.md). The smallest
    1 - u is 2^-23, so |z| <= 5.8 as in TensorFlow's own kernel.
    """
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    uniform = tf.random.stateless_uniform(tf.stack([2, (size + 1) // 2]), seed)  # [0, 1)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-uniform[0]))
    angle = (2.0 * math.pi) * uniform[1]
    return tf.reshape(tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], 0)[:size], shape)


def stateless_noise_fn(seed):
    """A `noise_fn` (shape -> standard normals) of stateless draws from `seed` (`[2]` int32).

    Each call site gets its own stream (the counter advances at trace time), so the HVAE's z2
    and z1 draws are independent.
    """
    calls = [0]

    def noise_fn(shape):
        call_seed = tf.random.experimental.stateless_fold_in(seed, calls[0])
        calls[0] += 1
        return stateless_normal(shape, call_seed)

    return noise_fn


def _tile(t, num_samples):
    """`[B, ...]` -> `[S * B, ...]`, sample-major."""
    return tf.tile(t, tf.concat([[num_samples], tf.ones([tf.rank(t) - 1], tf.int32)], 0))


@keras.saving.register_keras_serializable(package="tfvamp")
class GaussianHead(keras.layers.Layer):
    """Linear mean and hardtanh(-6, 2) log-variance heads: `[N, F]` -> (`[N, D]`, `[N, D]`)."""

    def __init__(self, latent_size, **kwargs):
        super().__init__(**kwargs)
        self.latent_size = int(latent_size)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), 2 * self.latent_size),
                                      initializer=keras.initializers.HeNormal())
        self.bias = self.add_weight(name="bias", shape=(2 * self.latent_size,), initializer="zeros")

    def call(self, h):
        mean, logvar = tf.split(tf.matmul(h, self.kernel) + self.bias, 2, axis=-1)
        return mean, tf.clip_by_value(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def get_config(self):
        return {**super().get_config(), "latent_size": self.latent_size}


@keras.saving.register_keras_serializable(package="tfvamp")
class ImageHead(keras.layers.Layer):
    """Decoder features -> the likelihood's parameter maps, each `[N, H, W, C]`.

    Dense mode takes `[N, F]` (a linear layer per parameter); conv mode takes `[N, H, W, F]`
    (a 1x1 convolution per parameter). Bernoulli: logits. Discretized logistic: loc =
    sigmoid clamped to [1/512, 1 - 1/512], log_scale = hardtanh(-4.5, 0), as in the release.
    """

    def __init__(self, likelihood, image_shape, conv=False, **kwargs):
        super().__init__(**kwargs)
        self.likelihood = likelihoods.check_likelihood(likelihood)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.conv = bool(conv)
        self.num_params = likelihoods.num_params(likelihood)

    def build(self, input_shape):
        channels = self.image_shape[-1]
        width = channels if self.conv else int(np.prod(self.image_shape))
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.num_params * width),
                                      initializer=keras.initializers.HeNormal())
        self.bias = self.add_weight(name="bias", shape=(self.num_params * width,), initializer="zeros")

    def call(self, h):
        if self.conv:
            out = tf.tensordot(h, self.kernel, 1) + self.bias  # a 1x1 convolution
        else:
            out = tf.matmul(h, self.kernel) + self.bias
        shape = tf.concat([tf.shape(h)[:1], self.image_shape], 0)
        parts = tf.split(out, self.num_params, axis=-1)
        if not self.conv:
            parts = [tf.reshape(p, shape) for p in parts]
        if self.likelihood == "bernoulli":
            return parts
        loc = tf.clip_by_value(tf.sigmoid(parts[0]), likelihoods.LOC_MIN, likelihoods.LOC_MAX)
        log_scale = tf.clip_by_value(parts[1], likelihoods.LOG_SCALE_MIN, likelihoods.LOG_SCALE_MAX)
        return [loc, log_scale]

    def sampler_context(self, x):
        """What makes `log_prob` cheap when many samples share each image of x `[B, H, W, C]`:
        for a dense Bernoulli head, `likelihoods.bernoulli_sampler_context`; otherwise None."""
        if self.conv or self.likelihood != "bernoulli":
            return None
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        return likelihoods.bernoulli_sampler_context(flat, self.kernel, self.bias)

    def log_prob(self, h, x, num_samples, context=None):
        """log p(x | the parameters this head makes from the features h), per sample.

        Args:
          h: features `[S * B, F]` (dense) or `[S * B, H, W, F]` (conv), sample-major.
          x: images `[B, H, W, C]`.
          num_samples: S.
          context: `sampler_context(x)`, or None: then the parameters are formed and scored
            by `likelihoods.log_prob`.

        Returns:
          `[S, B]`.
        """
        if context is not None:
            features = tf.reshape(tf.cast(h, self.compute_dtype), [num_samples, -1, h.shape[-1]])
            return likelihoods.bernoulli_log_prob_dense(features, self.kernel, self.bias, context)
        shape = tf.concat([[num_samples], tf.shape(x)], 0)
        return likelihoods.log_prob(self.likelihood, [tf.reshape(p, shape) for p in self(h)], x)

    def get_config(self):
        return {**super().get_config(), "likelihood": self.likelihood,
                "image_shape": self.image_shape, "conv": self.conv}


def _mlp(units, name, flatten=False, dtype=None):
    """Gated MLP stack; `flatten` first turns images `[N, H, W, C]` into `[N, H*W*C]`."""
    stack = [keras.layers.Flatten(dtype=dtype)] if flatten else []
    stack += [tl.GatedDense(u, dtype=dtype) for u in units]
    return keras.Sequential(stack, name=name)


def _conv_stack(specs, name, dtype=None):
    """Gated convolutions from (filters, kernel, stride) triples, then flatten."""
    stack = [tl.GatedConv2D(f, k, s, padding=k // 2, dtype=dtype) for f, k, s in specs]
    return keras.Sequential(stack + [keras.layers.Flatten(dtype=dtype)], name=name)


COMPUTE_DTYPES = ("float32", "bfloat16")


class LatentVariableModel(keras.Model):
    """What every model shares: prior, objective, importance-sampled log-likelihood, sampling.

    Args:
      image_shape: `(H, W, C)` of the data.
      prior: one of `priors.PRIORS`, on the top latent (z, or z2 in two-level models).
      likelihood: one of `likelihoods.LIKELIHOODS`.
      num_components: K, pseudo-inputs or mixture components (ignored by `standard`).
      z1_size, z2_size: latent sizes (the one-level VAE's z has `z1_size`).
      pseudo_inputs_mean, pseudo_inputs_std: N(mean, std) initialisation of pseudo-inputs.
      pseudo_inputs_data: `[N >= K, H, W, C]` training images: the fixed pseudo-inputs of
        `vampprior_data` (required there), or the initialisation of `vampprior`.
      seed: seeds the choice of data pseudo-inputs and the prior's initialisers (seed the
        rest with `keras.utils.set_random_seed`).
      compute_dtype: 'float32', or 'bfloat16' for the hidden layers (mixed precision).
    """

    model_name = None

    def __init__(self, image_shape, prior="vampprior", likelihood="bernoulli", num_components=500,
                 z1_size=40, z2_size=40, pseudo_inputs_mean=0.05, pseudo_inputs_std=0.01,
                 pseudo_inputs_data=None, seed=None, compute_dtype="float32", **kwargs):
        super().__init__(**kwargs)
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}.")
        self.compute_dtype_name = compute_dtype
        # bfloat16 runs the hidden layers' matmuls and convolutions in bfloat16 with float32
        # variables; heads, densities and the prior stay float32.
        self.hidden_dtype = "mixed_bfloat16" if compute_dtype == "bfloat16" else "float32"
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError("image_shape must be (height, width, channels) with positive sizes, "
                             f"got {image_shape}.")
        for label, size in (("z1_size", z1_size), ("z2_size", z2_size)):
            if int(size) < 1:
                raise ValueError(f"{label} must be >= 1, got {size}.")
        self.image_shape = image_shape
        self.num_pixels = int(np.prod(image_shape))
        self.prior_name = priors.check_prior(prior)
        self.likelihood_name = likelihoods.check_likelihood(likelihood)
        self.num_components = int(num_components)
        self.z1_size, self.z2_size = int(z1_size), int(z2_size)
        self.pseudo_inputs_mean, self.pseudo_inputs_std = float(pseudo_inputs_mean), float(pseudo_inputs_std)
        self.seed = seed
        self._build_networks()
        self.prior_layer = priors.make_prior(
            self.prior_name, self.top_latent_size, image_shape, self.num_components,
            self.pseudo_inputs_mean, self.pseudo_inputs_std, pseudo_inputs_data, seed)
        # Create every weight now, so that checkpoints and optimizers see the full model.
        self.loss_terms(tf.zeros((1,) + image_shape))
        self.built = True

    # ---- what a model family defines -------------------------------------------------------
    top_latent_size = None

    def _build_networks(self):
        raise NotImplementedError

    def _encode_top(self, x):
        """q(top latent | x): images `[N, H, W, C]` -> (mean, logvar) `[N, D_top]`."""
        raise NotImplementedError

    def _encode_x(self, x):
        """What q needs from x that does not depend on the sample: a dict of `[B, ...]` tensors,
        with the top latent's posterior mean under `_top_mean_key`."""
        raise NotImplementedError

    _top_mean_key = None

    def _terms(self, x, encoded, num_samples, log_prior, noise_fn, training):
        """Draws `num_samples` latents per image from q and scores them.

        `encoded` is `_encode_x(x)`, computed once per batch (the importance sampler reuses it
        for every chunk, and adds `px_context`, the head's `sampler_context(x)`, when the head
        has one). `log_prior`: top latents `[S * B, D]` (sample-major) -> log p `[S * B]`,
        built once per call from the prior (`priors.mixture_log_prob` in training,
        `priors.mixture_log_prob_by_image` in the importance sampler).

        Returns (log p(x|z), log q(z|x), log p(z)), each `[S, B]`.
        """
        raise NotImplementedError

    def _generate(self, top, seed):
        """Images `[N, H, W, C]` in [0, 1] from top-latent samples `[N, D_top]`."""
        raise NotImplementedError

    def _floats_per_row(self):
        """Activation floats one (sample, image) pair costs: sizes the IS chunks."""
        return 8 * HIDDEN + 4 * self.num_pixels

    # ---- shared machinery --------------------------------------------------------------------
    @property
    def latent_sizes(self):
        raise NotImplementedError

    def _check_input(self, x):
        x = tf.convert_to_tensor(x, dtype=tf.float32)
        if x.shape.rank != 4 or tuple(x.shape[1:]) != self.image_shape:
            shape = ", ".join(map(str, self.image_shape))
            raise ValueError(f"{type(self).__name__} takes images of shape [batch, {shape}] in [0, 1]; "
                             f"got shape {list(x.shape)}.")
        return x

    @staticmethod
    def _reparameterize(mean, logvar, num_samples, noise_fn):
        """z = mean + exp(logvar / 2) * eps with eps `[S, B, D]`, and log q(z) = log N(z | mean,
        exp(logvar)) written with eps (the same value and gradient, without forming (z - mean)^2 /
        var again). Returns z `[S * B, D]` and log q `[S * B]`, sample-major."""
        shape = tf.concat([[num_samples], tf.shape(mean)], 0)
        eps = tf.random.normal(shape) if noise_fn is None else noise_fn(shape)
        z = mean[None] + tf.exp(0.5 * logvar)[None] * eps
        log_q = -0.5 * (tf.reduce_sum(LOG_2PI + logvar, -1)[None] + tf.reduce_sum(tf.square(eps), -1))
        return tf.reshape(z, [-1, tf.shape(mean)[-1]]), tf.reshape(log_q, [-1])

    def prior(self):
        """The prior over the top latent: a TFP distribution, batch `[]`, event `[D_top]`."""
        return self.prior_layer.distribution(self._encode_top)

    def call(self, x, training=False):
        return self.loss_terms(x, training=training)

    def loss_terms(self, x, beta=1.0, training=False, noise_fn=None):
        """Single-sample ELBO terms per example.

        Args:
          x: images `[B, H, W, C]` in [0, 1].
          beta: KL weight (a float or a scalar tensor/variable; warm-up keeps it in a variable).
          training: batch-norm mode (PixelHVAE).
          noise_fn: optional `shape -> standard normal tensor`, for reproducible noise
            (the training loop uses it to give every replica its slice of one global draw).

        Returns:
          dict of `[B]` tensors: `reconstruction` = -log p(x|z), `kl` = log q(z|x) - log p(z)
          (summed over latent layers), `loss` = reconstruction + beta * kl.
        """
        x = self._check_input(x)
        prior = self.prior()
        log_px, log_q, log_p = self._terms(x, self._encode_x(x), 1, lambda z: priors.mixture_log_prob(prior, z),
                                           noise_fn, training)
        reconstruction, kl = -log_px[0], log_q[0] - log_p[0]
        beta = tf.cast(beta, reconstruction.dtype)
        return {"loss": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}

    def default_chunk_size(self, batch_size, num_samples):
        """Importance samples per chunk so that one chunk's activations fit `_FLOAT_BUDGET`."""
        per_row = self._floats_per_row()
        if self.prior_name != "standard":  # the mixture's [rows, K] log-densities, a few copies
            per_row += 4 * self.num_components
        return int(max(1, min(num_samples, _FLOAT_BUDGET // max(1, per_row * int(batch_size)))))

    def log_likelihood(self, x, num_samples=5000, chunk_size=None, prior_dtype="float32", seed=None):
        """Importance-sampled log p(x) in nats, per example (Burda et al. 2016).

        log p(x) ~= logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S with
        z_s ~ q(z|x). The prior (the pseudo-inputs' encodings) is computed once per call, and
        its mixture expansion is centred on each image's posterior mean
        (`priors.mixture_log_prob_by_image`), which keeps float32 accurate; samples go through
        the networks in chunks of `chunk_size` and the logsumexp is accumulated in float64.

        Args:
          x: images `[B, H, W, C]`.
          num_samples: S >= 1.
          chunk_size: samples per chunk (default: as many as fit ~256 MB of activations).
          prior_dtype: dtype of the mixture prior's log-densities: 'float32' (default; centred,
            about 1e-5 nats from float64 in the tests' worst case) or 'float64' (a reference,
            2-3x slower on the prior, docs/benchmarks.md).
          seed: an int makes the estimate reproducible (the samples are stateless draws from it);
            None draws the seed from TensorFlow's global generator (`tf.random.set_seed`).

        Returns:
          float64 `[B]`.
        """
        if prior_dtype not in ("float64", "float32"):
            raise ValueError(f"prior_dtype must be 'float64' or 'float32', got {prior_dtype!r}.")
        x = self._check_input(x)
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        chunk = int(chunk_size or self.default_chunk_size(x.shape[0] or 100, num_samples))
        chunk = max(1, min(chunk, num_samples))
        if seed is not None:
            seed = tf.constant([int(seed), 0], tf.int32)
        return self._log_likelihood_graph(x, tf.constant(num_samples), tf.constant(chunk), prior_dtype, seed)

    def _estimator_setup(self, x, prior_dtype="float32"):
        """What the importance sampler computes once per batch: (`_encode_x(x)`, the prior's
        log-density for `_terms`, centred on each image's top posterior mean, and the prior)."""
        prior = self.prior()
        encoded = dict(self._encode_x(x))
        context = self.p_x_head.sampler_context(x)
        if context is not None:  # the likelihood's per-image part, once per batch too
            encoded["px_context"] = context
        log_prior = priors.mixture_log_prob_by_image(prior, encoded[self._top_mean_key], tf.as_dtype(prior_dtype))
        return encoded, log_prior, prior

    @tf.function(reduce_retracing=True)
    def _log_likelihood_graph(self, x, num_samples, chunk, prior_dtype="float32", seed=None):
        if seed is None:
            seed = tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int32)
        encoded, log_prior, _ = self._estimator_setup(x, prior_dtype)
        num_chunks = (num_samples + chunk - 1) // chunk
        acc0 = tf.fill(tf.shape(x)[:1], tf.constant(-np.inf, tf.float64))

        def body(i, acc):
            # Stateless draws, reproducible from `seed` (Box-Muller: `stateless_normal`).
            noise_fn = stateless_noise_fn(tf.random.experimental.stateless_fold_in(seed, i))
            log_px, log_q, log_p = self._terms(x, encoded, chunk, log_prior, noise_fn, False)
            log_w = tf.cast(log_px + log_p - log_q, tf.float64)  # [chunk, B]
            # The last chunk may run past S: mask its extra samples out.
            valid = tf.range(chunk) + i * chunk < num_samples
            log_w = tf.where(valid[:, None], log_w, tf.constant(-np.inf, tf.float64))
            return i + 1, tf.reduce_logsumexp(tf.stack([acc, tf.reduce_logsumexp(log_w, 0)]), 0)

        _, acc = tf.while_loop(lambda i, _: i < num_chunks, body, (tf.constant(0), acc0))
        return acc - tf.math.log(tf.cast(num_samples, tf.float64))

    def sample(self, n, seed=None):
        """`n` images `[n, H, W, C]` in [0, 1] from the model: z ~ prior (components by their
        weights), then the decoder's mean (PixelHVAE: autoregressively sampled pixels)."""
        if seed is None:
            seed = np.random.randint(0, 2 ** 31 - 1)
        return self._sample_graph(tf.constant(int(n)), tf.constant([int(seed), 0], tf.int32))

    @tf.function(reduce_retracing=True)
    def _sample_graph(self, n, seed):
        seed_top, seed_rest = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        top = self.prior().sample(n, seed=seed_top)
        return self._generate(top, seed_rest)

    def reconstruct(self, x, seed=0):
        """Decoded images `[B, H, W, C]` from the posterior means of x's latents."""
        x = self._check_input(x)
        return self._reconstruct_graph(x, tf.constant([int(seed), 1], tf.int32))

    def encode(self, x):
        """Posterior parameters per latent layer: dict `{name}_mean`, `{name}_logvar`, `[B, D]`."""
        raise NotImplementedError

    def get_config(self):
        return {"image_shape": self.image_shape, "prior": self.prior_name,
                "likelihood": self.likelihood_name, "num_components": self.num_components,
                "z1_size": self.z1_size, "z2_size": self.z2_size,
                "pseudo_inputs_mean": self.pseudo_inputs_mean,
                "pseudo_inputs_std": self.pseudo_inputs_std, "seed": self.seed,
                "compute_dtype": self.compute_dtype_name}


@keras.saving.register_keras_serializable(package="tfvamp")
class VAE(LatentVariableModel):
    """One stochastic layer: q(z|x) = GD(D,300) GD(300,300) -> heads; p(x|z) = GD(40,300) GD(300,300) -> D."""

    model_name = "vae"

    @property
    def top_latent_size(self):
        return self.z1_size

    @property
    def latent_sizes(self):
        return {"z": self.z1_size}

    def _build_networks(self):
        self.q_z = _mlp([HIDDEN, HIDDEN], "q_z", flatten=True, dtype=self.hidden_dtype)
        self.q_z_head = GaussianHead(self.z1_size, name="q_z_head", dtype="float32")
        self.p_x = _mlp([HIDDEN, HIDDEN], "p_x", dtype=self.hidden_dtype)
        self.p_x_head = ImageHead(self.likelihood_name, self.image_shape, name="p_x_head", dtype="float32")

    def _encode_top(self, x):
        return self.q_z_head(self.q_z(x))

    def _decoder_features(self, z):
        """The likelihood head's input from z `[N, D]`."""
        return self.p_x(z)

    def _decode(self, z):
        return self.p_x_head(self._decoder_features(z))

    def _encode_x(self, x):
        mean, logvar = self._encode_top(x)
        return {"mean": mean, "logvar": logvar}

    _top_mean_key = "mean"

    def _terms(self, x, encoded, num_samples, log_prior, noise_fn, training):
        z, log_q = self._reparameterize(encoded["mean"], encoded["logvar"], num_samples, noise_fn)
        log_px = self.p_x_head.log_prob(self._decoder_features(z), x, num_samples, encoded.get("px_context"))
        shape = [num_samples, -1]
        return log_px, tf.reshape(log_q, shape), tf.reshape(log_prior(z), shape)

    def _generate(self, top, seed):
        return likelihoods.mean_image(self.likelihood_name, self._decode(top))

    @tf.function(reduce_retracing=True)
    def _reconstruct_graph(self, x, seed):
        return self._generate(self._encode_top(x)[0], seed)

    def encode(self, x):
        mean, logvar = self._encode_top(self._check_input(x))
        return {"z_mean": mean, "z_logvar": logvar}


@keras.saving.register_keras_serializable(package="tfvamp")
class HVAE(LatentVariableModel):
    """Two stochastic layers with the prior on z2 (the paper's HVAE, MLP networks).

    q(z2|x): GD(D,300) GD(300,300) -> heads.  q(z1|x,z2): [GD(D,300)(x), GD(40,300)(z2)] ->
    GD(600,300) -> heads.  p(z1|z2): GD(40,300) GD(300,300) -> heads.
    p(x|z1,z2): [GD(40,300)(z1), GD(40,300)(z2)] -> GD(600,300) -> D.
    """

    model_name = "hvae"

    @property
    def top_latent_size(self):
        return self.z2_size

    @property
    def latent_sizes(self):
        return {"z1": self.z1_size, "z2": self.z2_size}

    # Sub-networks: the conv variants override these builders.
    def _build_encoders(self):
        self.q_z2 = _mlp([HIDDEN, HIDDEN], "q_z2", flatten=True, dtype=self.hidden_dtype)
        self.q_z1_x = _mlp([HIDDEN], "q_z1_x", flatten=True, dtype=self.hidden_dtype)
        self.q_z1_z2 = _mlp([HIDDEN], "q_z1_z2", dtype=self.hidden_dtype)

    def _build_decoder(self):
        self.p_x_z1 = _mlp([HIDDEN], "p_x_z1", dtype=self.hidden_dtype)
        self.p_x_z2 = _mlp([HIDDEN], "p_x_z2", dtype=self.hidden_dtype)
        self.p_x_joint = _mlp([HIDDEN], "p_x_joint", dtype=self.hidden_dtype)
        self.p_x_head = ImageHead(self.likelihood_name, self.image_shape, name="p_x_head", dtype="float32")

    def _build_networks(self):
        self._build_encoders()
        self.q_z2_head = GaussianHead(self.z2_size, name="q_z2_head", dtype="float32")
        self.q_z1_joint = _mlp([HIDDEN], "q_z1_joint", dtype=self.hidden_dtype)
        self.q_z1_head = GaussianHead(self.z1_size, name="q_z1_head", dtype="float32")
        self.p_z1 = _mlp([HIDDEN, HIDDEN], "p_z1", dtype=self.hidden_dtype)
        self.p_z1_head = GaussianHead(self.z1_size, name="p_z1_head", dtype="float32")
        self._build_decoder()

    def _encode_top(self, x):
        return self.q_z2_head(self.q_z2(x))

    def _q_z1(self, x_features, z2):
        return self.q_z1_head(self.q_z1_joint(tf.concat([x_features, self.q_z1_z2(z2)], -1)))

    def _p_z1(self, z2):
        return self.p_z1_head(self.p_z1(z2))

    def _decoder_features(self, z1, z2, x=None, training=False):
        """The likelihood head's input from z1, z2 `[N, D]` (x: PixelHVAE's context)."""
        return self.p_x_joint(tf.concat([self.p_x_z1(z1), self.p_x_z2(z2)], -1))

    def _decode(self, z1, z2, x=None, training=False):
        """Likelihood parameters `[N, H, W, C]` from z1, z2 `[N, D]`."""
        return self.p_x_head(self._decoder_features(z1, z2, x, training))

    def _encode_x(self, x):
        mean2, logvar2 = self._encode_top(x)
        # x's branch of q(z1|x,z2) does not depend on the sample either.
        return {"mean2": mean2, "logvar2": logvar2, "x_features": self.q_z1_x(x)}

    _top_mean_key = "mean2"

    def _terms(self, x, encoded, num_samples, log_prior, noise_fn, training):
        z2, log_q2 = self._reparameterize(encoded["mean2"], encoded["logvar2"], num_samples, noise_fn)
        x_features = _tile(encoded["x_features"], num_samples)
        mean1, logvar1 = self._q_z1(x_features, z2)
        z1, log_q1 = self._reparameterize(mean1, logvar1, 1, noise_fn)
        p_mean1, p_logvar1 = self._p_z1(z2)
        x_context = _tile(x, num_samples) if self._decoder_needs_x else None
        features = self._decoder_features(z1, z2, x_context, training)
        log_px = self.p_x_head.log_prob(features, x, num_samples, encoded.get("px_context"))
        log_q = log_q1 + log_q2
        log_p = log_normal_diag(z1, p_mean1, p_logvar1) + log_prior(z2)
        shape = [num_samples, -1]
        return log_px, tf.reshape(log_q, shape), tf.reshape(log_p, shape)

    _decoder_needs_x = False

    def _sample_z1(self, z2, seed):
        mean, logvar = self._p_z1(z2)
        return mean + tf.exp(0.5 * logvar) * tf.random.stateless_normal(tf.shape(mean), seed)

    def _generate(self, top, seed):
        seed_z1, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        z1 = self._sample_z1(top, seed_z1)
        return self._generate_x(z1, top, seed_x)

    def _generate_x(self, z1, z2, seed):
        return likelihoods.mean_image(self.likelihood_name, self._decode(z1, z2))

    @tf.function(reduce_retracing=True)
    def _reconstruct_graph(self, x, seed):
        mean2, _ = self._encode_top(x)
        mean1, _ = self._q_z1(self.q_z1_x(x), mean2)
        return self._generate_x(mean1, mean2, seed)

    def encode(self, x):
        x = self._check_input(x)
        mean2, logvar2 = self._encode_top(x)
        mean1, logvar1 = self._q_z1(self.q_z1_x(x), mean2)
        return {"z1_mean": mean1, "z1_logvar": logvar1, "z2_mean": mean2, "z2_logvar": logvar2}


def _conv_flat_size(image_shape, channels=6):
    """Flattened size after the encoders' two stride-2 convolutions (294 for 28x28)."""
    h, w = image_shape[0], image_shape[1]
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h * w * channels


@keras.saving.register_keras_serializable(package="tfvamp")
class ConvHVAE(HVAE):
    """HVAE with gated-convolution networks.

    q(z2|x): gated convs 1->32 k7, 32->32 k3 s2, 32->64 k5, 64->64 k3 s2, 64->6 k3 -> heads.
    q(z1|x,z2): the same stack with kernel 3 throughout, joined with GD(40,294)(z2) ->
    GD(588,300) -> heads. p(x|z1,z2): [GD(z1,300), GD(z2,300)] -> GD(600,D) -> image ->
    4 gated convs (64, k3) -> 1x1 heads.
    """

    model_name = "convhvae"

    def _build_encoders(self):
        flat = _conv_flat_size(self.image_shape)
        dtype = self.hidden_dtype
        self.q_z2 = _conv_stack([(32, 7, 1), (32, 3, 2), (64, 5, 1), (64, 3, 2), (6, 3, 1)], "q_z2", dtype)
        self.q_z1_x = _conv_stack([(32, 3, 1), (32, 3, 2), (64, 3, 1), (64, 3, 2), (6, 3, 1)], "q_z1_x", dtype)
        self.q_z1_z2 = _mlp([flat], "q_z1_z2", dtype=self.hidden_dtype)

    def _build_decoder(self):
        self.p_x_z1 = _mlp([HIDDEN], "p_x_z1", dtype=self.hidden_dtype)
        self.p_x_z2 = _mlp([HIDDEN], "p_x_z2", dtype=self.hidden_dtype)
        self.p_x_joint = _mlp([self.num_pixels], "p_x_joint", dtype=self.hidden_dtype)
        self.p_x_convs = keras.Sequential(
            [tl.GatedConv2D(64, 3, 1, padding=1, dtype=self.hidden_dtype) for _ in range(4)], name="p_x_convs")
        self.p_x_head = ImageHead(self.likelihood_name, self.image_shape, conv=True, name="p_x_head",
                                  dtype="float32")

    def _decoder_features(self, z1, z2, x=None, training=False):
        h = self.p_x_joint(tf.concat([self.p_x_z1(z1), self.p_x_z2(z2)], -1))
        h = tf.reshape(h, tf.concat([tf.shape(z1)[:1], self.image_shape], 0))
        return self.p_x_convs(h)

    def _floats_per_row(self):
        return 2 * 64 * self.num_pixels * 6


@keras.saving.register_keras_serializable(package="tfvamp")
class PixelHVAE(ConvHVAE):
    """ConvHVAE encoders with a PixelCNN decoder.

    p(x|z1,z2): GD(z1,D) and GD(z2,D) reshaped to image maps, concatenated with x as
    channels, then 8 masked 3x3 convs with 64 channels (mask A, then 7 x mask B), each
    followed by batch norm and ReLU, then 1x1 heads. Pixels are generated one at a time.
    """

    model_name = "pixelhvae"
    _decoder_needs_x = True

    def _build_decoder(self):
        self.p_x_z1 = _mlp([self.num_pixels], "p_x_z1", dtype=self.hidden_dtype)
        self.p_x_z2 = _mlp([self.num_pixels], "p_x_z2", dtype=self.hidden_dtype)
        pixelcnn = []
        for i in range(8):
            pixelcnn += [tl.MaskedConv2D("A" if i == 0 else "B", 64, 3, dtype=self.hidden_dtype),
                         # Synchronised across replicas so that statistics are the global batch's.
                         keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True,
                                                         dtype=self.hidden_dtype),
                         keras.layers.ReLU(dtype=self.hidden_dtype)]
        self.pixelcnn = keras.Sequential(pixelcnn, name="pixelcnn")
        self.p_x_head = ImageHead(self.likelihood_name, self.image_shape, conv=True, name="p_x_head",
                                  dtype="float32")

    def _latent_maps(self, z1, z2):
        shape = tf.concat([tf.shape(z1)[:1], self.image_shape], 0)
        return tf.concat([tf.reshape(self.p_x_z1(z1), shape), tf.reshape(self.p_x_z2(z2), shape)], -1)

    def _pixel_features(self, x, maps, training):
        return self.pixelcnn(tf.concat([tf.cast(x, maps.dtype), maps], -1), training=training)

    def _decoder_features(self, z1, z2, x=None, training=False):
        return self._pixel_features(x, self._latent_maps(z1, z2), training)

    def _generate_x(self, z1, z2, seed):
        """Autoregressive sampling in raster order: one decoder pass per pixel, in the graph."""
        maps = self._latent_maps(z1, z2)
        height, width, channels = self.image_shape
        num = height * width

        def body(i, x):
            params = self.p_x_head(self._pixel_features(x, maps, False))
            base = likelihoods.distribution(self.likelihood_name, params).distribution
            draw = base.sample(seed=tf.random.experimental.stateless_fold_in(seed, i))
            mask = tf.reshape(tf.one_hot(i, num, dtype=x.dtype), [1, height, width, 1])
            return i + 1, x * (1.0 - mask) + tf.cast(draw, x.dtype) * mask

        x0 = tf.zeros(tf.concat([tf.shape(z1)[:1], self.image_shape], 0))
        _, x = tf.while_loop(lambda i, _: i < num, body, (tf.constant(0), x0))
        return x

    def _floats_per_row(self):
        return 3 * 64 * self.num_pixels * 8


_MODEL_CLASSES = {"vae": VAE, "hvae": HVAE, "convhvae": ConvHVAE, "pixelhvae": PixelHVAE}


def build_model(model_name, prior, input_shape, likelihood, num_components=500, z1_size=40,
                z2_size=40, **options):
    """Builds one of the paper's models with every weight created.

    Args:
      model_name: 'vae', 'hvae', 'convhvae' or 'pixelhvae'.
      prior: 'standard', 'mog', 'vampprior', 'vampprior_data' or 'weighted_vampprior'.
      input_shape: image shape `(H, W, C)` (28x28x1 for most sets, 28x20x1 for Frey Faces).
      likelihood: 'bernoulli', 'discretized_logistic' or 'discretized_logistic_normalized'.
      num_components: K pseudo-inputs / mixture components.
      z1_size, z2_size: latent sizes.
      **options: `pseudo_inputs_data`, `pseudo_inputs_mean`, `pseudo_inputs_std`, `seed`,
        `compute_dtype` (see `LatentVariableModel`).

    Returns:
      A `LatentVariableModel`.
    """
    if model_name not in _MODEL_CLASSES:
        raise ValueError(f"Unknown model {model_name!r}; choose one of {', '.join(MODELS)}.")
    unknown = set(options) - {"pseudo_inputs_data", "pseudo_inputs_mean", "pseudo_inputs_std", "seed",
                            "compute_dtype", "name"}
    if unknown:
        raise TypeError(f"build_model got unknown options {sorted(unknown)}; allowed: pseudo_inputs_data, "
                        "pseudo_inputs_mean, pseudo_inputs_std, seed, compute_dtype, name.")
    return _MODEL_CLASSES[model_name](input_shape, prior=prior, likelihood=likelihood,
                                      num_components=num_components, z1_size=z1_size,
                                      z2_size=z2_size, **options)
