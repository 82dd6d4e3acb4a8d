"""Samples from an exported model with TensorFlow alone (tfvamp is not imported).

    python scripts/sample.py --saved_model saved_models/mnist_hvae_vamp --num_samples 64 \
        --output samples.png [--seed 0] [--output_npy samples.npy]

Loads the SavedModel written by scripts/export.py, calls its `sample(num_samples, seed)`
function (the same seed always gives the same images) and writes a PNG grid of the images,
and optionally the float32 `[N, H, W, C]` array in [0, 1] as a .npy file.
"""
import math
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "SavedModel directory written by scripts/export.py.")
flags.DEFINE_integer("num_samples", 64, "Number of images.", lower_bound=1)
flags.DEFINE_string("output", None, "PNG file for the grid of samples.")
flags.DEFINE_integer("seed", 0, "Sampling seed (int32); the same seed gives the same images.")
flags.DEFINE_integer("num_columns", 0, "Columns of the grid (0 = a square grid).", lower_bound=0)
flags.DEFINE_string("output_npy", None, "Optional .npy file for the images as float32 [N, H, W, C].")
flags.mark_flags_as_required(["saved_model", "output"])


def image_grid(images, num_columns=0, padding=1):
    """Tiles float images `[N, H, W, C]` in [0, 1] into one uint8 `[GH, GW, C]` grid (white gaps)."""
    import numpy as np

    n, h, w, c = images.shape
    cols = num_columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.float32)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[padding + r * (h + padding):padding + r * (h + padding) + h,
             padding + k * (w + padding):padding + k * (w + padding) + w] = images[i]
    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    served = tf.saved_model.load(FLAGS.saved_model)
    if not hasattr(served, "sample"):
        raise SystemExit(f"{FLAGS.saved_model} has no sample() function: was it written by scripts/export.py?")
    images = served.sample(num_samples=tf.constant(FLAGS.num_samples, tf.int64),
                           seed=tf.constant(FLAGS.seed, tf.int32)).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    tf.io.write_file(FLAGS.output, tf.io.encode_png(image_grid(images, FLAGS.num_columns)))
    print(f"{len(images)} samples of shape {list(images.shape[1:])} -> {FLAGS.output}")
    if FLAGS.output_npy:
        np.save(FLAGS.output_npy, images)
        print(f"array -> {FLAGS.output_npy}")


if __name__ == "__main__":
    app.run(main)
