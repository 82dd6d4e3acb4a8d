"""AdamNormGrad against a NumPy re-implementation of the release's PyTorch optimizer."""
import numpy as np
import pytest
import tensorflow as tf

from tfvamp import optimizers


def numpy_adam_norm_grad(weights, grads_per_step, lr, beta1=0.9, beta2=0.999, eps=1e-8, norm_eps=1e-7):
    """utils/optimizer.py of the release, in NumPy (float64)."""
    weights = [w.astype(np.float64).copy() for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            g = g / (np.linalg.norm(g.ravel()) + norm_eps)
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            step = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            weights[i] -= step * m[i] / (np.sqrt(v[i]) + eps)
    return weights


def test_matches_numpy_reimplementation_over_several_steps():
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    # Gradients of very different scales: normalisation makes the steps scale-free.
    grads = [[rng.normal(size=(4, 3)).astype(np.float32) * 10.0 ** rng.integers(-3, 4),
              rng.normal(size=(5,)).astype(np.float32) * 10.0 ** rng.integers(-3, 4)] for _ in range(6)]
    variables = [tf.Variable(w) for w in init]
    opt = optimizers.AdamNormGrad(learning_rate=1e-2)
    for g in grads:
        opt.apply_gradients(zip([tf.constant(x) for x in g], variables))
    expected = numpy_adam_norm_grad(init, grads, lr=1e-2)
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)
    assert int(opt.iterations.numpy()) == 6


def test_normalisation_is_per_tensor_and_not_clipping():
    g = tf.constant([[3.0, 4.0]])
    np.testing.assert_allclose(optimizers.AdamNormGrad.normalize(g).numpy(), [[0.6, 0.8]], rtol=1e-6)
    small = tf.constant([1e-3, 0.0])  # clipnorm would leave this alone; normalisation scales it up
    np.testing.assert_allclose(optimizers.AdamNormGrad.normalize(small).numpy(), [1.0, 0.0], rtol=1e-3)


def test_defaults_are_the_releases():
    opt = optimizers.AdamNormGrad()
    assert (opt.beta_1, opt.beta_2, opt.epsilon, opt.norm_epsilon) == (0.9, 0.999, 1e-8, 1e-7)
    assert float(opt.learning_rate.numpy()) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="clipnorm"):
        optimizers.AdamNormGrad(clipnorm=1.0)


def test_normalises_the_global_gradient_under_mirrored_strategy():
    """With the strategy's gradient all-reduce, the normalisation sees the summed gradient."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        w = tf.Variable([1.0, 2.0])
        opt = optimizers.AdamNormGrad(learning_rate=0.1)

    @tf.function
    def step():
        def fn():
            opt.apply_gradients([(tf.constant([30.0, 40.0]), w)])
        strategy.run(fn)

    step()
    expected = numpy_adam_norm_grad([np.array([1.0, 2.0])], [[np.array([30.0, 40.0])]], lr=0.1)[0]
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
