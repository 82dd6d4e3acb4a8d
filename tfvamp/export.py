"""SavedModel export: a trained model served by TensorFlow alone.

`export_saved_model(model, export_dir, config)` writes a SavedModel whose graph functions are
self-contained: loading it needs `tensorflow` only (not tfvamp, not TFP, not Keras' classes):

    served = tf.saved_model.load(export_dir)
    images = served.sample(num_samples=16, seed=3)          # [16, H, W, C] float32 in [0, 1]
    ll = served.log_likelihood(images, num_samples=5000)    # [16] float64, nats
    codes = served.encode(images)                           # {'z_mean', 'z_logvar'} or z1/z2
    recon = served.reconstruct(images)                      # [16, H, W, C]
    u = served.pseudo_inputs()                              # [K, H, W, C] (VampPrior priors only)
    info = served.metadata()                                # model, prior, likelihood, image_shape, config

The same functions are exported as named serving signatures (`served.signatures[name]`, for
TF Serving and `saved_model_cli`), taking keyword arguments and returning dicts:

| signature        | inputs                                   | outputs                                   |
|------------------|------------------------------------------|-------------------------------------------|
| `sample`         | `num_samples` int64 [], `seed` int32 []  | `images` float32 [N, H, W, C]             |
| `reconstruct`    | `images` float32 [B, H, W, C]            | `images` float32 [B, H, W, C]             |
| `encode`         | `images`                                 | `{layer}_mean`, `{layer}_logvar` [B, D]   |
| `log_likelihood` | `images`, `num_samples` int64 []         | `log_likelihood` float64 [B]              |
| `pseudo_inputs`  | (none; VampPrior priors only)            | `pseudo_inputs` float32 [K, H, W, C]      |
| `metadata`       | (none)                                   | strings and `image_shape` int32 [3]       |

Semantics match the library exactly: `sample(n, seed)` returns the same images as
`model.sample(n, seed)` (stateless ops: the same seed always gives the same images; PixelHVAE
samples pixel by pixel in a `tf.while_loop` inside the graph); `reconstruct` decodes posterior
means like `model.reconstruct`; `log_likelihood` is `model.log_likelihood` (importance
sampling, prior computed once per call, chunked, float64 logsumexp) with the library's default
chunk size.

Inputs are validated inside the graph: images must be rank 4 with the model's `[H, W, C]` and
values in [0, 1] (NaN fails too); `num_samples` must lie in [1, cap], checked as int64 before
any cast, so that no request can exhaust memory or run without end: at most `max_samples`
images per `sample` call (default 4096) and `max_importance_samples` per `log_likelihood` call
(default 100000), fixed at export time (`--export_max_samples`, `--export_max_importance_samples`)
and shown by `metadata()`. A violation raises `tf.errors.InvalidArgumentError` at once, with a
message that says what was expected and what was given.

The export is atomic: the SavedModel is written to a temporary sibling folder and renamed into
place, so `export_dir` holds either the previous export or the complete new one, never a
half-written folder (`is_complete` tells).
The dtype is fixed by the signatures (float32 images, int32 counts): NumPy arrays and Python
lists are converted, a tensor of another dtype is refused by TensorFlow with a `TypeError`
("Can not cast TensorSpec(... dtype=tf.float64 ...) to TensorSpec(... dtype=tf.float32 ...)").
"""
import glob
import json
import os
import shutil

import tensorflow as tf

from tfvamp import checkpointing
from tfvamp import estimator
from tfvamp import pretrained
from tfvamp import priors

CONFIG_FILE = "tfvamp_config.json"  # written to <export_dir>/assets.extra/
MAX_SAMPLES = 4096
MAX_IMPORTANCE_SAMPLES = 100_000


def _check_images(images, image_shape):
    """In-graph validation of an image batch; returns it with static shape `[None, H, W, C]`."""
    expected = ", ".join(str(d) for d in image_shape)
    # Branch-free, so that no comparison of mismatched shapes can fail before the assert:
    # pad the shape vector with -1 to length 5 and compare its entries 1..3 with [H, W, C].
    shape = tf.shape(images)
    padded = tf.concat([shape, tf.fill([5], -1)], 0)
    shape_ok = tf.logical_and(tf.equal(tf.size(shape), 4),
                              tf.reduce_all(tf.equal(padded[1:4], tf.constant(image_shape, tf.int32))))
    check_shape = tf.debugging.Assert(
        shape_ok, [f"images must be a float32 batch of shape [batch, {expected}] with values in [0, 1]; "
                   "got shape", tf.shape(images)], name="check_image_shape")
    with tf.control_dependencies([check_shape]):
        images = tf.identity(images)
    in_range = tf.reduce_all(tf.logical_and(images >= 0.0, images <= 1.0))  # False on NaN
    check_range = tf.debugging.Assert(
        in_range, ["images must have values in [0, 1] (pixel intensities; divide 8-bit images by 255); "
                   "got min", tf.reduce_min(images), "max", tf.reduce_max(images)],
        name="check_image_range")
    with tf.control_dependencies([check_range]):
        images = tf.identity(images)
    return tf.ensure_shape(images, [None] + list(image_shape))


def _check_count(value, name, cap):
    """In-graph check that the int64 `value` lies in [1, cap]; returns it as int32."""
    ok = tf.logical_and(value >= 1, value <= cap)
    check = tf.debugging.Assert(ok, [f"{name} must be between 1 and {cap} (this export's limit, set when "
                                     "it was exported); got", value], name=f"check_{name}")
    with tf.control_dependencies([check]):
        return tf.cast(tf.identity(value), tf.int32)


class ServedModel(tf.Module):
    """The exported object: variables plus graph functions closing over the model.

    The Keras model is held outside the tracked attributes (in a closure), so that the
    SavedModel contains only its variables and the traced graphs, never tfvamp's classes.
    """

    def __init__(self, model, config=None, max_samples=MAX_SAMPLES, max_importance_samples=MAX_IMPORTANCE_SAMPLES):
        super().__init__(name="tfvamp")
        image_shape = tuple(int(d) for d in model.image_shape)
        max_samples, max_importance_samples = _cap(max_samples), _cap(max_importance_samples)
        # The library's default chunking, as rows (sample x image pairs) per chunk.
        rows_per_chunk = estimator.rows_per_chunk(model)
        image_spec = tf.TensorSpec(None, tf.float32, name="images")
        count_spec = tf.TensorSpec([], tf.int64, name="num_samples")
        seed_spec = tf.TensorSpec([], tf.int32, name="seed")

        # Every variable the functions read is tracked here, and only here.
        self.model_variables = list(model.variables)

        @tf.function(input_signature=[count_spec, seed_spec], autograph=False)
        def sample(num_samples, seed):
            """`num_samples` images from the model; the same seed gives the same images."""
            return model.sample(_check_count(num_samples, "num_samples", max_samples), seed)

        @tf.function(input_signature=[image_spec], autograph=False)
        def reconstruct(images):
            """Decoded posterior means (as `model.reconstruct`)."""
            return model.reconstruct(_check_images(images, image_shape))

        @tf.function(input_signature=[image_spec], autograph=False)
        def encode(images):
            """Posterior means and log-variances of every latent layer."""
            return model.encode(_check_images(images, image_shape))

        @tf.function(input_signature=[image_spec, count_spec], autograph=False)
        def log_likelihood(images, num_samples):
            """Importance-sampled log p(x) in nats, float64 `[B]`."""
            images = _check_images(images, image_shape)
            num_samples = _check_count(num_samples, "num_samples", max_importance_samples)
            batch = tf.maximum(tf.shape(images)[0], 1)
            chunk = tf.clip_by_value(rows_per_chunk // batch, 1, num_samples)
            seed = tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int32)
            return estimator.log_likelihood_graph(model, images, num_samples, chunk, seed)

        config_json = json.dumps(checkpointing.to_jsonable(config or model.get_config()), sort_keys=True)
        names = {"model": model.model_name, "prior": model.prior_name,
                 "likelihood": model.likelihood_name, "config": config_json}
        limits = {"max_samples": max_samples, "max_importance_samples": max_importance_samples}
        latent_sizes = dict(model.latent_sizes)

        @tf.function(input_signature=[], autograph=False)
        def metadata():
            """What the exported model is: strings, `image_shape` and latent sizes."""
            out = {k: tf.constant(v) for k, v in names.items()}
            out["image_shape"] = tf.constant(image_shape, tf.int32)
            out.update({f"{k}_size": tf.constant(v, tf.int32) for k, v in latent_sizes.items()})
            out.update({k: tf.constant(v, tf.int64) for k, v in limits.items()})
            return out

        self.sample, self.reconstruct, self.encode = sample, reconstruct, encode
        self.log_likelihood, self.metadata = log_likelihood, metadata
        if priors.has_pseudo_inputs(model.prior_name):
            @tf.function(input_signature=[], autograph=False)
            def pseudo_inputs():
                """The pseudo-inputs as the encoder sees them, `[K, H, W, C]` in [0, 1]."""
                return model.prior_layer.pseudo_inputs()

            self.pseudo_inputs = pseudo_inputs

    def serving_signatures(self):
        """Named signatures: each a concrete function with named inputs and a dict of outputs."""
        signatures = {
            "sample": _named(self.sample, "images"),
            "reconstruct": _named(self.reconstruct, "images"),
            "encode": self.encode.get_concrete_function(),  # already a dict of named tensors
            "log_likelihood": _named(self.log_likelihood, "log_likelihood"),
            "metadata": self.metadata.get_concrete_function(),
        }
        if hasattr(self, "pseudo_inputs"):
            signatures["pseudo_inputs"] = _named(self.pseudo_inputs, "pseudo_inputs")
        signatures["serving_default"] = signatures["sample"]
        return signatures


def _named(function, output_name):
    """A concrete function returning `{output_name: function(*args)}`, with `function`'s inputs."""
    specs = list(function.input_signature)

    def wrapper(*args):
        return {output_name: function(*args)}
    return tf.function(wrapper, input_signature=specs, autograph=False).get_concrete_function()


def _cap(value):
    value = int(value)
    if not 1 <= value < 2 ** 31:
        raise ValueError(f"An export's sample limit must be in [1, 2^31), got {value}.")
    return value


def is_complete(export_dir):
    """True when `export_dir` holds a whole export (graph, variables and tfvamp's config)."""
    export_dir = os.fspath(export_dir)
    return all(os.path.exists(os.path.join(export_dir, *p)) for p in (
        ("saved_model.pb",), ("variables", "variables.index"), ("assets.extra", CONFIG_FILE)))


def check_writable(export_dir):
    """Raises OSError (naming the folder and the fix) unless `export_dir` could be written:
    checked before training, so that a bad --export_dir does not fail after hours."""
    parent = os.path.dirname(os.path.abspath(os.fspath(export_dir)))
    checkpointing.check_writable(parent, f"the SavedModel {export_dir}", "Choose another --export_dir, or --noexport.")


def export_saved_model(model, export_dir, config=None, max_samples=MAX_SAMPLES,
                       max_importance_samples=MAX_IMPORTANCE_SAMPLES):
    """Writes `model` as a SavedModel that TensorFlow serves without tfvamp.

    Written to a temporary sibling folder and renamed into place (module docstring).

    Args:
      model: a tfvamp model (any family, prior and likelihood).
      export_dir: the SavedModel directory to write (an existing export is replaced).
      config: optional run config (a JSON-able dict, e.g. the run's config.json) recorded in
        the export's `metadata()['config']` and in `<export_dir>/assets.extra/tfvamp_config.json`;
        default: `model.get_config()`.
      max_samples: the most images one `sample` call may ask for.
      max_importance_samples: the most importance samples one `log_likelihood` call may ask for.

    Returns:
      `export_dir`.
    """
    export_dir = os.fspath(export_dir).rstrip(os.sep)
    served = ServedModel(model, config, max_samples, max_importance_samples)
    for stale in glob.glob(glob.escape(export_dir) + ".incomplete-*"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    temporary = f"{export_dir}.incomplete-{os.getpid()}"
    tf.saved_model.save(served, temporary, signatures=served.serving_signatures())
    checkpointing.write_json(os.path.join(temporary, "assets.extra", CONFIG_FILE), config or model.get_config())
    # Each exported variable's name, for starting another model from this one (tfvamp.pretrained).
    checkpointing.write_json(os.path.join(temporary, "assets.extra", pretrained.VARIABLES_FILE),
                             pretrained.variable_records(model))
    previous = f"{export_dir}.previous-{os.getpid()}"
    if os.path.exists(export_dir):
        os.replace(export_dir, previous)
    os.replace(temporary, export_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return export_dir
