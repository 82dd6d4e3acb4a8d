"""Small helpers shared by the tests (imported as `helpers`: pytest puts tests/ on sys.path)."""
import keras
import numpy as np
import tensorflow as tf


def train_briefly(model, data, steps=150, batch=32, lr=3e-3):
    """A few hundred plain Adam steps on random batches of `data`, so a model is not random-init."""
    optimizer = keras.optimizers.Adam(lr)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.loss_terms(x, training=True)["loss"])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(1)
    for _ in range(steps):
        step(tf.constant(data[rng.integers(0, len(data), batch)]))
    return model
