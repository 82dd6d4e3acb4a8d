"""Stateless standard-normal draws: the reparameterisation noise of training and of the
importance sampler.

Every draw is a pure function of a seed (`[2]` int32/int64), so a run is reproducible from its
seed and step counter, a resumed run continues the same stream, and a mirrored run computes
exactly what one device would.

* `stateless_normal(shape, seed)`: normals of any shape.
* `noise_fn(seed)`: a function `shape -> normals` that gives each call site its own stream
  (the HVAE draws z2, then z1), the form the models take (`noise_fn=` in `loss_terms`).
* `replica_noise_fn(seed, replica_id, num_replicas)`: this replica's rows of one draw for the
  whole global batch.
"""
import math

import tensorflow as tf


def stateless_normal(shape, seed):
    """Standard normals of `shape` from `seed` (`[2]` int32), stateless.

    The Box-Muller transform of Philox uniforms, which is what `tf.random.stateless_normal`
    computes too, written here in vectorised ops (about half its cost for the importance
    sampler's draws on CPUs, docs/benchmarks.md). The smallest 1 - u is 2^-23, so
    |z| <= 5.8 as in TensorFlow's own kernel.
    """
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    uniform = tf.random.stateless_uniform(tf.stack([2, (size + 1) // 2]), seed)  # [0, 1)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-uniform[0]))
    angle = (2.0 * math.pi) * uniform[1]
    return tf.reshape(tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], 0)[:size], shape)


def noise_fn(seed):
    """`shape -> standard normals` of stateless draws from `seed` (`[2]` int32).

    Each call gets its own stream (a counter advanced at trace time and folded into the
    seed), so the draws of different latents are independent.
    """
    calls = [0]

    def draw(shape):
        call_seed = tf.random.experimental.stateless_fold_in(seed, calls[0])
        calls[0] += 1
        return stateless_normal(shape, call_seed)

    return draw


def replica_noise_fn(seed, replica_id, num_replicas):
    """`noise_fn` for one replica: its rows of one global draw.

    `shape` = [S, B_local, D]; the draw is [S, B_local * num_replicas, D] from `noise_fn(seed)`
    and replica r keeps rows [r * B_local, (r + 1) * B_local) of axis 1, so the noise does not
    depend on how the batch is split.
    """
    draw = noise_fn(seed)

    def replica_draw(shape):
        shape = tf.cast(tf.convert_to_tensor(shape), tf.int32)
        eps = draw(tf.stack([shape[0], shape[1] * num_replicas, shape[2]]))
        return tf.slice(eps, tf.stack([0, replica_id * shape[1], 0]), shape)

    return replica_draw


def seed_pair(seed, stream):
    """A stateless seed `[2]` int32 from an int, an int32 scalar tensor, or None (a fresh
    random seed), with `stream` as its second entry so that uses of one seed differ."""
    if seed is None:
        seed = tf.random.uniform([], maxval=2 ** 31 - 1, dtype=tf.int32)
    return tf.stack([tf.cast(seed, tf.int32), tf.constant(stream, tf.int32)])
