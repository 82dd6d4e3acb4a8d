"""The state of a training run and its checkpoints: `TrainState`, a part of `tfvamp.training.Trainer`.

The state is the model, the optimizer, the KL weight `beta`, the last completed `epoch`, the
`stop_reason`, the `train_seconds`, the `noise_seed` and the early-stopping variables, all in
one `tf.train.Checkpoint` under those names (existing run directories resume by them: keep
them). Every epoch's checkpoint goes to `<model_dir>/checkpoints`, the best weights to
`<model_dir>/best` (what evaluation and export read).
"""
import math
import os

import tensorflow as tf
from absl import logging

from tfvamp import checkpointing
from tfvamp import distribute
from tfvamp import optimizers
from tfvamp.schedule import EarlyStopping, warmup_beta

_NOISE_STREAM = 0x5EED


class TrainState:
    """The run's variables, their checkpoint, saving and restoring.

    A part of `Trainer`: it reads `config`, `model_dir` and `strategy`; `_build_state` runs
    under the strategy's scope.
    """

    def _build_state(self, pseudo_inputs_data):
        config = self.config
        self.model = checkpointing.model_from_config(config, pseudo_inputs_data)
        self.optimizer = optimizers.make_optimizer(config.training.optimizer, config.training.lr)
        self.optimizer.build(self.model.trainable_variables)  # slots exist before any restore
        # beta is read inside the compiled step, so it is a variable: a Python float would be
        # frozen into the graph at trace time.
        self.beta = tf.Variable(warmup_beta(1, config.training.warmup_epochs), trainable=False, dtype=tf.float32,
                                name="beta")
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
        self.stop_reason = tf.Variable(0, trainable=False, dtype=tf.int64, name="stop_reason")
        self.train_seconds = tf.Variable(0.0, trainable=False, dtype=tf.float64, name="train_seconds")
        # The noise stream: stateless seeds from this and optimizer.iterations.
        self.noise_seed = tf.Variable([int(config.model.seed), _NOISE_STREAM], trainable=False, dtype=tf.int64,
                                      name="noise_seed")
        self.early_stopping = EarlyStopping(config.training.early_stopping_epochs, config.training.warmup_epochs)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch, beta=self.beta,
            stop_reason=self.stop_reason, train_seconds=self.train_seconds, noise_seed=self.noise_seed,
            **self.early_stopping.variables())

    @property
    def checkpoint_dir(self):
        return os.path.join(self.model_dir, checkpointing.CHECKPOINT_DIR)

    @property
    def best_dir(self):
        return os.path.join(self.model_dir, checkpointing.BEST_DIR)

    # -- checkpoints --------------------------------------------------------------------------
    def _save(self, checkpoint, directory, epoch, keep):
        """Saves `checkpoint` as `<directory>/ckpt-<epoch>`; non-chief workers write a temporary
        copy (they must take part) and delete it."""
        target = distribute.worker_write_dir(directory, self.strategy)
        manager = tf.train.CheckpointManager(checkpoint, target, max_to_keep=keep, checkpoint_name="ckpt")
        path = manager.save(checkpoint_number=int(epoch))
        distribute.remove_worker_dir(target, directory, self.strategy)
        return path

    def save_best(self, epoch, val_loss):
        """The model, its epoch and validation loss into best/ (what evaluation and export read)."""
        best = tf.train.Checkpoint(model=self.model, epoch=tf.Variable(int(epoch), dtype=tf.int64),
                                   best_val_loss=tf.Variable(float(val_loss), dtype=tf.float64))
        return self._save(best, self.best_dir, epoch, keep=1)

    def _init_from(self, source):
        """A new run's weights from a SavedModel export or a pretrained model (`--init_from`)."""
        from tfvamp import pretrained  # pylint: disable=import-outside-toplevel

        copied, skipped = pretrained.copy_matching_weights(self.model, source)
        note = f"; kept the initialisation of {len(skipped)}: {', '.join(skipped[:4])}" if skipped else ""
        print(f"Started from {source}: {len(copied)} of {len(copied) + len(skipped)} weights copied{note}",
              flush=True)

    def restore(self):
        """Restores the newest epoch checkpoint, if any. Returns the last completed epoch (0 if
        none)."""
        path = tf.train.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        lr = float(self.config.training.lr)
        if not math.isclose(float(self.optimizer.learning_rate.numpy()), lr, rel_tol=1e-6):
            logging.warning("--lr changed on resume: now %g.", lr)
        self.optimizer.learning_rate.assign(lr)
        return int(self.epoch.numpy())
