"""The `tf.data` input pipeline of images held in memory: stored pixels to the [0, 1] floats the
model sees, per-batch binarisation of the training images, the fixed binarisation of the
evaluation sets, and the seeded epoch stream; the arrays it reads are cached here. `tfvamp.data`
builds its `Splits` from these (streamed sources go through `tfvamp.streaming`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

EVAL_BINARIZATION_SEED = 777
# tf.data's autotuner makes tearing down an iterator wait on its timer (up to seconds at the end
# of an epoch, docs/benchmarks.md); these pipelines are too simple to need tuning.
_OPTIONS = tf.data.Options()
_OPTIONS.autotune.enabled = False

__all__ = ["EVAL_BINARIZATION_SEED", "batches", "evaluation_batches", "to_unit", "unit_numpy", "preprocessed",
           "cached"]

# Arrays of the last few splits read or preprocessed, so that load + as_numpy and repeated loads
# in one process (the trainer calls load once per epoch) read the TFDS files and binarise the
# evaluation sets once. Small: one dataset's entries are at most ~120 MB (dynamic MNIST).
_CACHE: dict = {}
_CACHE_SIZE = 8


def cached(key, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """compute(), remembered under `key` as a read-only array (oldest entries dropped first)."""
    if key not in _CACHE:
        array = compute()
        array.setflags(write=False)
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = array
    return _CACHE[key]


def batches(store, batch_size: int, eval_batch_size: int, seed: int, shuffle_train: bool, drop_remainder: bool,
            max_steps_per_epoch: int):
    """(train, validation, test, epochs) of an in-memory store (`tfvamp.data.load`; the sizes and
    the seed already checked): what `tfvamp.data.Splits` holds besides the info."""
    info = store.info
    stored_train = store.stored("train")
    if drop_remainder and batch_size > len(stored_train):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(stored_train)} training "
                         f"images of {store.name}, so no full batch is left")
    train = tf.data.Dataset.from_tensor_slices(stored_train)
    if shuffle_train:
        train = train.shuffle(len(stored_train), seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size, drop_remainder=drop_remainder)
    if info.dynamic_binarization:
        # One stateless-noise seed per batch. rerandomize_each_iteration gives new seeds every
        # epoch, still a deterministic sequence given `seed`.
        noise = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        train = tf.data.Dataset.zip((train, noise)).map(
            lambda x, s: _binarize(to_unit(info.pixels, x), s, seed), num_parallel_calls=2, deterministic=True)
    else:
        train = train.map(lambda x: to_unit(info.pixels, x), num_parallel_calls=2, deterministic=True)

    def epochs(first_epoch):
        return _epoch_stream(info, stored_train, batch_size, seed, first_epoch, max_steps_per_epoch)

    train = train.prefetch(2).with_options(_OPTIONS)
    validation = evaluation_batches(preprocessed(store, "validation"), eval_batch_size)
    return train, validation, evaluation_batches(preprocessed(store, "test"), eval_batch_size), epochs


def evaluation_batches(images: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Preprocessed images as a dataset of batches, in order, the last one possibly smaller."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size, drop_remainder=False)
    return ds.prefetch(2).with_options(_OPTIONS)


def to_unit(pixels: str, x: tf.Tensor) -> tf.Tensor:
    """Stored images -> float32 in [0, 1] as the model sees them (grey for the binarised sets)."""
    x = tf.cast(x, tf.float32)
    if pixels == "grey_255":
        return x / 255.0
    if pixels == "bins":
        return (x + 0.5) / 256.0
    if pixels == "clip":
        return tf.clip_by_value(x, 1.0 / 512.0, 1.0 - 1.0 / 512.0)
    return x  # "binary" (0/1) and "unit" (grey in [0, 1]) as stored


def unit_numpy(pixels: str, x) -> np.ndarray:
    """`to_unit` of an array, as an array."""
    return to_unit(pixels, x).numpy()


def _epoch_stream(info, stored, batch_size, seed, first_epoch, max_steps=0):
    """Training batches of every epoch from `first_epoch` on (see `Splits.epochs`).

    Epoch e is a permutation of the stored images drawn from (seed, e), cut into full batches
    (at most `max_steps` of them); dynamically binarised sets draw each batch's pixels from
    (seed, e, batch index).
    """
    images = tf.constant(stored)
    count = len(stored)
    steps = count // batch_size
    steps = min(steps, int(max_steps)) if max_steps else steps

    def epoch_batches(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=key)
        index = tf.reshape(order[: steps * batch_size], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices((index, tf.range(steps, dtype=tf.int64))).map(
            lambda i, step: _epoch_batch(info, tf.gather(images, i), key, step),
            num_parallel_calls=2, deterministic=True)

    stream = tf.data.Dataset.range(int(first_epoch), 2 ** 62).flat_map(epoch_batches)
    return stream.prefetch(2).with_options(_OPTIONS)


def _epoch_batch(info, stored_batch, key, step):
    x = to_unit(info.pixels, stored_batch)
    if not info.dynamic_binarization:
        return x
    seed = tf.random.experimental.stateless_fold_in(key, step)
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed) < x, tf.float32)


def _binarize(grey: tf.Tensor, noise_seed: tf.Tensor, seed: int) -> tf.Tensor:
    """pixel ~ Bernoulli(grey) with stateless noise seeded by (per-batch seed, `seed`)."""
    u = tf.random.stateless_uniform(
        tf.shape(grey), seed=tf.stack([noise_seed, tf.constant(seed, tf.int64)]), dtype=tf.float32)
    return tf.cast(u < grey, tf.float32)


def preprocessed(store, split: str) -> np.ndarray:
    """float32 [N, H, W, C] of an in-memory store as `load` yields it (validation/test binarised
    for dynamic sets). Read-only (cached) for validation/test."""
    if split == "train":
        return unit_numpy(store.info.pixels, store.stored(split))
    return cached(store.key + (split, "preprocessed"), lambda: _evaluation_images(store, split))


def _evaluation_images(store, split: str) -> np.ndarray:
    x = unit_numpy(store.info.pixels, store.stored(split))
    if not store.info.dynamic_binarization:
        return x
    # The release: np.random.seed(777); x_val = binomial(1, x_val); x_test = binomial(1, x_test).
    # The test draw follows the validation draw in the same stream, so replay both.
    grey_val = x if split == "validation" else unit_numpy(store.info.pixels, store.stored("validation"))
    rs = np.random.RandomState(EVAL_BINARIZATION_SEED)
    val = rs.binomial(1, grey_val).astype(np.float32)
    return val if split == "validation" else rs.binomial(1, x).astype(np.float32)
