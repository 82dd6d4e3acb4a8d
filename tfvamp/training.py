"""Training: the schedule, early stopping and the distributed training loop.

    from tfvamp import flags as tflags, training
    config = tflags.validate_config(tflags.default_config(dataset="frey_faces", model="hvae",
                                                          model_dir="runs/frey"))
    results = training.train(config)

Pieces, each usable alone:

* `warmup_beta(epoch, warmup_epochs)`: the KL weight of a (1-based) epoch (SPEC section 5).
* `EarlyStopping`: the release's patience rule on the validation loss.
* `Trainer`: model + AdamNormGrad under a `tf.distribute` strategy; a compiled train step
  (`strategy.run` inside a `tf.function`, per-replica losses scaled by the global batch);
  validation with beta = 1; a checkpoint every epoch; TensorBoard; the best weights.
* `train(config)`: the whole run: data, resume, fit, test-set evaluation, SavedModel export.

Determinism. Every replica draws the noise of the *whole* global batch from a stateless
seed (the run's seed folded with the optimizer step and a per-draw counter) and keeps its own
rows, so a mirrored run computes exactly what one device would, and a resumed run continues
the same noise stream (the step counter is in the checkpoint).
"""
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfvamp import checkpointing
from tfvamp import distribute
from tfvamp import evaluation
from tfvamp import export
from tfvamp import models
from tfvamp import optimizers
from tfvamp import pictures

# Whether XLA (jit_compile) speeds up each model's train step on CPU, from the measurements
# in docs/training.md (`scripts/train.py --benchmark_xla`); `--jit_compile=auto` uses this.
JIT_DEFAULTS = {"vae": False, "hvae": False, "convhvae": False, "pixelhvae": False}

STOP_REASONS = ("running", "max_epochs", "early_stopping", "nan_validation_loss")
_NOISE_STREAM, _VALIDATION_STREAM, _IMAGE_STREAM = 0x5EED, 0xE7A1, 0x1A6E


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; nothing of that epoch was saved."""


# ---- schedule ---------------------------------------------------------------------------------
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


class EarlyStopping:
    """The release's early stopping on the validation loss (negative ELBO with beta = 1).

    After each epoch: a loss below the best so far becomes the best (the caller saves those
    weights) and resets the counter; otherwise the counter goes up by one, except that it is
    held at 0 while `epoch < warmup_epochs` (beta still below 1), and training stops once it
    exceeds `patience`. A NaN (or infinite) validation loss stops training at once. This is
    `utils/perform_experiment.py` of the release, line by line.

    State: `best_loss`, `best_epoch`, `counter` (all restored from checkpoints).
    """

    def __init__(self, patience, warmup_epochs, best_loss=math.inf, best_epoch=0, counter=0):
        self.patience = int(patience)
        self.warmup_epochs = int(warmup_epochs)
        self.best_loss = float(best_loss)
        self.best_epoch = int(best_epoch)
        self.counter = int(counter)

    def update(self, epoch, val_loss):
        """Records epoch `epoch`'s validation loss. Returns (improved, stop, reason)."""
        val_loss = float(val_loss)
        if not math.isfinite(val_loss):
            return False, True, "nan_validation_loss"
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.counter = val_loss, int(epoch), 0
            return True, False, None
        self.counter += 1
        if epoch < self.warmup_epochs:
            self.counter = 0
        if self.counter > self.patience:
            return False, True, "early_stopping"
        return False, False, None

    def __repr__(self):
        return (f"EarlyStopping(counter={self.counter}/{self.patience}, best_loss={self.best_loss:.4f} "
                f"at epoch {self.best_epoch})")


def resolve_jit(setting, model_name, num_replicas=1):
    """The jit_compile decision: 'true'/'false' as given, 'auto' from `JIT_DEFAULTS`.

    PixelHVAE is never compiled: its synchronised batch norm all-reduces (a `merge_call`)
    inside the forward pass, which a nested XLA function cannot contain, with any number of
    replicas.
    """
    setting = str(setting).lower()
    jit = JIT_DEFAULTS.get(model_name, False) if setting == "auto" else setting == "true"
    if jit and model_name == "pixelhvae":
        logging.warning("jit_compile is off for pixelhvae: its synchronised batch norm all-reduces inside "
                        "the step, which XLA cannot compile.")
        jit = False
    return jit


def _replica_noise_fn(seed, replica_id, num_replicas):
    """noise_fn for `loss_terms`: this replica's rows of one global standard-normal draw.

    `shape` = [S, B_local, D]; the draw is [S, B_local * num_replicas, D], from
    `models.stateless_noise_fn(seed)` (a new stream per draw site: the HVAE draws z2, then z1),
    and replica r keeps rows [r * B_local, (r + 1) * B_local) of axis 1.
    """
    draw = models.stateless_noise_fn(seed)

    def noise_fn(shape):
        shape = tf.cast(tf.convert_to_tensor(shape), tf.int32)
        eps = draw(tf.stack([shape[0], shape[1] * num_replicas, shape[2]]))
        return tf.slice(eps, tf.stack([0, replica_id * shape[1], 0]), shape)

    return noise_fn


# ---- the trainer ------------------------------------------------------------------------------
class Trainer:
    """One training run under a `tf.distribute` strategy.

    Args:
      config: a validated run config (`tfvamp.flags.validate_config`).
      strategy: the `tf.distribute.Strategy` (default: `distribute.make_strategy(config['strategy'])`).
      splits: `tfvamp.data.Splits`-like object with `train`, `validation`, `test` datasets of
        image batches (needed by `fit`, not to build).
      pseudo_inputs_data: training images `[N >= K, H, W, 1]` for `vampprior_data` (or the
        `data` initialisation of the other VampPriors).
      train_for_epoch: optional `epoch -> dataset` giving each (1-based) epoch's training
        batches; default: iterate `splits.train` again every epoch. `train` passes one that
        seeds the order (and binarisation) with the epoch, so a resumed run sees the same
        batches as an uninterrupted one.
    """

    def __init__(self, config, strategy=None, splits=None, pseudo_inputs_data=None, train_for_epoch=None):
        self.config = dict(config)
        self.strategy = strategy or distribute.make_strategy(config["strategy"])
        self.splits = splits
        self.train_for_epoch = train_for_epoch or (lambda epoch: self.splits.train)
        self.model_dir = config["model_dir"]
        self.num_replicas = int(self.strategy.num_replicas_in_sync)
        self.global_batch = int(config["batch_size"])
        if self.global_batch % self.num_replicas:
            raise ValueError(f"--batch_size={self.global_batch} does not split over {self.num_replicas} "
                             "replicas; use a multiple of the number of replicas.")
        self.local_batch = self.global_batch // self.num_replicas
        self.task_type, self.task_id, self.is_chief = distribute.task_info(self.strategy)
        self.multi_worker = self.task_type is not None
        self.jit_compile = resolve_jit(config["jit_compile"], config["model"], self.num_replicas)
        seed = int(config["seed"])
        # Seeds every initializer, including the layers' unseeded ones, so that --seed fixes
        # the initial weights (multi-worker runs also broadcast the chief's).
        keras.utils.set_random_seed(seed)
        with self.strategy.scope():
            # The same config -> model mapping that load_model and export use.
            self.model = checkpointing.model_from_config(self.config, pseudo_inputs_data)
            self.optimizer = optimizers.make_optimizer(config["optimizer"], config["lr"])
            self.optimizer.build(self.model.trainable_variables)  # slots exist before any restore
            # Run state, all in the checkpoint. beta is read inside the compiled step, so it
            # is a variable: a Python float would be frozen into the graph at trace time.
            self.beta = tf.Variable(warmup_beta(1, config["warmup_epochs"]), trainable=False,
                                    dtype=tf.float32, name="beta")
            self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
            self.best_val_loss = tf.Variable(math.inf, trainable=False, dtype=tf.float64, name="best_val_loss")
            self.best_epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="best_epoch")
            self.patience = tf.Variable(0, trainable=False, dtype=tf.int64, name="patience")
            self.stop_reason = tf.Variable(0, trainable=False, dtype=tf.int64, name="stop_reason")
            self.train_seconds = tf.Variable(0.0, trainable=False, dtype=tf.float64, name="train_seconds")
            # The noise stream: stateless seeds from this and optimizer.iterations.
            self.noise_seed = tf.Variable([seed, _NOISE_STREAM], trainable=False, dtype=tf.int64,
                                          name="noise_seed")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch, beta=self.beta,
            best_val_loss=self.best_val_loss, best_epoch=self.best_epoch, patience=self.patience,
            stop_reason=self.stop_reason, train_seconds=self.train_seconds, noise_seed=self.noise_seed)
        grads = self._replica_grads
        self._grads_fn = tf.function(grads, jit_compile=True) if self.jit_compile else grads
        self._train_step = tf.function(self._distributed_step)
        self._eval_step = tf.function(self._eval_batch, reduce_retracing=True)

    # -- directories --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self):
        return os.path.join(self.model_dir, checkpointing.CHECKPOINT_DIR)

    @property
    def best_dir(self):
        return os.path.join(self.model_dir, checkpointing.BEST_DIR)

    # -- the compiled step --------------------------------------------------------------------
    def _replica_grads(self, x, seed, replica_id):
        """Forward and backward pass on this replica's rows: (gradients, [3] sums)."""
        noise_fn = _replica_noise_fn(seed, replica_id, self.num_replicas)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            terms = self.model.loss_terms(x, beta=self.beta, training=True, noise_fn=noise_fn)
            # Per-replica sum over the *global* batch size: the replicas' gradients add up to
            # the gradient of the global mean.
            loss = tf.reduce_sum(terms["loss"]) / float(self.global_batch)
        grads = tape.gradient(loss, variables)
        sums = tf.stack([tf.reduce_sum(terms[k]) for k in ("loss", "reconstruction", "kl")])
        return grads, sums

    def _local_grads(self, x_global):
        """This replica's rows of the global batch -> (gradients, sums), noise from the step's seed."""
        replica_id = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
        size = tf.concat([[self.local_batch], tf.shape(x_global)[1:]], 0)
        x = tf.slice(x_global, tf.concat([[replica_id * self.local_batch], tf.zeros([3], tf.int32)], 0), size)
        seed = tf.random.experimental.stateless_fold_in(self.noise_seed, self.optimizer.iterations)
        return self._grads_fn(x, seed, replica_id)

    def _replica_step(self, x_global):
        grads, sums = self._local_grads(x_global)
        # Keras sums the gradients over replicas, then AdamNormGrad normalises and steps.
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return sums

    def global_gradients(self, x_global):
        """The gradient of the next step's loss (mean over the global batch), summed over replicas
        as the optimizer receives it; nothing is updated. For checking distributed runs."""
        def fn(x):
            grads, _ = self._local_grads(x)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)

        run = tf.function(lambda x: self.strategy.experimental_local_results(self.strategy.run(fn, (x,)))[0])
        return [g.numpy() for g in run(tf.convert_to_tensor(x_global, tf.float32))]

    def _distributed_step(self, x_global):
        """One step on a global batch `[B, H, W, C]`: every replica takes its rows."""
        per_replica = self.strategy.run(self._replica_step, (x_global,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def train_step(self, x_global):
        """Runs one step; returns the summed [loss, reconstruction, kl] over the global batch."""
        x_global = tf.convert_to_tensor(x_global, tf.float32)
        if x_global.shape[0] != self.global_batch:
            raise ValueError(f"train_step takes global batches of {self.global_batch}, got {x_global.shape[0]}.")
        return self._train_step(x_global)

    def _eval_batch(self, x, seed):
        """Sums of the beta = 1 terms over a batch, with seeded noise."""
        noise_fn = _replica_noise_fn(seed, 0, 1)
        terms = self.model.loss_terms(x, beta=1.0, training=False, noise_fn=noise_fn)
        return tf.stack([tf.reduce_sum(tf.cast(terms[k], tf.float64)) for k in ("loss", "reconstruction", "kl")])

    # -- epochs -------------------------------------------------------------------------------
    def steps_per_epoch(self, num_train):
        steps = int(num_train) // self.global_batch
        cap = int(self.config["max_steps_per_epoch"])
        return min(steps, cap) if cap else steps

    def train_epoch(self, epoch, dataset, steps=None):
        """One pass over `dataset`; returns (mean [loss, reconstruction, kl] per example, steps,
        seconds)."""
        cap = int(self.config["max_steps_per_epoch"])
        if cap:
            dataset = dataset.take(cap)
        bar = None
        if self.config["progress"] and self.is_chief:
            from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.config['epochs']}", unit="batch",
                       leave=False, dynamic_ncols=True)
        totals = tf.zeros([3], tf.float64)  # on the device: no host round trip per step
        num_steps = 0
        start = time.perf_counter()
        for x in dataset:
            totals += tf.cast(self.train_step(x), tf.float64)
            num_steps += 1
            if bar is not None:
                bar.update(1)
                if num_steps % 10 == 0 or num_steps == steps:
                    seconds = time.perf_counter() - start
                    bar.set_postfix(loss=f"{float(totals[0]) / (num_steps * self.global_batch):.2f}",
                                    ex_s=f"{num_steps * self.global_batch / max(seconds, 1e-9):.0f}")
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if num_steps == 0:
            raise ValueError("The training set yielded no batch: is --batch_size larger than the training set?")
        return totals.numpy() / (num_steps * self.global_batch), num_steps, seconds

    def evaluate_elbo(self, dataset):
        """Mean [loss, reconstruction, kl] per example with beta = 1 (the validation loss).

        The noise is seeded by the run seed and the batch index, the same every epoch, so
        epochs are compared on common random numbers, and every worker of a multi-worker run
        computes the same number.
        """
        cap = int(self.config["max_eval_batches"])
        if cap:
            dataset = dataset.take(cap)
        base = tf.constant([int(self.config["seed"]), _VALIDATION_STREAM], tf.int64)
        totals, count = np.zeros(3), 0
        for i, x in enumerate(dataset):
            seed = tf.random.experimental.stateless_fold_in(base, i)
            totals += self._eval_step(x, seed).numpy()
            count += int(x.shape[0])
        if count == 0:
            raise ValueError("The validation set yielded no batch.")
        return totals / count

    def _agree(self, values):
        """Makes every worker of a multi-worker run hold the same numbers (their mean).

        Each worker computes validation on its own; averaging over the replicas removes any
        doubt that they all take the same early-stopping decision. Also a barrier.
        """
        values = np.asarray(values, np.float64)
        if not self.multi_worker:
            return values
        tensor = tf.constant(values)

        @tf.function
        def mean():
            def fn():
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, tensor)
            return self.strategy.experimental_local_results(self.strategy.run(fn))[0]

        return mean().numpy()

    # -- checkpoints --------------------------------------------------------------------------
    def _save(self, checkpoint, directory, epoch, keep):
        """Saves `checkpoint` as `<directory>/ckpt-<epoch>`; non-chief workers write a temporary
        copy (they must take part) and delete it."""
        target = distribute.worker_write_dir(directory, self.strategy)
        manager = tf.train.CheckpointManager(checkpoint, target, max_to_keep=keep, checkpoint_name="ckpt")
        path = manager.save(checkpoint_number=int(epoch))
        distribute.remove_worker_dir(target, directory, self.strategy)
        return path

    def restore(self):
        """Restores the newest epoch checkpoint, if any. Returns the last completed epoch (0 if
        none)."""
        path = tf.train.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        lr = float(self.config["lr"])
        if not math.isclose(float(self.optimizer.learning_rate.numpy()), lr, rel_tol=1e-6):
            logging.warning("--lr changed on resume: now %g.", lr)
        self.optimizer.learning_rate.assign(lr)
        return int(self.epoch.numpy())

    def early_stopping(self):
        return EarlyStopping(self.config["early_stopping_epochs"], self.config["warmup_epochs"],
                             best_loss=float(self.best_val_loss.numpy()),
                             best_epoch=int(self.best_epoch.numpy()), counter=int(self.patience.numpy()))

    # -- TensorBoard --------------------------------------------------------------------------
    def _writer(self):
        if not self.is_chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(os.path.join(self.model_dir, checkpointing.TENSORBOARD_DIR))

    def _log_config(self, writer):
        with writer.as_default():
            rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(self.config.items()))
            tf.summary.text("config/flags", "| flag | value |\n|---|---|\n" + rows, step=0)
            try:
                from tensorboard.plugins.hparams import api as hp  # pylint: disable=import-outside-toplevel
                hparams = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
                           for k, v in self.config.items() if v is not None}
                hp.hparams(hparams, trial_id=os.path.basename(os.path.normpath(self.model_dir)))
            except ImportError:  # tensorboard is optional; the text summary has it all
                pass

    def _log_images(self, writer, epoch, validation):
        n = int(self.config["num_images"])
        seed = int(self.config["seed"])
        with writer.as_default():
            pictures.tensorboard_image("images/samples", self.model.sample(n, seed=seed + _IMAGE_STREAM).numpy(),
                                       step=epoch)
            if validation is not None:
                originals = validation[: max(1, n // 2)]
                pairs = pictures.interleave(originals, self.model.reconstruct(originals).numpy())
                pictures.tensorboard_image("images/reconstructions", pairs, step=epoch, num_columns=16)
            if hasattr(self.model.prior_layer, "pseudo_inputs"):
                u = self.model.prior_layer.pseudo_inputs().numpy()
                pick = np.random.default_rng(seed).choice(len(u), min(n, len(u)), replace=False)
                pictures.tensorboard_image("images/pseudo_inputs", u[np.sort(pick)], step=epoch)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self):
        """Trains until `epochs`, early stopping or a NaN validation loss; resumes from the newest
        checkpoint. Returns a dict describing how training ended.

        Raises:
          TrainingDiverged: the training loss of an epoch is not finite (that epoch is not saved).
        """
        config = self.config
        if self.splits is None:
            raise ValueError("Trainer.fit needs the data splits.")
        start_epoch = self.restore() + 1
        reason = STOP_REASONS[int(self.stop_reason.numpy())]
        epochs = int(config["epochs"])
        if start_epoch > 1:
            logging.info("Resuming %s after epoch %d (step %d, beta %.4g, %s).", self.model_dir, start_epoch - 1,
                         int(self.optimizer.iterations.numpy()), float(self.beta.numpy()), self.early_stopping())
            print(f"Resuming from the checkpoint of epoch {start_epoch - 1} in {self.checkpoint_dir}", flush=True)
        if reason in ("early_stopping", "nan_validation_loss") or start_epoch > epochs:
            reason = "max_epochs" if reason == "running" else reason
            print(f"Training already ended ({reason.replace('_', ' ')}) after epoch {start_epoch - 1}.", flush=True)
            return dict(self._summary(reason), already_complete=True)
        stopper = self.early_stopping()
        writer = self._writer()
        if start_epoch == 1:
            self._log_config(writer)
        info = getattr(self.splits, "info", None)
        num_examples = getattr(info, "num_examples", None) or {}
        num_train = num_examples.get("train")
        validation_images = None
        if int(config["image_every_epochs"]):
            num_images = max(1, int(config["num_images"]) // 2)
            if num_examples.get("validation"):
                # Random positions: a split stored in class order would show one class.
                validation_images = evaluation.pick_images(self.splits.validation, num_images,
                                                           num_examples["validation"], seed=int(config["seed"]))
            else:
                for x in self.splits.validation.take(1):
                    validation_images = x.numpy()[:num_images]
        steps = self.steps_per_epoch(num_train) if num_train else None  # the progress bar's total
        reason = "max_epochs"
        try:
            for epoch in range(start_epoch, epochs + 1):
                epoch_start = time.perf_counter()
                self.beta.assign(warmup_beta(epoch, config["warmup_epochs"]))
                train, num_steps, train_seconds = self.train_epoch(epoch, self.train_for_epoch(epoch), steps)
                if not np.all(np.isfinite(train)):
                    last = tf.train.latest_checkpoint(self.checkpoint_dir)
                    raise TrainingDiverged(
                        f"Training loss is {train[0]} in epoch {epoch} (reconstruction {train[1]}, KL {train[2]}): "
                        f"stopped without saving epoch {epoch}. The last good checkpoint is "
                        f"{last or 'none (no epoch completed)'}; the best weights are in {self.best_dir}. "
                        "Try a lower --lr, or check the data for NaNs.")
                val = self._agree(self.evaluate_elbo(self.splits.validation))
                improved, stop, why = stopper.update(epoch, val[0])
                if improved:
                    self._save(self.best_checkpoint_for(epoch, val[0]), self.best_dir, epoch, keep=1)
                self.train_seconds.assign_add(train_seconds)
                self.epoch.assign(epoch)
                self.best_val_loss.assign(stopper.best_loss)
                self.best_epoch.assign(stopper.best_epoch)
                self.patience.assign(stopper.counter)
                if stop:
                    reason = why
                self.stop_reason.assign(STOP_REASONS.index(reason) if stop else 0)
                # The best weights are on disk before the checkpoint that records them.
                self._save(self.checkpoint, self.checkpoint_dir, epoch, keep=int(config["checkpoints_to_keep"]))
                epoch_seconds = time.perf_counter() - epoch_start
                examples = num_steps * self.global_batch
                with writer.as_default():
                    for name, value in (("train/loss", train[0]), ("train/reconstruction", train[1]),
                                        ("train/kl", train[2]), ("validation/loss", val[0]),
                                        ("validation/reconstruction", val[1]), ("validation/kl", val[2]),
                                        ("train/beta", float(self.beta.numpy())),
                                        ("train/learning_rate",
                                         float(self.optimizer.learning_rate.numpy())),
                                        ("time/epoch_seconds", epoch_seconds),
                                        ("time/examples_per_second", examples / max(train_seconds, 1e-9)),
                                        ("early_stopping/counter", stopper.counter),
                                        ("early_stopping/best_validation_loss", stopper.best_loss)):
                        tf.summary.scalar(name, value, step=epoch)
                every = int(config["image_every_epochs"])
                if every and (epoch == start_epoch or epoch % every == 0 or stop or epoch == epochs):
                    self._log_images(writer, epoch, validation_images)
                writer.flush()
                mark = " *" if improved else ""
                print(f"epoch {epoch}/{epochs} {epoch_seconds:.1f}s ({examples / max(train_seconds, 1e-9):.0f} ex/s) "
                      f"beta {float(self.beta.numpy()):.3g} | train {train[0]:.3f} (RE {train[1]:.3f}, KL {train[2]:.3f}) "
                      f"| val {val[0]:.3f} (RE {val[1]:.3f}, KL {val[2]:.3f}) | early stopping "
                      f"{stopper.counter}/{stopper.patience}, best {stopper.best_loss:.3f} @ {stopper.best_epoch}{mark}",
                      flush=True)
                if stop:
                    print(f"Stopping after epoch {epoch}: {reason.replace('_', ' ')}.", flush=True)
                    break
        finally:
            writer.close()
        return self._summary(reason)

    def best_checkpoint_for(self, epoch, val_loss):
        """The checkpoint object saved into best/: the model plus its epoch and validation loss."""
        return tf.train.Checkpoint(model=self.model, epoch=tf.Variable(int(epoch), dtype=tf.int64),
                                   best_val_loss=tf.Variable(float(val_loss), dtype=tf.float64))

    def _summary(self, reason):
        return {"stop_reason": reason, "epochs_trained": int(self.epoch.numpy()),
                "steps": int(self.optimizer.iterations.numpy()),
                "best_epoch": int(self.best_epoch.numpy()),
                "best_validation_loss": float(self.best_val_loss.numpy()),
                "train_seconds": float(self.train_seconds.numpy())}


# ---- the whole run ----------------------------------------------------------------------------
def _check_resume(model_dir, config):
    """A model_dir that holds a different run (other model settings) is refused."""
    path = os.path.join(model_dir, checkpointing.CONFIG_FILE)
    if not os.path.exists(path):
        return
    old = checkpointing.load_config(model_dir)
    keys = checkpointing.MODEL_KEYS + ("dataset",)
    diff = {k: (old.get(k), config.get(k)) for k in keys
            if json.loads(json.dumps(old.get(k))) != json.loads(json.dumps(config.get(k)))}
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{model_dir} holds a run with different settings ({changes}). Use a new --model_dir "
                         "for a new run; the same settings resume the old one.")


def epoch_seed(seed, epoch):
    """The data seed of (1-based) `epoch`: training order and binarisation depend on the run's
    seed and the epoch only, not on how many epochs this process has run."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2 ** 31 - 1)


def load_data(config):
    """The run's data: (splits, train_for_epoch, pseudo_inputs_data).

    `train_for_epoch(epoch)` is the training set of that epoch (`tfvamp.data.load` with
    `epoch_seed`; the arrays are cached, so this is cheap). `pseudo_inputs_data` holds all
    training images when the prior needs them (`vampprior_data`, or `--pseudo_inputs_init=data`),
    else None.
    """
    from tfvamp import data  # pylint: disable=import-outside-toplevel
    options = dict(eval_batch_size=config["eval_batch_size"], data_dir=config["data_dir"],
                   manual_dir=config["manual_dir"], shuffle_train=True, drop_remainder=True)
    splits = data.load(config["dataset"], config["batch_size"], seed=config["seed"], **options)

    def train_for_epoch(epoch):
        return data.load(config["dataset"], config["batch_size"], seed=epoch_seed(config["seed"], epoch),
                         **options).train

    pseudo_inputs_data = None
    if config["prior"] == "vampprior_data" or (
            config["prior"] in ("vampprior", "weighted_vampprior") and config["pseudo_inputs_init"] == "data"):
        # All training images: build_model draws K of them at random, seeded by --seed.
        pseudo_inputs_data = data.as_numpy(config["dataset"], "train", data_dir=config["data_dir"],
                                           manual_dir=config["manual_dir"])
    return splits, train_for_epoch, pseudo_inputs_data


def evaluate_best(config, test_dataset, summary=None):
    """Evaluates the best weights of a run on the test set.

    Writes `results.json` (`test`: `tfvamp.evaluation.evaluate`'s summary plus the best epoch;
    `training`: how training ended), TensorBoard scalars `test/...`, and pictures
    (`<model_dir>/pictures`, TensorBoard `test_images/...`; a prefix of their own, since the
    pictures include a histogram called `log_likelihood`). Returns the results dict.
    """
    model_dir = config["model_dir"]
    summary = dict(summary or {})
    model, _ = checkpointing.load_model(model_dir, "best")
    cap = int(config["max_eval_batches"])
    dataset = test_dataset.take(cap) if cap else test_dataset
    test, per_example = evaluation.evaluate(model, dataset, num_samples=config["eval_samples"],
                                            chunk_size=config["eval_chunk_size"] or None,
                                            progress=config["progress"])
    extra = {"best_epoch": summary.get("best_epoch"), "eval_samples": int(config["eval_samples"]),
             "partial_test_set": bool(cap)}
    path = evaluation.save_results(model_dir, test, split="test", **extra)
    step = int(summary.get("epochs_trained", 0))
    writer = tf.summary.create_file_writer(os.path.join(model_dir, checkpointing.TENSORBOARD_DIR))
    evaluation.write_summaries(writer, test, step=step, prefix="test")
    # Random positions: static MNIST's test file is in class order, its first batch one digit.
    images = evaluation.pick_images(dataset, int(config["eval_batch_size"]), test["num_examples"],
                                    seed=int(config["seed"]))
    pixel = config["model"] == "pixelhvae"  # autoregressive sampling is slow on CPU
    evaluation.write_pictures(model, images, os.path.join(model_dir, "pictures"),
                              log_likelihoods=per_example["log_likelihood"], writer=writer, step=step,
                              num_samples=min(int(config["num_images"]), 16 if pixel else 64),
                              seed=int(config["seed"]), prefix="test_images")
    writer.close()
    with open(path) as f:
        results = json.load(f)
    results["training"] = summary
    checkpointing.write_json(path, results)
    return results


def export_best(config):
    """Exports the best weights of a run as a SavedModel at `config['export_dir']`."""
    model, _ = checkpointing.load_model(config["model_dir"], "best")
    return export.export_saved_model(model, config["export_dir"], config=config)


def train(config, strategy=None, splits=None, pseudo_inputs_data=None, train_for_epoch=None):
    """Runs (or resumes) a whole training run described by a validated `config`.

    `splits` (and `train_for_epoch`, `pseudo_inputs_data`) default to the config's dataset
    (`load_data`); pass them to train on other data.

    Returns the results dict (also in `<model_dir>/results.json` when evaluated).
    Raises `TrainingDiverged` on a non-finite training loss.
    """
    strategy = strategy or distribute.make_strategy(config["strategy"])  # first: before any TF op
    model_dir = config["model_dir"]
    is_chief = distribute.task_info(strategy)[2]
    _check_resume(model_dir, config)
    if is_chief:
        checkpointing.save_config(model_dir, config)
    if splits is None:
        splits, train_for_epoch, loaded = load_data(config)
        pseudo_inputs_data = loaded if pseudo_inputs_data is None else pseudo_inputs_data
    trainer = Trainer(config, strategy, splits, pseudo_inputs_data, train_for_epoch)
    print(f"Training {config['model']} + {config['prior']} on {config['dataset']} with "
          f"{type(strategy).__name__} ({trainer.num_replicas} replica(s){', XLA' if trainer.jit_compile else ''}) "
          f"into {model_dir}", flush=True)
    summary = trainer.fit()
    results = {"training": summary}
    results_file = os.path.join(model_dir, checkpointing.RESULTS_FILE)
    if summary.get("already_complete") and os.path.exists(results_file):
        print(f"Nothing left to do: results are in {results_file}", flush=True)
        with open(results_file) as f:
            results = json.load(f)
    elif is_chief:
        if config["evaluate"]:
            results = evaluate_best(config, splits.test, summary)
            test = results["test"]
            gray = f", {test['bits_per_dim']:.4f} bits/dim" if isinstance(test.get("bits_per_dim"), float) else ""
            print(f"Test log-likelihood of the best model (epoch {summary['best_epoch']}): "
                  f"{test.get('log_likelihood')} nats{gray}; ELBO {test.get('elbo')}. Results in {results_file}",
                  flush=True)
        if config["export"]:
            results["saved_model"] = export_best(config)
            if config["evaluate"]:
                checkpointing.write_json(results_file, results)
            print(f"SavedModel of the best model: {results['saved_model']}", flush=True)
    trainer._agree([0.0])  # pylint: disable=protected-access  # workers wait for the chief
    return results


# ---- XLA measurement --------------------------------------------------------------------------
def benchmark_step(config, steps=20, rounds=5, strategy=None):
    """Times the train step with and without XLA on random data of the dataset's shape.

    Both variants are built and compiled first, then timed in alternating rounds of `steps`
    steps (so a busy machine slows both alike); the best round counts.

    Returns:
      {jit_compile (bool): seconds per step}.
    """
    strategy = strategy or distribute.make_strategy(config["strategy"])
    shape = [config["batch_size"]] + list(config["input_shape"])
    images = np.random.default_rng(0).random(shape).astype(np.float32)
    if config["likelihood"] == "bernoulli":
        images = (images > 0.5).astype(np.float32)
    images = tf.constant(images)
    trainers = {}
    for jit in (False, True):
        trainer = Trainer(dict(config, jit_compile="true" if jit else "false"), strategy)
        if trainer.jit_compile == jit:
            trainers[jit] = trainer
            for _ in range(3):  # trace, compile, warm up
                trainer.train_step(images).numpy()
    timings = {jit: math.inf for jit in trainers}
    for _ in range(int(rounds)):
        for jit, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(int(steps)):
                out = trainer.train_step(images)
            out.numpy()
            timings[jit] = min(timings[jit], (time.perf_counter() - start) / int(steps))
    return timings
