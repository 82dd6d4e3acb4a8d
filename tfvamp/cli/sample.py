"""Samples from an exported model with TensorFlow alone: `tfvamp-sample`, `python scripts/sample.py`.

    tfvamp-sample --saved_model saved_models/mnist_hvae_vamp --num_samples 64 \
        --output samples.png [--seed 0] [--output_npy samples.npy]

Loads the SavedModel written by scripts/export.py, calls its `sample(num_samples, seed)`
function (the same seed always gives the same images) and writes a PNG grid of the images,
and optionally the float32 `[N, H, W, C]` array in [0, 1] as a .npy file.

This module imports nothing of tfvamp: `python scripts/sample.py` loads it from its file (and
tfvamp/console.py beside it) without the tfvamp package, which shows that an export is served
by TensorFlow alone. (The console script `tfvamp-sample` imports it as `tfvamp.cli.sample`.)
"""
import importlib.util
import math
import os
import sys

from absl import app
from absl import flags


def _console():
    """tfvamp/console.py loaded on its own (not the tfvamp package, which this module never imports)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "console.py")
    spec = importlib.util.spec_from_file_location("tfvamp_console", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


console = _console()
console.quiet()  # before TensorFlow starts

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "SavedModel directory written by scripts/export.py.")
flags.DEFINE_integer("num_samples", 64, "Number of images.", lower_bound=1)
flags.DEFINE_string("output", None, "PNG file for the grid of samples (default: <saved_model>_samples.png, "
                    "beside the SavedModel).")
flags.DEFINE_integer("seed", 0, "Sampling seed (int32); the same seed gives the same images.")
flags.DEFINE_integer("num_columns", 0, "Columns of the grid (0 = a square grid).", lower_bound=0)
flags.DEFINE_string("output_npy", None, "Optional .npy file for the images as float32 [N, H, W, C].")
flags.mark_flags_as_required(["saved_model"])


def image_grid(images, num_columns=0, padding=1):
    """Tiles float images `[N, H, W, C]` in [0, 1] into one uint8 `[GH, GW, C]` grid (white gaps)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    n, h, w, c = images.shape
    cols = num_columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.float32)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[padding + r * (h + padding):padding + r * (h + padding) + h,
             padding + k * (w + padding):padding + k * (w + padding) + w] = images[i]
    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def _main(argv):
    del argv
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if not os.path.exists(os.path.join(FLAGS.saved_model, "saved_model.pb")):
        return console.fail(f"{FLAGS.saved_model} holds no SavedModel (no saved_model.pb): give the folder "
                            "written by scripts/export.py or scripts/train.py.")
    served = tf.saved_model.load(FLAGS.saved_model)
    if not hasattr(served, "sample"):
        return console.fail(f"{FLAGS.saved_model} has no sample() function: was it written by scripts/export.py?")
    try:
        images = served.sample(num_samples=tf.constant(FLAGS.num_samples, tf.int64),
                               seed=tf.constant(FLAGS.seed, tf.int32)).numpy()
    except tf.errors.InvalidArgumentError as e:
        return console.fail(e.message.split("\n")[0])
    output = FLAGS.output or os.path.normpath(FLAGS.saved_model) + "_samples.png"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tf.io.write_file(output, tf.io.encode_png(image_grid(images, FLAGS.num_columns)))
    print(f"{len(images)} samples of shape {list(images.shape[1:])} -> {output}")
    if FLAGS.output_npy:
        np.save(FLAGS.output_npy, images)
        print(f"array -> {FLAGS.output_npy}")
    return None


def main():
    # As tfvamp.cli.run, without importing tfvamp: --help lists this module's flags.
    for flag in FLAGS.get_key_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    sys.modules["__main__"].__doc__ = __doc__
    app.run(_main)


if __name__ == "__main__":
    main()
