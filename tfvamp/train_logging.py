"""What a training run shows, in TensorBoard and on the console: `TrainLogging`, a part of
`tfvamp.training.Trainer`.

TensorBoard (`<model_dir>/tensorboard`, written by the chief only): the config (as text and
hparams) once, then every epoch the losses, beta, learning rate, timings and early-stopping
state, and every `image_every_epochs` the sample, reconstruction and pseudo-input grids. The
console: one line per epoch (`_print_status`).
"""
import json
import os
import time

import numpy as np
import tensorflow as tf

from tfvamp import checkpointing
from tfvamp import evaluation
from tfvamp import pictures
from tfvamp import priors

_IMAGE_STREAM = 0x1A6E


class TrainLogging:
    """TensorBoard summaries and the console's epoch line.

    A part of `Trainer`: it reads `config`, `model_dir`, `is_chief`, `model`, `beta`, `optimizer`
    and `early_stopping`.
    """

    def _writer(self):
        if not self.is_chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(os.path.join(self.model_dir, checkpointing.TENSORBOARD_DIR))

    def _log_config(self, writer):
        with writer.as_default():
            flat = self.config.to_dict()
            rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(flat.items()))
            tf.summary.text("config/flags", "| flag | value |\n|---|---|\n" + rows, step=0)
            try:
                from tensorboard.plugins.hparams import api as hp  # pylint: disable=import-outside-toplevel
                hparams = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
                           for k, v in flat.items() if v is not None}
                hp.hparams(hparams, trial_id=os.path.basename(os.path.normpath(self.model_dir)))
            except ImportError:  # tensorboard is optional; the text summary has it all
                pass

    def _log_scalars(self, writer, epoch, train, val, epoch_seconds, examples_per_second):
        stopper = self.early_stopping
        scalars = {"train/loss": train[0], "train/reconstruction": train[1], "train/kl": train[2],
                   "validation/loss": val[0], "validation/reconstruction": val[1], "validation/kl": val[2],
                   "train/beta": float(self.beta.numpy()),
                   "train/learning_rate": float(self.optimizer.learning_rate.numpy()),
                   "time/epoch_seconds": epoch_seconds, "time/examples_per_second": examples_per_second,
                   "early_stopping/counter": stopper.counter,
                   "early_stopping/best_validation_loss": stopper.best_loss}
        with writer.as_default():
            for name, value in scalars.items():
                tf.summary.scalar(name, value, step=epoch)

    def _log_images(self, writer, epoch, validation):
        n = int(self.config.training.num_images)
        seed = int(self.config.model.seed)
        with writer.as_default():
            pictures.tensorboard_image("images/samples", self.model.sample(n, seed=seed + _IMAGE_STREAM).numpy(),
                                       step=epoch)
            if validation is not None:
                originals = validation[: max(1, n // 2)]
                pairs = pictures.interleave(originals, self.model.reconstruct(originals).numpy())
                pictures.tensorboard_image("images/reconstructions", pairs, step=epoch, num_columns=16)
            if priors.has_pseudo_inputs(self.model.prior_name):
                u = self.model.prior_layer.pseudo_inputs().numpy()
                pick = np.random.default_rng(seed).choice(len(u), min(n, len(u)), replace=False)
                pictures.tensorboard_image("images/pseudo_inputs", u[np.sort(pick)], step=epoch)

    def _validation_images(self, splits):
        """A few validation images at seeded random positions, for the TensorBoard grids."""
        if not int(self.config.training.image_every_epochs):
            return None
        num = max(1, int(self.config.training.num_images) // 2)
        count = (getattr(getattr(splits, "info", None), "num_examples", None) or {}).get("validation")
        if count:  # random positions: a split stored in class order would show one class
            return evaluation.pick_images(splits.validation, num, count, seed=int(self.config.model.seed))
        for x in splits.validation.take(1):
            return x.numpy()[:num]
        return None

    def _print_status(self, epoch, train, val, improved, clock):
        """The whole run on one line: epoch/max, beta, losses, best epoch, patience, time."""
        stopper, epochs = self.early_stopping, int(self.config.training.epochs)
        elapsed = time.perf_counter() - clock[0]
        done = epoch - clock[1] + 1
        eta = elapsed / done * (epochs - epoch)
        print(f"epoch {epoch}/{epochs} beta {float(self.beta.numpy()):.3g} | train {train[0]:.3f} "
              f"(RE {train[1]:.3f}, KL {train[2]:.3f}) | val {val[0]:.3f} | best {stopper.best_loss:.3f} "
              f"@ {stopper.best_epoch}{' *' if improved else ''} | patience {stopper.counter}/{stopper.patience} "
              f"| {_duration(elapsed)} elapsed, at most {_duration(eta)} to epoch {epochs}", flush=True)


def _duration(seconds):
    """'42s', '7m05s' or '3h12m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
