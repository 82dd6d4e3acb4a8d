"""Image grids for PNG files and TensorBoard.

`image_grid` tiles `[N, H, W, C]` images in [0, 1] into one uint8 picture, each image enlarged
`scale` times (nearest neighbour: pixels stay sharp); `save_png` writes it; `tensorboard_image`
logs it; `sprite` is the square atlas TensorBoard's projector shows beside each point.
`default_scale(height)` makes a tile at least `MIN_TILE_HEIGHT` pixels high.
"""
import math
import os

import numpy as np
import tensorflow as tf

MIN_TILE_HEIGHT = 56


def default_scale(height):
    """The smallest integer enlargement that makes a tile of `height` pixels at least
    `MIN_TILE_HEIGHT` high (2 for 28-pixel images)."""
    return max(1, math.ceil(MIN_TILE_HEIGHT / int(height)))


def enlarge(images, scale):
    """`[N, H, W, C]` -> `[N, scale H, scale W, C]`, each pixel repeated (nearest neighbour)."""
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}.")
    images = np.asarray(images)
    return images if scale == 1 else images.repeat(scale, axis=1).repeat(scale, axis=2)


def image_grid(images, num_columns=None, padding=1, pad_value=1.0, scale=1):
    """Tiles images `[N, H, W, C]` (floats in [0, 1]) into one uint8 grid `[GH, GW, C]`, each
    enlarged `scale` times."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"image_grid takes images [N, H, W, C], got shape {images.shape}.")
    images = enlarge(images, scale)
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


def interleave(originals, reconstructions):
    """`[o0, r0, o1, r1, ...]` from two `[N, H, W, C]` arrays: each image beside its reconstruction."""
    stacked = np.stack([np.asarray(originals), np.asarray(reconstructions)], 1)
    return stacked.reshape((-1,) + stacked.shape[2:])


def save_png(path, grid):
    """Writes a uint8 grid `[GH, GW, C]` (C = 1 or 3) as a PNG file; returns the path."""
    grid = np.asarray(grid)
    if grid.dtype != np.uint8:
        grid = image_grid(grid) if grid.ndim == 4 else np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(grid))
    return path


def tensorboard_image(name, images, step, num_columns=None, scale=None):
    """Logs images `[N, H, W, C]` in [0, 1] as one grid to the default summary writer
    (`scale` None: `default_scale`)."""
    grid = image_grid(images, num_columns, scale=scale or default_scale(np.shape(images)[1]))
    return tf.summary.image(name, grid[None].astype(np.float32) / 255.0, step=step)


def sprite(images):
    """The projector's sprite: images `[N, H, W, C]` in [0, 1] tiled row-major into a square
    uint8 atlas without padding (TensorBoard finds image i at row i // n, column i % n,
    n = ceil(sqrt(N))). Grey images are written as RGB."""
    images = np.asarray(images, np.float32)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n = int(math.ceil(math.sqrt(len(images))))
    blank = np.ones((n * n - len(images),) + images.shape[1:], np.float32)  # a square atlas, as TensorBoard draws it
    return image_grid(np.concatenate([images, blank]), num_columns=n, padding=0, pad_value=1.0)


def histogram_image(values, bins=50, width=480, height=320, title=None):
    """A histogram of `values` drawn as an RGB uint8 picture `[height, width, 3]`.

    Grey bars on white, the mean as a red line; the x-axis ends, the mean and the tallest
    bar's count are written as text (Pillow's built-in font). For per-example
    log-likelihoods, where matplotlib is not a dependency.
    """
    from PIL import Image, ImageDraw

    values = np.asarray(values, np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("histogram_image got no finite values.")
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(finite, bins=int(bins), range=(lo, hi))
    left, right, top, bottom = 10, width - 10, 34, height - 24
    picture = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    span = right - left
    tallest = max(int(counts.max()), 1)
    for i, c in enumerate(counts):
        x0 = left + span * i / len(counts)
        x1 = left + span * (i + 1) / len(counts) - 1
        y0 = bottom - (bottom - top) * c / tallest
        if c > 0:
            draw.rectangle([x0, y0, max(x0, x1), bottom], fill=(110, 110, 110))
    draw.line([left, bottom, right, bottom], fill=(0, 0, 0))
    mean = float(finite.mean())
    mx = left + span * (mean - lo) / (hi - lo)
    draw.line([mx, top, mx, bottom], fill=(220, 30, 30), width=2)
    draw.text((left, bottom + 6), f"{lo:.2f}", fill=(0, 0, 0))
    label = f"{hi:.2f}"
    draw.text((right - 6 * len(label), bottom + 6), label, fill=(0, 0, 0))
    draw.text((max(left, min(mx - 40, right - 100)), top - 12), f"mean {mean:.2f}", fill=(220, 30, 30))
    heading = (title + "  " if title else "") + f"n={finite.size}, max count {tallest}"
    draw.text((left, 4), heading, fill=(0, 0, 0))
    return np.asarray(picture, dtype=np.uint8)


def line_chart(series, title="", marker=None, width=420, height=260):
    """A line chart of `series` (x values, y values) as an RGB uint8 picture `[height, width, 3]`:
    the y axis spans the minimum to the median (a loss curve's first epochs would flatten the
    part that matters; they are clipped at the top), the ends of both axes written as text,
    `marker` (an x value) as a red line.
    For curves in the docs, where matplotlib is not a dependency."""
    from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

    x, y = np.asarray(series[0], np.float64), np.asarray(series[1], np.float64)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise ValueError("line_chart needs at least two finite points.")
    low, high = float(y.min()), float(np.median(y))
    high = high if high > low else low + 1.0
    left, right, top, bottom = 50, width - 10, 24, height - 22
    picture = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    px = left + (right - left) * (x - x.min()) / max(x.max() - x.min(), 1e-12)
    py = bottom - (bottom - top) * (np.clip(y, low, high) - low) / (high - low)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.line(list(zip(px.tolist(), py.tolist())), fill=(40, 80, 200), width=1)
    if marker is not None:
        mx = left + (right - left) * (float(marker) - x.min()) / max(x.max() - x.min(), 1e-12)
        draw.line([mx, top, mx, bottom], fill=(220, 30, 30), width=1)
    draw.text((4, top - 2), f"{high:.1f}", fill=(0, 0, 0))
    draw.text((4, bottom - 10), f"{low:.1f}", fill=(0, 0, 0))
    draw.text((left, bottom + 4), f"{x.min():.0f}", fill=(0, 0, 0))
    draw.text((right - 30, bottom + 4), f"{x.max():.0f}", fill=(0, 0, 0))
    draw.text((left, 6), title, fill=(0, 0, 0))
    return np.asarray(picture, dtype=np.uint8)
