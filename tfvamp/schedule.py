"""The paper's training schedule: the KL warm-up and the release's early stopping.

* `warmup_beta(epoch, warmup_epochs)`: the KL weight of a (1-based) epoch
  (docs/paper_details.md section 5).
* `WarmUp`: that schedule as a Keras callback, for `model.fit`.
* `EarlyStopping`: the release's patience rule on the validation loss; its state is three
  variables, checkpointed with the run (`tfvamp.train_state`).

`tfvamp.training` re-exports all three.
"""
import math

import keras
import tensorflow as tf


def warmup_beta(epoch, warmup_epochs):
    """KL weight of 1-based `epoch`: min(epoch / warmup_epochs, 1); 1 without warm-up.

    The release's schedule: epoch 1 of a 100-epoch warm-up trains with beta = 0.01, epoch
    100 and later with beta = 1.
    """
    if epoch < 1:
        raise ValueError(f"Epochs count from 1, got {epoch}.")
    if warmup_epochs <= 0:
        return 1.0
    return min(float(epoch) / float(warmup_epochs), 1.0)


class WarmUp(keras.callbacks.Callback):
    """The paper's KL warm-up for `model.fit`: before epoch e (1-based) the model's
    `fit_beta` becomes `warmup_beta(e, warmup_epochs)`.

        model.compile(optimizer=tfvamp.AdamNormGrad(5e-4))
        model.fit(images, epochs=200, batch_size=100, callbacks=[tfvamp.WarmUp(100)])
    """

    def __init__(self, warmup_epochs=100):
        super().__init__()
        self.warmup_epochs = int(warmup_epochs)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.fit_beta.assign(warmup_beta(epoch + 1, self.warmup_epochs))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(self.model.fit_beta.numpy())


class EarlyStopping:
    """The release's early stopping on the validation loss (negative ELBO with beta = 1).

    After each epoch: a loss below the best so far becomes the best (the caller saves those
    weights) and resets the counter; otherwise the counter goes up by one, except that it is
    held at 0 while `epoch < warmup_epochs` (beta still below 1), and training stops once it
    exceeds `patience`. A NaN (or infinite) validation loss stops training at once. This is
    `utils/perform_experiment.py` of the release, line by line.

    State: `best_loss`, `best_epoch`, `counter`, held in variables (`variables()`) so that a
    checkpoint restores them; create it under the strategy's scope.
    """

    def __init__(self, patience, warmup_epochs, best_loss=math.inf, best_epoch=0, counter=0):
        self.patience = int(patience)
        self.warmup_epochs = int(warmup_epochs)
        self.best_loss_variable = tf.Variable(float(best_loss), trainable=False, dtype=tf.float64,
                                              name="best_val_loss")
        self.best_epoch_variable = tf.Variable(int(best_epoch), trainable=False, dtype=tf.int64, name="best_epoch")
        self.counter_variable = tf.Variable(int(counter), trainable=False, dtype=tf.int64, name="patience")

    @property
    def best_loss(self):
        return float(self.best_loss_variable.numpy())

    @property
    def best_epoch(self):
        return int(self.best_epoch_variable.numpy())

    @property
    def counter(self):
        return int(self.counter_variable.numpy())

    def variables(self):
        """The state, under the names run checkpoints use."""
        return {"best_val_loss": self.best_loss_variable, "best_epoch": self.best_epoch_variable,
                "patience": self.counter_variable}

    def update(self, epoch, val_loss):
        """Records epoch `epoch`'s validation loss. Returns (improved, stop, reason)."""
        val_loss = float(val_loss)
        if not math.isfinite(val_loss):
            return False, True, "nan_validation_loss"
        if val_loss < self.best_loss:
            self.best_loss_variable.assign(val_loss)
            self.best_epoch_variable.assign(int(epoch))
            self.counter_variable.assign(0)
            return True, False, None
        counter = 0 if epoch < self.warmup_epochs else self.counter + 1
        self.counter_variable.assign(counter)
        if counter > self.patience:
            return False, True, "early_stopping"
        return False, False, None

    def __repr__(self):
        return (f"EarlyStopping(counter={self.counter}/{self.patience}, best_loss={self.best_loss:.4f} "
                f"at epoch {self.best_epoch})")
