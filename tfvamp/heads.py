"""The layers that turn features into distribution parameters.

* `GaussianHead`: a diagonal Gaussian's mean and log-variance (every q and p(z1|z2) head).
* `ImageHead`: the likelihood's parameter maps over the image, and log p(x | features).

Shapes are in the docstrings; the math lives in `tfvamp.likelihoods`. Heads return float32
whatever they compute in (their matmuls run in bfloat16 where `tfvamp.precision` says so), so
that every density downstream is float32.
"""
import keras
import numpy as np
import tensorflow as tf

from tfvamp import initializers
from tfvamp import layers
from tfvamp import likelihoods

LOGVAR_MIN, LOGVAR_MAX = -6.0, 2.0  # the release's hardtanh on every variance head


def _check_dtype(dtype):
    dtype = tf.as_dtype(dtype).name
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"A head computes in float32 or bfloat16, got {dtype}.")
    return dtype


@keras.saving.register_keras_serializable(package="tfvamp")
class GaussianHead(keras.layers.Layer):
    """Linear mean and hardtanh(-6, 2) log-variance heads: `[N, F]` -> (`[N, D]`, `[N, D]`) float32.

    `mean_dtype`, `logvar_dtype`: what each half's matmul computes in (float32 or bfloat16);
    the variables are float32 (one `[F, 2D]` kernel, as in every checkpoint).
    """

    def __init__(self, latent_size, mean_dtype="float32", logvar_dtype="float32", float32_weight_gradients=False,
                 init=initializers.DEFAULT, **kwargs):
        kwargs.setdefault("autocast", False)  # the casts are explicit, per half
        super().__init__(**kwargs)
        self.latent_size = int(latent_size)
        self.mean_dtype, self.logvar_dtype = _check_dtype(mean_dtype), _check_dtype(logvar_dtype)
        self.float32_weight_gradients = bool(float32_weight_gradients)
        self.init = initializers.check_init(init)

    def build(self, input_shape):
        # The release's two nn.Linear (mean, log-variance) share fan_in: one kernel draws as both.
        shape = (int(input_shape[-1]), 2 * self.latent_size)
        self.kernel = self.add_weight(autocast=False, name="kernel", shape=shape,
                                      initializer=initializers.kernel(self.init, "dense"))
        self.bias = self.add_weight(autocast=False, name="bias", shape=(2 * self.latent_size,),
                                    initializer=initializers.bias(self.init, shape))

    def _affine(self, h, kernel, bias, dtype):
        out = layers.matmul(h, kernel, dtype, self.float32_weight_gradients) + tf.cast(bias, dtype)
        return tf.cast(out, tf.float32)

    def forward(self, h, mean_dtype, logvar_dtype):
        """(mean, logvar) float32 `[N, D]`, each half's matmul in the given dtype."""
        if mean_dtype == logvar_dtype:
            mean, logvar = tf.split(self._affine(h, self.kernel, self.bias, mean_dtype), 2, axis=-1)
        else:
            kernels, biases = tf.split(self.kernel, 2, axis=-1), tf.split(self.bias, 2)
            mean = self._affine(h, kernels[0], biases[0], mean_dtype)
            logvar = self._affine(h, kernels[1], biases[1], logvar_dtype)
        return mean, layers.hardtanh(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def call(self, h):
        return self.forward(h, self.mean_dtype, self.logvar_dtype)

    def get_config(self):
        return {**super().get_config(), "latent_size": self.latent_size, "mean_dtype": self.mean_dtype,
                "logvar_dtype": self.logvar_dtype, "float32_weight_gradients": self.float32_weight_gradients,
                "init": self.init}


@keras.saving.register_keras_serializable(package="tfvamp")
class ImageHead(keras.layers.Layer):
    """Decoder features -> the likelihood's parameter maps, each `[N, H, W, C]`.

    Dense mode takes `[N, F]` (a linear layer per parameter); conv mode takes `[N, H, W, F]`
    (a 1x1 convolution per parameter). Bernoulli: logits. Discretized logistic: loc =
    sigmoid clamped to [1/512, 1 - 1/512], log_scale = hardtanh(-4.5, 0), as in the release.
    `autoregressive=True` (conv mode, PixelHVAE) masks the 1x1 kernel so that image channel c's
    parameters see only the features of channel groups <= c (`layers.pixelcnn_head_mask`).
    The matmul runs in the layer's compute dtype (`mixed_bfloat16`: bfloat16); the parameter
    maps are float32. `init`: `tfvamp.initializers` (a dense head draws as an nn.Linear, a conv
    head as an nn.Conv2d); `release_bias=False` starts the bias at zero under `release`, for the
    release's bias-free heads (PixelHVAE's discretized logistic).
    """

    def __init__(self, likelihood, image_shape, conv=False, autoregressive=False, float32_weight_gradients=False,
                 init=initializers.DEFAULT, release_bias=True, **kwargs):
        kwargs.setdefault("autocast", False)  # the casts are explicit
        super().__init__(**kwargs)
        self.float32_weight_gradients = bool(float32_weight_gradients)
        self.likelihood = likelihoods.check_likelihood(likelihood)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.conv = bool(conv)
        self.autoregressive = bool(autoregressive)
        if self.autoregressive and not self.conv:
            raise ValueError("An autoregressive ImageHead is a 1x1 convolution: pass conv=True.")
        self.num_params = likelihoods.num_params(likelihood)
        self.init = initializers.check_init(init)
        self.release_bias = bool(release_bias)

    def build(self, input_shape):
        channels = self.image_shape[-1]
        width = channels if self.conv else int(np.prod(self.image_shape))
        shape = (int(input_shape[-1]), self.num_params * width)  # a 1x1 conv's fan_in is its input channels
        self.kernel = self.add_weight(autocast=False, name="kernel", shape=shape,
                                      initializer=initializers.kernel(self.init, "conv" if self.conv else "dense"))
        self.bias = self.add_weight(autocast=False, name="bias", shape=(self.num_params * width,),
                                    initializer=initializers.bias(self.init, shape, self.release_bias))
        self._mask = (tf.constant(layers.pixelcnn_head_mask(int(input_shape[-1]), channels, self.num_params))
                      if self.autoregressive else None)

    def call(self, h):
        dtype = self.compute_dtype
        if self.conv:
            kernel = self.kernel if self._mask is None else self.kernel * self._mask
            out = tf.tensordot(tf.cast(h, dtype), tf.cast(kernel, dtype), 1)  # a 1x1 convolution
        else:
            out = layers.matmul(h, self.kernel, dtype, self.float32_weight_gradients)
        out = tf.cast(out + tf.cast(self.bias, dtype), tf.float32)
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
        # The head's weights as its matmul sees them (rounded to bfloat16 in a bfloat16 head), in float32.
        kernel, bias = (tf.cast(tf.cast(w, self.compute_dtype), tf.float32) for w in (self.kernel, self.bias))
        return likelihoods.bernoulli_sampler_context(flat, kernel, bias)

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
            kernel, bias = (tf.cast(w, self.compute_dtype) for w in (self.kernel, self.bias))
            return likelihoods.bernoulli_log_prob_dense(features, kernel, bias, context)
        shape = tf.concat([[num_samples], tf.shape(x)], 0)
        return likelihoods.log_prob(self.likelihood, [tf.reshape(p, shape) for p in self(h)], x)

    def get_config(self):
        return {**super().get_config(), "likelihood": self.likelihood, "image_shape": self.image_shape,
                "conv": self.conv, "autoregressive": self.autoregressive,
                "float32_weight_gradients": self.float32_weight_gradients, "init": self.init,
                "release_bias": self.release_bias}
