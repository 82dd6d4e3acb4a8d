"""The paper's four model families as Keras model subclasses (docs/paper_details.md section 4).

* `VAE`:       one latent z; MLP q(z|x) and p(x|z).
* `HVAE`:      two latents, prior on z2: q(z2|x) q(z1|x,z2), p(z2) p(z1|z2) p(x|z1,z2); MLPs.
* `ConvHVAE`:  HVAE with gated-convolution encoders and a gated-convolution decoder.
* `PixelHVAE`: ConvHVAE encoders with a PixelCNN decoder (autoregressive over pixels).

The model protocol they implement, the objective, sampling and the Keras plumbing they share are
`tfvamp.model_base.LatentVariableModel` (its module docstring has the protocol's table).
"""
import keras
import tensorflow as tf

from tfvamp import layers as tl
from tfvamp import likelihoods
from tfvamp import priors
# Re-exported: `tfvamp.models.LatentVariableModel`, `HIDDEN`, ... as before the split.
from tfvamp.model_base import (HIDDEN, LOG_2PI, LatentVariableModel, conv_stack,  # noqa: F401
                               log_normal_diag, reparameterize, run_stack, tile_samples)

MODELS = ("vae", "hvae", "convhvae", "pixelhvae")


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
        z, log_q = reparameterize(encoded["top_mean"], encoded["top_logvar"], num_samples, noise_fn)
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
        z2, log_q2 = reparameterize(encoded["top_mean"], encoded["top_logvar"], num_samples, noise_fn)
        mean1, logvar1 = self._q_z1(tile_samples(encoded["x_features"], num_samples), z2)
        z1, log_q1 = reparameterize(mean1, logvar1, 1, noise_fn)
        p_mean1, p_logvar1 = self._p_z1(z2)
        x_context = tile_samples(x, num_samples) if self._decoder_needs_x else None
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
        self.q_z2 = conv_stack([(32, 7, 1), (32, 3, 2), (64, 5, 1), (64, 3, 2), (6, 3, 1)], "q_z2", dtype, first,
                                self.init_scheme)
        self.q_z1_x = conv_stack([(32, 3, 1), (32, 3, 2), (64, 3, 1), (64, 3, 2), (6, 3, 1)], "q_z1_x", dtype,
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


def build_model(model_name, prior, image_shape, likelihood, num_components=500, z1_size=40,
                z2_size=40, **options):
    """Builds one of the paper's models with every weight created.

    Args:
      model_name: 'vae', 'hvae', 'convhvae' or 'pixelhvae'.
      prior: 'standard', 'mog', 'vampprior', 'vampprior_data' or 'weighted_vampprior'.
      image_shape: `(H, W, C)` (28x28x1 for most sets, 28x20x1 for Frey Faces).
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
                         f"K = {num_components} images of shape {tuple(image_shape)}).")
    return cls(image_shape, prior=prior, likelihood=likelihood,
                                      num_components=num_components, z1_size=z1_size,
                                      z2_size=z2_size, **options)
