"""Stateless normal draws (tfvamp.noise) against SciPy, and the per-replica slices."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import norm

from tfvamp import noise


@pytest.mark.parametrize("shape", [(4, 7), (3, 5, 9), (1,)])
def test_stateless_normal_draws_are_standard_normal_and_reproducible(shape):
    """The Box-Muller draws against SciPy's normal: the distribution (KS), the pairing of a
    radius with cos and sin (uncorrelated halves), the tail, and the seed."""
    from scipy.stats import kstest

    seed = tf.constant([5, 6])
    draws = noise.stateless_normal(shape, seed).numpy()
    assert draws.shape == shape and draws.dtype == np.float32
    np.testing.assert_array_equal(noise.stateless_normal(shape, seed).numpy(), draws)
    many = noise.stateless_normal([200_001], tf.constant([1, 2])).numpy().astype(np.float64)
    assert kstest(many, "norm").pvalue > 1e-3
    half = len(many) // 2  # cos draws first, then the sin draws of the same (radius, angle)
    assert abs(np.corrcoef(many[:half], many[half:2 * half])[0, 1]) < 4 / np.sqrt(half)
    assert abs(np.corrcoef(many[:half] ** 2, many[half:2 * half] ** 2)[0, 1]) < 4 / np.sqrt(half)
    tail = np.mean(np.abs(many) > 3.0)
    assert abs(tail - 2 * norm.sf(3.0)) < 5 * np.sqrt(2 * norm.sf(3.0) / len(many))
    assert np.abs(many).max() <= 5.8 and not np.array_equal(
        noise.stateless_normal([200_001], tf.constant([1, 3])).numpy(), many.astype(np.float32))


def test_replica_slices_make_up_one_global_draw():
    """Two replicas' noise side by side equals one device's draw of the whole batch."""
    seed = tf.constant([9, 1])
    whole = noise.replica_noise_fn(seed, 0, 1)([3, 8, 5]).numpy()
    parts = [noise.replica_noise_fn(seed, r, 2)([3, 4, 5]).numpy() for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts, 1), whole)


def test_each_call_site_has_its_own_stream():
    draw = noise.noise_fn(tf.constant([1, 1]))
    first, second = draw([1000]).numpy(), draw([1000]).numpy()
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.15
    np.testing.assert_array_equal(noise.noise_fn(tf.constant([1, 1]))([1000]).numpy(), first)
