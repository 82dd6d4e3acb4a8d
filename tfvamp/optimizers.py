"""AdamNormGrad: the optimiser of the paper's release (docs/paper_details.md section 5).

Each parameter tensor's gradient is divided by its own L2 norm (+ 1e-7) before a plain Adam
step with beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8:

    g_hat = g / (||g||_2 + 1e-7)                   # per tensor, the Frobenius norm
    m = beta1 m + (1 - beta1) g_hat
    v = beta2 v + (1 - beta2) g_hat^2
    w -= lr sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + epsilon)

This is not gradient clipping (`clipnorm` rescales only large gradients; this rescales every
gradient to unit norm).

Under a `tf.distribute` strategy Keras sums the replicas' gradients first and then calls
`update_step` once per variable, so the normalisation here sees the *global* gradient: a
mirrored run normalises exactly what a single device would (normalising per replica and then
summing would not be the same). Create the optimizer inside `strategy.scope()`.
"""
import keras
import tensorflow as tf

NORM_EPSILON = 1e-7
OPTIMIZERS = ("adam_norm_grad", "adam")


@keras.saving.register_keras_serializable(package="tfvamp")
class AdamNormGrad(keras.optimizers.Adam):
    """Adam on per-tensor L2-normalised gradients.

    Args:
      learning_rate: float, a schedule, or a callable (Keras semantics).
      beta_1, beta_2, epsilon: Adam's constants; the release's defaults 0.9, 0.999, 1e-8.
      norm_epsilon: added to each gradient's norm before dividing (1e-7 in the release).
      **kwargs: passed to `keras.optimizers.Adam` (name, ...). Gradient clipping options are
        refused: they would act before the normalisation and change nothing but the norm.
    """

    def __init__(self, learning_rate=5e-4, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 norm_epsilon=NORM_EPSILON, name="adam_norm_grad", **kwargs):
        for option in ("clipnorm", "clipvalue", "global_clipnorm"):
            if kwargs.get(option) is not None:
                raise ValueError(f"AdamNormGrad does not take {option}: every gradient is already "
                                 "divided by its norm.")
        if kwargs.get("amsgrad"):
            raise ValueError("AdamNormGrad is plain Adam on normalised gradients (amsgrad=False).")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=False, name=name, **kwargs)
        self.norm_epsilon = float(norm_epsilon)

    @staticmethod
    def normalize(gradient, norm_epsilon=NORM_EPSILON):
        """`gradient / (||gradient||_2 + norm_epsilon)`, the norm over the whole tensor."""
        gradient = tf.convert_to_tensor(gradient)  # IndexedSlices -> dense: the norm is global
        norm = tf.sqrt(2.0 * tf.nn.l2_loss(gradient))  # one pass, no squared copy
        return gradient / (norm + tf.cast(norm_epsilon, gradient.dtype))

    def apply(self, grads, trainable_variables=None):
        # The step's scalars (beta powers, casts) are built once per apply and shared by every
        # variable's update, not rebuilt per variable: ~100 fewer small ops per HVAE step.
        self._step_scalars = {}
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._step_scalars = {}

    def _scalars(self, learning_rate, dtype):
        cache = getattr(self, "_step_scalars", None)
        if cache is None:
            cache = {}  # update_step called outside apply: nothing to share
        key = dtype.name
        if key not in cache:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            cache[key] = dict(beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                              lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                              epsilon=tf.cast(self.epsilon, dtype))
        return cache[key]

    def update_step(self, gradient, variable, learning_rate):
        gradient = self.normalize(tf.cast(gradient, variable.dtype), self.norm_epsilon)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        # One fused kernel per variable instead of Keras's dozen element-wise ops: the same
        # update (lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + epsilon)), and a
        # kernel on GPUs too (docs/benchmarks.md has the timings).
        # `.handle` is the variable on this update's device under a tf.distribute strategy.
        tf.raw_ops.ResourceApplyAdam(var=_handle(variable), m=_handle(m), v=_handle(v), grad=gradient,
                                     **self._scalars(learning_rate, tf.as_dtype(variable.dtype)))

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        config["norm_epsilon"] = self.norm_epsilon
        return config


def _handle(variable):
    """The resource handle of a Keras variable (its backing `tf.Variable`)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


def make_optimizer(name="adam_norm_grad", learning_rate=5e-4):
    """The training optimizer by name: 'adam_norm_grad' (the paper's) or 'adam' (plain Adam,
    same constants, for comparison)."""
    if name == "adam_norm_grad":
        return AdamNormGrad(learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    raise ValueError(f"Unknown optimizer {name!r}; choose 'adam_norm_grad' or 'adam'.")
