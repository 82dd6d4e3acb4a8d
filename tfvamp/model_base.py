"""What every model family shares: `LatentVariableModel`, the model protocol and its plumbing.

The families (`VAE`, `HVAE`, `ConvHVAE`, `PixelHVAE`) are in `tfvamp.models`; this module holds
what they are written against: the objective (`loss_terms`), sampling, reconstruction, the
Keras `compile`/`fit`/`evaluate` plumbing (`KerasFit`), `get_config`, and the network helpers
(`_mlp`, `conv_stack`, `run_stack`, `reparameterize`).

The model protocol. Every family implements these, and the objective (`loss_terms`), the
importance sampler (`tfvamp.estimator`), sampling, evaluation and export are written once
against them; no other module reaches inside a model.

| method                                   | what it does                                                   |
|------------------------------------------|----------------------------------------------------------------|
| `encode_top(x)`                          | q(top latent | x): images `[N, H, W, C]` -> (mean, logvar) `[N, D_top]` |
| `encode_data(x, many_samples=False, top=None)` | what q and p(x|.) need from x once per batch: a dict of `[B, ...]` tensors with `top_mean` and `top_logvar` (`top`: those two, already computed); `many_samples=True` adds the likelihood's per-image context for scoring many samples per image |
| `encode_with_prior(x, many_samples=False)` | (`encode_data(x, ...)`, `prior()`), in bfloat16 modes with one pass of the top encoder over the batch and the pseudo-inputs together (shared here) |
| `score_latents(x, encoded, S, log_prior, noise_fn, training)` | draws S latents per image from q and returns (log p(x|z), log q(z|x), log p(z)), each `[S, B]` |
| `generate(top, seed)`                    | images `[N, H, W, C]` in [0, 1] from top-latent samples `[N, D_top]` |
| `floats_per_sample()`                    | activation floats one (sample, image) pair costs: sizes the sampler's chunks |
| `prior()`                                | the prior over the top latent, a TFP distribution, event `[D_top]` |

Shapes: images are `[B, H, W, C]` float32 in [0, 1]. `S` samples of every latent are laid out
sample-major as `[S * B, ...]` inside the networks, and `[S, B]` in the log-densities.
`log_prior` maps top latents `[S * B, D_top]` to `[S * B]`: `prior().log_prob` in training,
the prior centred on each image (`GaussianMixture.log_prob_by_image`) in the sampler.
"""
import math

import keras
import numpy as np
import tensorflow as tf

from tfvamp import config as config_lib
from tfvamp import estimator
from tfvamp import initializers
from tfvamp import layers as tl
from tfvamp import likelihoods
from tfvamp import noise
from tfvamp import precision
from tfvamp import priors
from tfvamp.heads import GaussianHead, ImageHead

LOG_2PI = math.log(2.0 * math.pi)
HIDDEN = 300


def log_normal_diag(x, mean, logvar):
    """log N(x | mean, diag(exp(logvar))), summed over the last axis, constants kept.

    `[..., D]` (broadcastable) -> `[...]`.
    """
    return -0.5 * tf.reduce_sum(LOG_2PI + logvar + tf.square(x - mean) * tf.exp(-logvar), axis=-1)


def tile_samples(t, num_samples):
    """`[B, ...]` -> `[S * B, ...]`, sample-major."""
    return tf.tile(t, tf.concat([[num_samples], tf.ones([tf.rank(t) - 1], tf.int32)], 0))


def reparameterize(mean, logvar, num_samples, noise_fn):
    """z = mean + exp(logvar / 2) * eps with eps `[S, B, D]`, and log q(z) = log N(z | mean,
    exp(logvar)) written with eps (the same value and gradient, without forming
    (z - mean)^2 / var again). Returns z `[S * B, D]` and log q `[S * B]`, sample-major."""
    shape = tf.concat([[num_samples], tf.shape(mean)], 0)
    eps = tf.random.normal(shape) if noise_fn is None else noise_fn(shape)
    z = mean[None] + tf.exp(0.5 * logvar)[None] * eps
    log_q = -0.5 * (tf.reduce_sum(LOG_2PI + logvar, -1)[None] + tf.reduce_sum(tf.square(eps), -1))
    return tf.reshape(z, [-1, tf.shape(mean)[-1]]), tf.reshape(log_q, [-1])


# The Sequential stacks below are part of the checkpoint format (their variables are saved
# under `<name>/_functional/_operations/<i>`): keep their layer lists as they are. Precision
# only sets each layer's dtype policy (float32 variables either way).
def _mlp(units, name, flatten=False, dtype=None, first_dtype=None, float32_weight_gradients=False,
         init=initializers.DEFAULT):
    """Gated MLP stack; `flatten` first turns images `[N, H, W, C]` into `[N, H*W*C]`.

    `first_dtype` (default `dtype`): the Keras dtype policy of the first layer (and the flatten).
    `init`: `tfvamp.initializers`.
    """
    first_dtype = first_dtype or dtype
    stack = [keras.layers.Flatten(dtype=first_dtype)] if flatten else []
    stack += [tl.GatedDense(u, dtype=first_dtype if i == 0 else dtype, init=init,
                            float32_weight_gradients=float32_weight_gradients) for i, u in enumerate(units)]
    return keras.Sequential(stack, name=name)


def conv_stack(specs, name, dtype=None, first_dtype=None, init=initializers.DEFAULT):
    """Gated convolutions from (filters, kernel, stride) triples, then flatten; `first_dtype`
    (default `dtype`) is the first convolution's dtype policy."""
    dtypes = [first_dtype or dtype] + [dtype] * (len(specs) - 1)
    stack = [tl.GatedConv2D(f, k, s, padding=k // 2, dtype=d, init=init) for (f, k, s), d in zip(specs, dtypes)]
    return keras.Sequential(stack + [keras.layers.Flatten(dtype=dtype)], name=name)


def run_stack(stack, x, dtype):
    """A `_mlp` or `conv_stack` computed in `dtype` whatever its layers' policies (the same
    weights): `[N, ...]` -> `[N, F]` in `dtype`."""
    for layer in stack.layers:
        if isinstance(layer, keras.layers.Flatten):
            x = tf.reshape(x, [tf.shape(x)[0], -1])
        else:
            x = layer.forward(x, dtype)
    return x


class KerasFit:
    """Keras' own workflow for a `LatentVariableModel`: compile / fit / evaluate on its objective.

    A mixin before `keras.Model` in `LatentVariableModel`'s bases: it overrides `compile`,
    `metrics`, `train_step` and `test_step`, and reads `loss_terms` and `optimizer`. It adds no
    weight and nothing tracked (`_FitState`), so checkpoints are the same with or without it.
    """

    def compile(self, optimizer=None, **kwargs):
        """`keras.Model.compile`; the loss is always the model's own negative ELBO.

        `optimizer` defaults to the paper's AdamNormGrad (lr 5e-4). Then `fit(images)` trains on
        `loss` = reconstruction + beta * KL per example (beta from the `tfvamp.training.WarmUp`
        callback, 1 without it), with `reconstruction` and `kl` as metrics; `evaluate` reports
        the same with beta = 1. A loss or metrics given here are refused: there is one objective.
        """
        if kwargs.get("loss") is not None or kwargs.get("metrics"):
            raise ValueError("tfvamp models train on their own objective (the negative ELBO); compile takes an "
                             "optimizer only, and reports loss, reconstruction and kl.")
        kwargs.pop("loss", None)
        if optimizer is None:
            from tfvamp import optimizers  # pylint: disable=import-outside-toplevel
            optimizer = optimizers.AdamNormGrad()
        super().compile(optimizer=optimizer, **kwargs)
        if not hasattr(self, "_fit"):
            self._fit = _FitState()

    @property
    def fit_beta(self):
        """The KL weight `fit` trains with (a variable; `tfvamp.training.WarmUp` sets it)."""
        return self._fit.beta

    @property
    def metrics(self):
        fit = getattr(self, "_fit", None)
        return list(fit.trackers.values()) if fit is not None else []

    def _fit_terms(self, data, beta, training):
        x = data[0] if isinstance(data, (tuple, list)) else data
        x = data["image"] if isinstance(x, dict) else x
        terms = self.loss_terms(tf.cast(x, tf.float32), beta=beta, training=training)
        for name, tracker in self._fit.trackers.items():
            tracker.update_state(terms[name])
        return terms

    def train_step(self, data):
        with tf.GradientTape() as tape:
            terms = self._fit_terms(data, self._fit.beta, training=True)
            # A mean per replica, divided by the replicas: Keras sums their gradients.
            replicas = tf.distribute.get_replica_context().num_replicas_in_sync
            loss = tf.reduce_mean(terms["loss"]) / tf.cast(replicas, tf.float32)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {name: tracker.result() for name, tracker in self._fit.trackers.items()}

    def test_step(self, data):
        self._fit_terms(data, 1.0, training=False)
        return {name: tracker.result() for name, tracker in self._fit.trackers.items()}


class _FitState:
    """What `compile` adds for `fit`: the KL weight and the metric trackers. A plain object, so
    that neither Keras nor tf.train.Checkpoint tracks it: checkpoints of a model are the same
    whether it was compiled or not."""

    def __init__(self):
        self.beta = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="fit_beta")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "reconstruction", "kl")}


class LatentVariableModel(KerasFit, keras.Model):
    """What every model shares: prior, objective, sampling, and the protocol's plumbing.

    Args:
      image_shape: `(H, W, C)` of the data.
      prior: one of `priors.PRIORS`, on the top latent (z, or z2 in two-level models).
      likelihood: one of `likelihoods.LIKELIHOODS`.
      num_components: K, pseudo-inputs or mixture components (ignored by `standard`).
      z1_size, z2_size: latent sizes (the one-level VAE's z has `z1_size`).
      pseudo_inputs_mean, pseudo_inputs_std: N(mean, std) initialisation of pseudo-inputs.
      pseudo_inputs_data: `[N >= K, H, W, C]` training images: the fixed pseudo-inputs of
        `vampprior_data`, or the initialisation of `vampprior`. Not part of the config: the
        pseudo-inputs are weights, restored with the others (`build_model` refuses
        `vampprior_data` without them).
      seed: seeds the choice of data pseudo-inputs and the prior's initialisers (seed the
        rest with `keras.utils.set_random_seed`).
      compute_dtype: a mode of `tfvamp.precision`: 'float32', 'bfloat16' (hidden layers),
        'mixed' (the measured per-part policy), 'auto' (resolved here, on this machine's
        hardware: `get_config` holds the concrete mode), or 'bfloat16_except:PART,...'.
      init: how the weights start, 'release' (the official PyTorch release's, layer type by
        layer type) or 'keras' (truncated He normal, zero biases): `tfvamp.initializers`.
    """

    model_name = None

    def __init__(self, image_shape, prior="vampprior", likelihood="bernoulli", num_components=500,
                 z1_size=40, z2_size=40, pseudo_inputs_mean=0.05, pseudo_inputs_std=0.01,
                 pseudo_inputs_data=None, seed=None, compute_dtype="float32", init=initializers.DEFAULT,
                 **kwargs):
        super().__init__(**kwargs)
        self.init_scheme = initializers.check_init(init)
        # Which parts compute in bfloat16 (float32 variables in every mode; densities float32).
        self.compute_dtype_name = (precision.resolve(compute_dtype).mode if compute_dtype == "auto"
                                   else precision.check_mode(compute_dtype, allow_auto=False))
        self.precision = precision.for_likelihood(self.compute_dtype_name, likelihood)
        self.hidden_dtype = self.precision.keras("hidden")
        self.first_layer_dtype = self.precision.keras("first_layer")
        self.float32_weight_gradients = self.precision.dtype("weight_gradients") == precision.FLOAT32
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
            self.pseudo_inputs_mean, self.pseudo_inputs_std, pseudo_inputs_data, seed,
            restoring=pseudo_inputs_data is None)
        # Create every weight now, so that checkpoints and optimizers see the full model.
        self.loss_terms(tf.zeros((1,) + image_shape))
        self.built = True

    # ---- the protocol (families implement these) ----------------------------------------------
    top_latent_size = None
    top_latent_name = None  # the layer the prior is on: 'z' or 'z2'
    latent_sizes = None  # {layer name: size}

    def _build_networks(self):
        raise NotImplementedError

    def encode_top(self, x):
        """q(top latent | x): images `[N, H, W, C]` -> (mean, logvar), each `[N, D_top]`."""
        raise NotImplementedError

    def encode_data(self, x, many_samples=False, top=None):
        """What q and p(x|.) need from x, once per batch (see the module docstring); `top`:
        `encode_top(x)` when the caller has it already."""
        raise NotImplementedError

    def encode_with_prior(self, x, many_samples=False):
        """(`encode_data(x, many_samples)`, `prior()`), what the objective and the sampler need.

        In a bfloat16 mode that encodes the pseudo-inputs like the data (`prior_encoder`), the
        top encoder runs once over `[x; pseudo-inputs]`: each of its weights is cast and packed
        for the bfloat16 matmul once instead of twice, and the batch's rows join the K
        pseudo-inputs' in larger matmuls, where bfloat16 runs faster (docs/benchmarks.md). Row
        by row it is the same computation. float32 keeps the two passes, as before.
        """
        joint = (priors.has_pseudo_inputs(self.prior_name) and self.precision.uses_bfloat16()
                 and self.precision.dtype("prior_encoder") == precision.BFLOAT16)
        if not joint:
            return self.encode_data(x, many_samples), self.prior()
        pseudo_inputs = self.prior_layer.pseudo_inputs()
        mean, logvar = self.encode_top(tf.concat([x, tf.cast(pseudo_inputs, x.dtype)], 0))
        # A split, not slices: its gradient is one concat, where slices' are zero-padded copies summed.
        sizes = tf.stack([tf.shape(x)[0], -1])
        (mean_x, mean_p), (logvar_x, logvar_p) = tf.split(mean, sizes, 0), tf.split(logvar, sizes, 0)
        encoded = self.encode_data(x, many_samples, top=(mean_x, logvar_x))
        return encoded, self.prior_layer.distribution(lambda _: (mean_p, logvar_p))

    def score_latents(self, x, encoded, num_samples, log_prior, noise_fn=None, training=False):
        """Draws `num_samples` latents per image from q and scores them.

        Args:
          x: images `[B, H, W, C]`.
          encoded: `encode_data(x, ...)`, computed once per batch.
          num_samples: S.
          log_prior: top latents `[S * B, D_top]` -> log p `[S * B]`.
          noise_fn: `shape -> standard normals` (`tfvamp.noise`); None draws from TF's generator.
          training: batch-norm mode (PixelHVAE).

        Returns:
          (log p(x|z), log q(z|x), log p(z)), each `[S, B]`; two-level models sum both layers.
        """
        raise NotImplementedError

    def generate(self, top, seed):
        """Images `[N, H, W, C]` in [0, 1] from top-latent samples `[N, D_top]`; `seed` `[2]` int32
        seeds what is drawn below the top (z1, PixelHVAE's pixels)."""
        raise NotImplementedError

    def floats_per_sample(self):
        """Activation floats one (sample, image) pair costs: sizes the importance sampler's chunks."""
        return 8 * HIDDEN + 4 * self.num_pixels

    def top_encoder(self):
        """(network, GaussianHead) of q(top latent | x): `encode_top` is head(network(x))."""
        raise NotImplementedError

    # ---- precision: layers of each part in the policy's dtype -----------------------------------
    def _mlp(self, units, name, flatten=False, reads_data=False):
        """A gated MLP in the hidden dtype; `reads_data`: its first layer is `first_layer`'s."""
        return _mlp(units, name, flatten, self.hidden_dtype, self.first_layer_dtype if reads_data else None,
                    self.float32_weight_gradients, self.init_scheme)

    def _gaussian_head(self, size, name):
        return GaussianHead(size, mean_dtype=self.precision.dtype("mean_heads"),
                            logvar_dtype=self.precision.dtype("variance_heads"),
                            float32_weight_gradients=self.float32_weight_gradients, name=name, dtype="float32",
                            init=self.init_scheme)

    def _image_head(self, **kwargs):
        return ImageHead(self.likelihood_name, self.image_shape, name="p_x_head", dtype=self.precision.keras(
            "output_layer"), float32_weight_gradients=self.float32_weight_gradients, init=self.init_scheme, **kwargs)

    def _join(self, *features):
        """Features `[N, F_i]` concatenated for a hidden layer, in the hidden compute dtype (a
        branch that reads x may compute in another: part `first_layer`)."""
        dtype = self.precision.dtype("hidden")
        return tf.concat([tf.cast(f, dtype) for f in features], -1)

    def encode_pseudo_inputs(self, u):
        """The prior's components from pseudo-inputs `[K, H, W, C]`: (means, logvars) `[K, D_top]`.

        `encode_top`, unless the policy's `prior_encoder` is float32 while the data's pass is
        not: then the same weights run in float32 throughout.
        """
        if self.precision.dtype("prior_encoder") == precision.BFLOAT16 or not self.precision.uses_bfloat16():
            return self.encode_top(u)
        network, head = self.top_encoder()
        return head.forward(run_stack(network, u, tf.float32), precision.FLOAT32, precision.FLOAT32)

    def encode(self, x):
        """Posterior parameters per latent layer: dict `{layer}_mean`, `{layer}_logvar`, `[B, D]`."""
        raise NotImplementedError

    def _reconstruct_from_seed(self, x, seed):
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------------------
    def _check_input(self, x):
        x = tf.convert_to_tensor(x, dtype=tf.float32)
        if x.shape.rank != 4 or tuple(x.shape[1:]) != self.image_shape:
            shape = ", ".join(map(str, self.image_shape))
            raise ValueError(f"{type(self).__name__} takes images of shape [batch, {shape}] in [0, 1]; "
                             f"got shape {list(x.shape)}.")
        return x

    def _likelihood_log_prob(self, features, x, num_samples, encoded):
        """log p(x | decoder features) `[S, B]`, with the per-image context when there is one."""
        return self.p_x_head.log_prob(features, x, num_samples, encoded.get("px_context"))

    def _data_context(self, x, many_samples):
        """The likelihood's per-image part for many samples per image, or {}."""
        context = self.p_x_head.sampler_context(x) if many_samples else None
        return {} if context is None else {"px_context": context}

    def prior(self):
        """The prior over the top latent: a TFP distribution, batch `[]`, event `[D_top]`
        (`priors.GaussianMixture` for every prior but `standard`)."""
        return self.prior_layer.distribution(self.encode_pseudo_inputs)

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
        encoded, prior = self.encode_with_prior(x)
        log_px, log_q, log_p = self.score_latents(x, encoded, 1, prior.log_prob, noise_fn, training)
        reconstruction, kl = -log_px[0], log_q[0] - log_p[0]
        beta = tf.cast(beta, reconstruction.dtype)
        return {"loss": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}

    def log_likelihood(self, x, num_samples=5000, chunk_size=None, prior_dtype="float32", seed=None):
        """Importance-sampled log p(x) in nats, float64 `[B]`: `tfvamp.estimator.log_likelihood`."""
        return estimator.log_likelihood(self, self._check_input(x), num_samples=num_samples,
                                        chunk_size=chunk_size, prior_dtype=prior_dtype, seed=seed)

    def sample(self, n, seed=None):
        """`n` images `[n, H, W, C]` in [0, 1] from the model: z ~ prior (components by their
        weights), then the decoder's mean (PixelHVAE: autoregressively sampled pixels).

        `n` and `seed` are ints or int32 scalar tensors (inside a `tf.function` too); the same
        seed gives the same images; None draws a seed from TensorFlow's generator.
        """
        return self._sample_from_seed(tf.cast(n, tf.int32), noise.seed_pair(seed, 0))

    @tf.function(reduce_retracing=True)
    def _sample_from_seed(self, n, seed):
        seed_top, seed_rest = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return self.generate(self.prior().sample(n, seed=seed_top), seed_rest)

    def reconstruct(self, x, seed=0):
        """Decoded images `[B, H, W, C]` from the posterior means of x's latents."""
        return self._reconstruct_graph(self._check_input(x), noise.seed_pair(seed, 1))

    @tf.function(reduce_retracing=True)
    def _reconstruct_graph(self, x, seed):
        return self._reconstruct_from_seed(x, seed)

    def get_config(self):
        """Every constructor argument but `pseudo_inputs_data` (the pseudo-inputs are weights):
        the fields of `tfvamp.config.ModelConfig`, the one model schema."""
        schema = config_lib.ModelConfig(
            model=self.model_name, image_shape=self.image_shape, prior=self.prior_name,
            likelihood=self.likelihood_name, num_components=self.num_components, z1_size=self.z1_size,
            z2_size=self.z2_size, pseudo_inputs_mean=self.pseudo_inputs_mean,
            pseudo_inputs_std=self.pseudo_inputs_std, seed=self.seed, compute_dtype=self.compute_dtype_name,
            init=self.init_scheme)
        return {**super().get_config(), **schema.keras_config()}

    @classmethod
    def from_config(cls, config):
        # Saved before `init` or `compute_dtype` existed: what those runs used.
        config = {**config_lib.LEGACY_DEFAULTS, **config}
        config["image_shape"] = tuple(config["image_shape"])
        return cls(**config)
