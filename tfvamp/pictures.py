"""Image grids for PNG files and TensorBoard.

`image_grid` tiles `[N, H, W, C]` images in [0, 1] into one `[rows*(H+pad), cols*(W+pad), C]`
uint8 picture; `save_png` writes it; `tensorboard_image` logs it.
"""
import math
import os

import numpy as np
import tensorflow as tf


def image_grid(images, num_columns=None, padding=1, pad_value=1.0):
    """Tiles images `[N, H, W, C]` (floats in [0, 1]) into one uint8 grid `[GH, GW, C]`."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"image_grid takes images [N, H, W, C], got shape {images.shape}.")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("image_grid got no images.")
    cols = int(num_columns or math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), pad_value, np.float32)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[top:top + h, left:left + w] = images[i]
    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(path, grid):
    """Writes a uint8 grid `[GH, GW, C]` (C = 1 or 3) as a PNG file; returns the path."""
    grid = np.asarray(grid)
    if grid.dtype != np.uint8:
        grid = image_grid(grid) if grid.ndim == 4 else np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(grid))
    return path


def tensorboard_image(name, images, step, num_columns=None):
    """Logs images `[N, H, W, C]` in [0, 1] as one grid to the default summary writer."""
    grid = image_grid(images, num_columns)
    return tf.summary.image(name, grid[None].astype(np.float32) / 255.0, step=step)
