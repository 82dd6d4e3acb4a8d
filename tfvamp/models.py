"""The paper's four model families as Keras model subclasses (docs/paper_details.md section 4).

* `VAE`:       one latent z; MLP q(z|x) and p(x|z).
* `HVAE`:      two latents, prior on z2: q(z2|x) q(z1|x,z2), p(z2) p(z1|z2) p(x|z1,z2); MLPs.
* `ConvHVAE`:  HVAE with gated-convolution encoders and a gated-convolution decoder.
* `PixelHVAE`: ConvHVAE encoders with a PixelCNN decoder (autoregressive over pixels).

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

from tfvamp import estimator
from tfvamp import initializers
from tfvamp import layers as tl
from tfvamp import likelihoods
from tfvamp import noise
from tfvamp import precision
from tfvamp import priors
from tfvamp.heads import GaussianHead, ImageHead

MODELS = ("vae", "hvae", "convhvae", "pixelhvae")
LOG_2PI = math.log(2.0 * math.pi)
HIDDEN = 300


def log_normal_diag(x, mean, logvar):
    """log N(x | mean, diag(exp(logvar))), summed over the last axis, constants kept.

    `[..., D]` (broadcastable) -> `[...]`.
    """
    return -0.5 * tf.reduce_sum(LOG_2PI + logvar + tf.square(x - mean) * tf.exp(-logvar), axis=-1)


def _tile(t, num_samples):
    """`[B, ...]` -> `[S * B, ...]`, sample-major."""
    return tf.tile(t, tf.concat([[num_samples], tf.ones([tf.rank(t) - 1], tf.int32)], 0))


def _reparameterize(mean, logvar, num_samples, noise_fn):
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


def _conv_stack(specs, name, dtype=None, first_dtype=None, init=initializers.DEFAULT):
    """Gated convolutions from (filters, kernel, stride) triples, then flatten; `first_dtype`
    (default `dtype`) is the first convolution's dtype policy."""
    dtypes = [first_dtype or dtype] + [dtype] * (len(specs) - 1)
    stack = [tl.GatedConv2D(f, k, s, padding=k // 2, dtype=d, init=init) for (f, k, s), d in zip(specs, dtypes)]
    return keras.Sequential(stack + [keras.layers.Flatten(dtype=dtype)], name=name)


def run_stack(stack, x, dtype):
    """A `_mlp` or `_conv_stack` computed in `dtype` whatever its layers' policies (the same
    weights): `[N, ...]` -> `[N, F]` in `dtype`."""
    for layer in stack.layers:
        if isinstance(layer, keras.layers.Flatten):
            x = tf.reshape(x, [tf.shape(x)[0], -1])
        else:
            x = layer.forward(x, dtype)
    return x


class LatentVariableModel(keras.Model):
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

    # ---- Keras' own workflow: compile / fit / evaluate --------------------------------------------
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

    def get_config(self):
        """Every constructor argument but `pseudo_inputs_data` (the pseudo-inputs are weights)."""
        return {**super().get_config(), "image_shape": self.image_shape, "prior": self.prior_name,
                "likelihood": self.likelihood_name, "num_components": self.num_components,
                "z1_size": self.z1_size, "z2_size": self.z2_size,
                "pseudo_inputs_mean": self.pseudo_inputs_mean,
                "pseudo_inputs_std": self.pseudo_inputs_std, "seed": self.seed,
                "compute_dtype": self.compute_dtype_name, "init": self.init_scheme}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["image_shape"] = tuple(config["image_shape"])
        config.setdefault("init", initializers.LEGACY)  # saved before `init` existed
        return cls(**config)


class _FitState:
    """What `compile` adds for `fit`: the KL weight and the metric trackers. A plain object, so
    that neither Keras nor tf.train.Checkpoint tracks it: checkpoints of a model are the same
    whether it was compiled or not."""

    def __init__(self):
        self.beta = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="fit_beta")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "reconstruction", "kl")}


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

    top_latent_name = "z"

    def _build_networks(self):
        self.q_z = self._mlp([HIDDEN, HIDDEN], "q_z", flatten=True, reads_data=True)
        self.q_z_head = self._gaussian_head(self.z1_size, "q_z_head")
        self.p_x = self._mlp([HIDDEN, HIDDEN], "p_x")
        self.p_x_head = self._image_head()

    def top_encoder(self):
        return self.q_z, self.q_z_head

    def encode_top(self, x):
        return self.q_z_head(self.q_z(x))

    def decode(self, z):
        """The likelihood's parameter maps `[N, H, W, C]` from z `[N, D]`."""
        return self.p_x_head(self.p_x(z))

    def encode_data(self, x, many_samples=False, top=None):
        mean, logvar = self.encode_top(x) if top is None else top
        return {"top_mean": mean, "top_logvar": logvar, **self._data_context(x, many_samples)}

    def score_latents(self, x, encoded, num_samples, log_prior, noise_fn=None, training=False):
        z, log_q = _reparameterize(encoded["top_mean"], encoded["top_logvar"], num_samples, noise_fn)
        log_px = self._likelihood_log_prob(self.p_x(z), x, num_samples, encoded)
        shape = [num_samples, -1]
        return log_px, tf.reshape(log_q, shape), tf.reshape(log_prior(z), shape)

    def generate(self, top, seed):
        return likelihoods.mean_image(self.likelihood_name, self.decode(top))

    def _reconstruct_from_seed(self, x, seed):
        return self.generate(self.encode_top(x)[0], seed)

    def encode(self, x):
        mean, logvar = self.encode_top(self._check_input(x))
        return {"z_mean": mean, "z_logvar": logvar}


@keras.saving.register_keras_serializable(package="tfvamp")
class HVAE(LatentVariableModel):
    """Two stochastic layers with the prior on z2 (the paper's HVAE, MLP networks).

    q(z2|x): GD(D,300) GD(300,300) -> heads.  q(z1|x,z2): [GD(D,300)(x), GD(40,300)(z2)] ->
    GD(600,300) -> heads.  p(z1|z2): GD(40,300) GD(300,300) -> heads.
    p(x|z1,z2): [GD(40,300)(z1), GD(40,300)(z2)] -> GD(600,300) -> D.
    """

    model_name = "hvae"
    _decoder_needs_x = False  # PixelHVAE's decoder reads x (autoregressive)

    @property
    def top_latent_size(self):
        return self.z2_size

    @property
    def latent_sizes(self):
        return {"z1": self.z1_size, "z2": self.z2_size}

    top_latent_name = "z2"

    # Sub-networks: the conv variants override these builders.
    def _build_encoders(self):
        self.q_z2 = self._mlp([HIDDEN, HIDDEN], "q_z2", flatten=True, reads_data=True)
        self.q_z1_x = self._mlp([HIDDEN], "q_z1_x", flatten=True, reads_data=True)
        self.q_z1_z2 = self._mlp([HIDDEN], "q_z1_z2")

    def _build_decoder(self):
        self.p_x_z1 = self._mlp([HIDDEN], "p_x_z1")
        self.p_x_z2 = self._mlp([HIDDEN], "p_x_z2")
        self.p_x_joint = self._mlp([HIDDEN], "p_x_joint")
        self.p_x_head = self._image_head()

    def _build_networks(self):
        self._build_encoders()
        self.q_z2_head = self._gaussian_head(self.z2_size, "q_z2_head")
        self.q_z1_joint = self._mlp([HIDDEN], "q_z1_joint")
        self.q_z1_head = self._gaussian_head(self.z1_size, "q_z1_head")
        self.p_z1 = self._mlp([HIDDEN, HIDDEN], "p_z1")
        self.p_z1_head = self._gaussian_head(self.z1_size, "p_z1_head")
        self._build_decoder()

    def top_encoder(self):
        return self.q_z2, self.q_z2_head

    def encode_top(self, x):
        return self.q_z2_head(self.q_z2(x))

    def _q_z1(self, x_features, z2):
        return self.q_z1_head(self.q_z1_joint(self._join(x_features, self.q_z1_z2(z2))))

    def _p_z1(self, z2):
        return self.p_z1_head(self.p_z1(z2))

    def _decoder_features(self, z1, z2, x=None, training=False):
        """The likelihood head's input from z1, z2 `[N, D]` (x: PixelHVAE's context)."""
        return self.p_x_joint(self._join(self.p_x_z1(z1), self.p_x_z2(z2)))

    def decode(self, z1, z2, x=None, training=False):
        """The likelihood's parameter maps `[N, H, W, C]` from z1, z2 `[N, D]` (and, for
        PixelHVAE, the image x `[N, H, W, C]` it is autoregressive in)."""
        return self.p_x_head(self._decoder_features(z1, z2, x, training))

    def encode_data(self, x, many_samples=False, top=None):
        mean2, logvar2 = self.encode_top(x) if top is None else top
        # x's branch of q(z1|x,z2) does not depend on the sample either.
        return {"top_mean": mean2, "top_logvar": logvar2, "x_features": self.q_z1_x(x),
                **self._data_context(x, many_samples)}

    def score_latents(self, x, encoded, num_samples, log_prior, noise_fn=None, training=False):
        z2, log_q2 = _reparameterize(encoded["top_mean"], encoded["top_logvar"], num_samples, noise_fn)
        mean1, logvar1 = self._q_z1(_tile(encoded["x_features"], num_samples), z2)
        z1, log_q1 = _reparameterize(mean1, logvar1, 1, noise_fn)
        p_mean1, p_logvar1 = self._p_z1(z2)
        x_context = _tile(x, num_samples) if self._decoder_needs_x else None
        features = self._decoder_features(z1, z2, x_context, training)
        log_px = self._likelihood_log_prob(features, x, num_samples, encoded)
        log_p = log_normal_diag(z1, p_mean1, p_logvar1) + log_prior(z2)
        shape = [num_samples, -1]
        return log_px, tf.reshape(log_q1 + log_q2, shape), tf.reshape(log_p, shape)

    def _sample_z1(self, z2, seed):
        mean, logvar = self._p_z1(z2)
        return mean + tf.exp(0.5 * logvar) * tf.random.stateless_normal(tf.shape(mean), seed)

    def generate(self, top, seed):
        seed_z1, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return self._generate_x(self._sample_z1(top, seed_z1), top, seed_x)

    def _generate_x(self, z1, z2, seed):
        return likelihoods.mean_image(self.likelihood_name, self.decode(z1, z2))

    def _reconstruct_from_seed(self, x, seed):
        mean2, _ = self.encode_top(x)
        mean1, _ = self._q_z1(self.q_z1_x(x), mean2)
        return self._generate_x(mean1, mean2, seed)

    def encode(self, x):
        x = self._check_input(x)
        mean2, logvar2 = self.encode_top(x)
        mean1, logvar1 = self._q_z1(self.q_z1_x(x), mean2)
        return {"z1_mean": mean1, "z1_logvar": logvar1, "z2_mean": mean2, "z2_logvar": logvar2}


MIN_CONV_SIDE = 3  # the conv encoders' two stride-2 convolutions: 3 -> 2 -> 1


def _conv_flat_size(image_shape, channels=6):
    """Flattened size after the encoders' two stride-2 convolutions: ceil(H / 4) x ceil(W / 4)
    x 6 (294 for 28x28, 210 for Frey's 28x20, 384 for 32x32, 1536 for 64x64)."""
    h, w = image_shape[0], image_shape[1]
    if min(h, w) < MIN_CONV_SIDE:
        raise ValueError(f"The convolutional models take images of at least {MIN_CONV_SIDE}x{MIN_CONV_SIDE} pixels "
                         f"(two stride-2 convolutions), got {h}x{w}; use the MLP models (vae, hvae) for smaller ones.")
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h * w * channels


@keras.saving.register_keras_serializable(package="tfvamp")
class ConvHVAE(HVAE):
    """HVAE with gated-convolution networks.

    q(z2|x): gated convs C->32 k7, 32->32 k3 s2, 32->64 k5, 64->64 k3 s2, 64->6 k3 -> heads.
    q(z1|x,z2): the same stack with kernel 3 throughout, joined with GD(40,F)(z2) ->
    GD(2F,300) -> heads. p(x|z1,z2): [GD(z1,300), GD(z2,300)] -> GD(600,D) -> image ->
    4 gated convs (64, k3) -> 1x1 heads.

    Any image size: the paper's 28x28 pattern is kept as it is (the same kernels, two stride-2
    convolutions, 6 channels at the end), so the flattened map is F = ceil(H/4) ceil(W/4) 6
    (294 for 28x28); images need at least 3 pixels a side. C channels in, C channels out.
    """

    model_name = "convhvae"

    def _build_encoders(self):
        flat = _conv_flat_size(self.image_shape)
        dtype, first = self.hidden_dtype, self.first_layer_dtype
        self.q_z2 = _conv_stack([(32, 7, 1), (32, 3, 2), (64, 5, 1), (64, 3, 2), (6, 3, 1)], "q_z2", dtype, first,
                                self.init_scheme)
        self.q_z1_x = _conv_stack([(32, 3, 1), (32, 3, 2), (64, 3, 1), (64, 3, 2), (6, 3, 1)], "q_z1_x", dtype,
                                  first, self.init_scheme)
        self.q_z1_z2 = self._mlp([flat], "q_z1_z2")

    def _build_decoder(self):
        self.p_x_z1 = self._mlp([HIDDEN], "p_x_z1")
        self.p_x_z2 = self._mlp([HIDDEN], "p_x_z2")
        self.p_x_joint = self._mlp([self.num_pixels], "p_x_joint")
        self.p_x_convs = keras.Sequential(
            [tl.GatedConv2D(64, 3, 1, padding=1, dtype=self.hidden_dtype, init=self.init_scheme) for _ in range(4)],
            name="p_x_convs")
        self.p_x_head = self._image_head(conv=True)

    def _decoder_features(self, z1, z2, x=None, training=False):
        h = self.p_x_joint(self._join(self.p_x_z1(z1), self.p_x_z2(z2)))
        h = tf.reshape(h, tf.concat([tf.shape(z1)[:1], self.image_shape], 0))
        return self.p_x_convs(h)

    def floats_per_sample(self):
        return 2 * 64 * self.num_pixels * 6


@keras.saving.register_keras_serializable(package="tfvamp")
class PixelHVAE(ConvHVAE):
    """ConvHVAE encoders with a PixelCNN decoder.

    p(x|z1,z2): GD(z1,D) and GD(z2,D) reshaped to image maps, concatenated with x as
    channels, then 8 masked 3x3 convs with 64 channels (mask A, then 7 x mask B), each
    followed by batch norm and ReLU, then 1x1 heads. With C > 1 channels the masks order them
    as PixelCNN does (R before G before B within a pixel: `layers.pixelcnn_mask` with C channel
    groups, the latent maps as ungrouped conditioning channels, a masked head), and pixels are
    generated one (pixel, channel) at a time.
    """

    model_name = "pixelhvae"
    _decoder_needs_x = True

    def _build_decoder(self):
        self.p_x_z1 = self._mlp([self.num_pixels], "p_x_z1")
        self.p_x_z2 = self._mlp([self.num_pixels], "p_x_z2")
        channels = self.image_shape[-1]
        pixelcnn = []
        for i in range(8):
            pixelcnn += [tl.MaskedConv2D("A" if i == 0 else "B", 64, 3, num_groups=channels,
                                         num_conditioning_channels=2 * channels if i == 0 else 0,
                                         dtype=self.first_layer_dtype if i == 0 else self.hidden_dtype,
                                         init=self.init_scheme),
                         # Synchronised across replicas so that statistics are the global batch's.
                         keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True,
                                                         dtype=self.hidden_dtype),
                         keras.layers.ReLU(dtype=self.hidden_dtype)]
        self.pixelcnn = keras.Sequential(pixelcnn, name="pixelcnn")
        # The release's PixelHVAE heads have a bias for Bernoulli logits only.
        self.p_x_head = self._image_head(conv=True, autoregressive=True,
                                         release_bias=self.likelihood_name == "bernoulli")

    def _latent_maps(self, z1, z2):
        shape = tf.concat([tf.shape(z1)[:1], self.image_shape], 0)
        return tf.concat([tf.reshape(self.p_x_z1(z1), shape), tf.reshape(self.p_x_z2(z2), shape)], -1)

    def _pixel_features(self, x, maps, training):
        dtype = self.pixelcnn.layers[0].compute_dtype  # the first masked conv reads x: `first_layer`
        return self.pixelcnn(tf.concat([tf.cast(x, dtype), tf.cast(maps, dtype)], -1), training=training)

    def _decoder_features(self, z1, z2, x=None, training=False):
        return self._pixel_features(x, self._latent_maps(z1, z2), training)

    def _generate_x(self, z1, z2, seed):
        """Autoregressive sampling: pixels in raster order and, within a pixel, channels in order;
        one decoder pass per (pixel, channel), in the graph."""
        maps = self._latent_maps(z1, z2)
        height, width, channels = self.image_shape
        num = height * width * channels

        def body(i, x):
            params = self.p_x_head(self._pixel_features(x, maps, False))
            base = likelihoods.distribution(self.likelihood_name, params).distribution
            draw = base.sample(seed=tf.random.experimental.stateless_fold_in(seed, i))
            mask = tf.reshape(tf.one_hot(i, num, dtype=x.dtype), [1, height, width, channels])
            return i + 1, x * (1.0 - mask) + tf.cast(draw, x.dtype) * mask

        x0 = tf.zeros(tf.concat([tf.shape(z1)[:1], self.image_shape], 0))
        _, x = tf.while_loop(lambda i, _: i < num, body, (tf.constant(0), x0))
        return x

    def floats_per_sample(self):
        return 3 * 64 * self.num_pixels * 8


_MODEL_CLASSES = {"vae": VAE, "hvae": HVAE, "convhvae": ConvHVAE, "pixelhvae": PixelHVAE}


def model_class(model_name):
    """The class of model family `model_name` (one of `MODELS`)."""
    if model_name not in _MODEL_CLASSES:
        raise ValueError(f"Unknown model {model_name!r}; choose one of {', '.join(MODELS)}.")
    return _MODEL_CLASSES[model_name]


_BUILD_OPTIONS = ("pseudo_inputs_data", "pseudo_inputs_mean", "pseudo_inputs_std", "seed", "compute_dtype", "init",
                  "name")


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
      **options: `pseudo_inputs_data` (required by `vampprior_data`), `pseudo_inputs_mean`,
        `pseudo_inputs_std`, `seed`, `compute_dtype`, `init` ('release', the default, or
        'keras'), `name` (see `LatentVariableModel`).

    Returns:
      A `LatentVariableModel`.
    """
    cls = model_class(model_name)
    unknown = set(options) - set(_BUILD_OPTIONS)
    if unknown:
        raise TypeError(f"build_model got unknown options {sorted(unknown)}; allowed: {', '.join(_BUILD_OPTIONS)}.")
    if priors.needs_training_images(priors.check_prior(prior)) and options.get("pseudo_inputs_data") is None:
        raise ValueError(f"The {prior!r} prior needs training images: pass pseudo_inputs_data (at least "
                         f"K = {num_components} images of shape {tuple(input_shape)}).")
    return cls(input_shape, prior=prior, likelihood=likelihood,
                                      num_components=num_components, z1_size=z1_size,
                                      z2_size=z2_size, **options)
