"""Observation models p(x | z) over images in [0, 1].

Three names, chosen with `--likelihood` or `build_model(..., likelihood=...)`:

* `bernoulli`: binary pixels, parameterised by logits (stable; the release clamps
  probabilities to [1e-5, 1 - 1e-5] instead).
* `discretized_logistic`: 256-bin discretised logistic exactly as the release computes it
  (docs/paper_details.md section 3): log(sigmoid((bin + 1/256 - mu) / s) - sigmoid((bin - mu) / s) + 1e-7).
  Its bin masses do not sum to 1 (no edge bins); it is what produced the published numbers.
* `discretized_logistic_normalized`: the edge-corrected variant: the first bin takes all
  mass below 1/256 and the last all mass above 255/256, so the 256 masses sum to exactly 1
  and log p(x) is a true log-probability. Computed stably in log space.

Every distribution here is pixel-wise (batch shape = the image shape); `distribution()`
wraps it in `tfd.Independent` so that the event shape is the image `[H, W, C]`.
"""
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

NUM_BINS = 256
LIKELIHOODS = ("bernoulli", "discretized_logistic", "discretized_logistic_normalized")
# Bounds of the gray-data heads in the release: mean = sigmoid clamped to half a bin from
# the edges, log-scale = hardtanh(-4.5, 0).
LOC_MIN, LOC_MAX = 1.0 / 512.0, 1.0 - 1.0 / 512.0
LOG_SCALE_MIN, LOG_SCALE_MAX = -4.5, 0.0


def check_likelihood(name):
    """Returns `name` if it is a known likelihood, else raises a ValueError naming the choices."""
    if name not in LIKELIHOODS:
        raise ValueError(f"Unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)} "
                         "('bernoulli' for binary images, a discretized logistic for gray ones).")
    return name


def num_params(name):
    """How many per-pixel parameter maps the decoder must output for this likelihood."""
    return 1 if check_likelihood(name) == "bernoulli" else 2


class DiscretizedLogistic(tfd.Distribution):
    """Pixel-wise logistic distribution discretised to `num_bins` bins on [0, 1].

    Values are bin centres (k + 0.5) / num_bins, k = 0..num_bins-1 (any x in bin k maps to it).

    Args:
      loc: float tensor, the logistic mean mu, any shape (this is the batch shape).
      log_scale: float tensor broadcastable with `loc`, log s.
      num_bins: number of bins (256 for 8-bit images).
      normalized: False gives the release's formula (no edge bins, + 1e-7 inside the log);
        True gives edge bins and exactly normalised masses.
    """

    def __init__(self, loc, log_scale, num_bins=NUM_BINS, normalized=False,
                 validate_args=False, allow_nan_stats=True, name="DiscretizedLogistic"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            dtype = next((tf.as_dtype(p.dtype) for p in (loc, log_scale) if hasattr(p, "dtype")), tf.float32)
            self._loc = tf.convert_to_tensor(loc, dtype=dtype, name="loc")
            self._log_scale = tf.convert_to_tensor(log_scale, dtype=dtype, name="log_scale")
            self._num_bins = int(num_bins)
            self._normalized = bool(normalized)
            super().__init__(dtype=dtype, reparameterization_type=tfd.NOT_REPARAMETERIZED,
                             validate_args=validate_args, allow_nan_stats=allow_nan_stats,
                             parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return dict(loc=tfp.util.ParameterProperties(),
                    log_scale=tfp.util.ParameterProperties())

    @property
    def loc(self):
        return self._loc

    @property
    def log_scale(self):
        return self._log_scale

    @property
    def num_bins(self):
        return self._num_bins

    @property
    def normalized(self):
        return self._normalized

    def _event_shape(self):
        return tf.TensorShape([])

    def _event_shape_tensor(self):
        return tf.constant([], dtype=tf.int32)

    def _bin_index(self, x):
        return tf.clip_by_value(tf.floor(x * self._num_bins), 0.0, self._num_bins - 1.0)

    def _log_prob(self, x):
        loc, log_scale = tf.convert_to_tensor(self._loc), tf.convert_to_tensor(self._log_scale)
        inv_scale = tf.exp(-log_scale)
        lower = self._bin_index(x) / self._num_bins
        a = (lower + 1.0 / self._num_bins - loc) * inv_scale  # upper edge, standardised
        b = (lower - loc) * inv_scale  # lower edge
        if not self._normalized:
            return tf.math.log(tf.sigmoid(a) - tf.sigmoid(b) + 1e-7)
        # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), all in log space.
        interior = (tf.math.log_sigmoid(a) + tf.math.log_sigmoid(-b)
                    + tf.math.log(-tf.math.expm1(b - a)))
        first = tf.math.log_sigmoid(a)  # mass of (-inf, 1/num_bins)
        last = tf.math.log_sigmoid(-b)  # mass of [1 - 1/num_bins, inf)
        k = self._bin_index(x)
        return tf.where(k <= 0.0, first, tf.where(k >= self._num_bins - 1.0, last, interior))

    def _sample_n(self, n, seed=None):
        loc, log_scale = tf.convert_to_tensor(self._loc), tf.convert_to_tensor(self._log_scale)
        shape = tf.concat([[n], tf.broadcast_dynamic_shape(tf.shape(loc), tf.shape(log_scale))], 0)
        tiny = 1e-5
        uniform = tf.random.stateless_uniform(
            shape, seed=tfp.random.sanitize_seed(seed), minval=tiny, maxval=1.0 - tiny, dtype=self.dtype)
        x = loc + tf.exp(log_scale) * (tf.math.log(uniform) - tf.math.log1p(-uniform))
        return (self._bin_index(x) + 0.5) / self._num_bins

    def _mean(self):
        # The mean of the underlying continuous logistic; what the release displays.
        return tf.broadcast_to(self._loc, tf.broadcast_dynamic_shape(
            tf.shape(self._loc), tf.shape(self._log_scale)))


def distribution(name, params, event_ndims=3):
    """The observation model for decoder outputs `params` as a distribution over images.

    Args:
      name: one of `LIKELIHOODS`.
      params: list of `num_params(name)` tensors of shape `[..., H, W, C]`: the logits for
        'bernoulli'; (loc in [1/512, 1 - 1/512], log_scale in [-4.5, 0]) for the logistic ones.
      event_ndims: how many trailing dimensions form one observation (3 for images).

    Returns:
      A `tfd.Independent` with event shape `[H, W, C]` and batch shape `[...]`.
    """
    check_likelihood(name)
    if len(params) != num_params(name):
        raise ValueError(f"Likelihood {name!r} takes {num_params(name)} parameter maps, got {len(params)}.")
    if name == "bernoulli":
        base = tfd.Bernoulli(logits=params[0], dtype=params[0].dtype)
    else:
        base = DiscretizedLogistic(params[0], params[1],
                                   normalized=(name == "discretized_logistic_normalized"))
    return tfd.Independent(base, reinterpreted_batch_ndims=event_ndims)


def _group_size(n, limit=32):
    """The largest divisor of n that is <= limit."""
    return max(g for g in range(1, min(n, limit) + 1) if n % g == 0)


@tf.custom_gradient
def _bernoulli_even_sum(magnitude):
    """-sum_i log(2 cosh(l_i / 2)) = sum_i [log sigmoid(|l_i|) - |l_i| / 2] from m = |l| `[..., P]`.

    The part of x l - softplus(l) that does not depend on x; it is even in l, so |l| is all
    it needs. sigmoid(m) lies in [1/2, 1], so a product of up to 126 of them cannot underflow
    float32: one log per group of pixels replaces a softplus per pixel. Gradient with respect
    to m: 1/2 - sigmoid(m) (times sign(l) through |l|: the usual 1/2 - sigmoid(l)).
    """
    size = magnitude.shape[-1]
    group = _group_size(size)
    gates = tf.sigmoid(magnitude)
    grouped = tf.reshape(gates, tf.concat([tf.shape(gates)[:-1], [size // group, group]], 0))
    value = tf.reduce_sum(tf.math.log(tf.reduce_prod(grouped, -1)), -1) - 0.5 * tf.reduce_sum(magnitude, -1)

    def grad(upstream):
        return upstream[..., None] * (0.5 - gates)

    return value, grad


def _bernoulli_log_prob_sum(logits, x):
    """sum_i [x_i l_i - softplus(l_i)] over the last axis of `[..., P]` logits; x broadcasts.

    Per pixel, x l - softplus(l) = (x - 1/2) l - log(2 cosh(l / 2)): a linear term, and an even
    one summed from |l| with one log per group of pixels (`_bernoulli_even_sum`; no op needs
    exp of a positive number, and it is about twice as fast as a softplus per pixel:
    docs/benchmarks.md). Its gradient, through |l|, is x - sigmoid(l).
    """
    return tf.reduce_sum((x - 0.5) * logits, -1) + _bernoulli_even_sum(tf.abs(logits))


def bernoulli_sampler_context(x, kernel, bias):
    """What `bernoulli_log_prob_dense` needs from the images, once per batch.

    Args:
      x: binary images flattened to `[B, P]`.
      kernel, bias: the dense head's `[F, P]` and `[P]` (logits = features @ kernel + bias).

    Returns:
      (`[B, F]` kernel @ (x - 1/2), `[B]` bias . (x - 1/2)).
    """
    centred = tf.cast(x, kernel.dtype) - 0.5
    return tf.matmul(centred, kernel, transpose_b=True), tf.reduce_sum(centred * bias, -1)


def bernoulli_log_prob_dense(features, kernel, bias, context):
    """sum_i log Bernoulli(x_i | l_i) with logits l = features @ kernel + bias, per sample.

    Many samples share an image in the importance sampler, so the per-pixel work is cut:
    x l - softplus(l) = (x - 1/2) l - log(2 cosh(l / 2)). Summed over pixels, the first term
    is linear in the features, features . (kernel (x - 1/2)) + bias . (x - 1/2), with one
    vector per image (`bernoulli_sampler_context`); the second is even in l, so only |l| is
    needed, and |l| = leaky_relu(l, alpha=-1) is an activation oneDNN fuses into the matmul.
    What is left per pixel is one sigmoid and a grouped product (`_bernoulli_even_sum`).

    Args:
      features: `[S, B, F]`, the head's input for S samples of each of B images (float32 or
        bfloat16, the dtype of kernel and bias).
      kernel, bias: `[F, P]`, `[P]`.
      context: `bernoulli_sampler_context(x, kernel, bias)` for the B images.

    Returns:
      `[S, B]`.
    """
    direction, offset = context
    linear = tf.reduce_sum(tf.cast(features, direction.dtype) * direction, -1) + offset
    # A 2-D matmul, so that the bias and |l| fuse into it. With bfloat16 features and weights
    # the matmul is bfloat16 and |l| is summed in float32.
    logits = tf.nn.bias_add(tf.matmul(tf.reshape(features, [-1, features.shape[-1]]), kernel), bias)
    magnitude = tf.nn.leaky_relu(logits, alpha=-1.0)  # leaky_relu(l, -1) = |l|
    if magnitude.dtype.size < 4:  # half precision: summed in float32 (float64 stays float64)
        magnitude = tf.cast(magnitude, tf.float32)
    even = _bernoulli_even_sum(magnitude)
    return linear + tf.cast(tf.reshape(even, tf.shape(features)[:-1]), linear.dtype)


def log_prob(name, params, x, event_ndims=3):
    """`distribution(name, params).log_prob(x)`, with Bernoulli written out for speed.

    TFP's Bernoulli goes through a general cross-entropy that costs as much as the decoder in
    the importance sampler; x * l - softplus(l) is the same quantity for x in {0, 1}, summed
    here with one log per group of pixels (`_bernoulli_log_prob_sum`).
    x broadcasts into the parameters' shape (`[B, H, W, C]` against `[S, B, H, W, C]`).
    """
    if check_likelihood(name) != "bernoulli":
        return distribution(name, params, event_ndims).log_prob(x)
    logits = tf.convert_to_tensor(params[0])
    x = tf.cast(x, logits.dtype)
    if x.shape.rank > logits.shape.rank:  # keep the gradient's shape that of the logits
        logits = tf.broadcast_to(logits, tf.broadcast_dynamic_shape(tf.shape(logits), tf.shape(x)))
    pixels = int(np.prod(logits.shape[-event_ndims:]))
    flat = lambda t: tf.reshape(t, tf.concat([tf.shape(t)[:-event_ndims], [pixels]], 0))  # noqa: E731
    return _bernoulli_log_prob_sum(flat(logits), flat(x))


def mean_image(name, params):
    """The image shown for decoder outputs `params`: Bernoulli probabilities or the logistic mean."""
    return tf.sigmoid(params[0]) if check_likelihood(name) == "bernoulli" else params[0]
