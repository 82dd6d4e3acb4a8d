"""Training: the warm-up schedule, early stopping and the distributed training loop.

    trainer = training.Trainer(config)          # a validated config (tfvamp.flags)
    summary = trainer.fit(splits)               # resumes from <model_dir>/checkpoints

The whole run (data, fit, test-set evaluation, export, results.json) is `tfvamp.run`.

* `warmup_beta(epoch, warmup_epochs)`: the KL weight of a (1-based) epoch
  (docs/paper_details.md section 5).
* `EarlyStopping`: the release's patience rule on the validation loss; its state is three
  variables, checkpointed with the run.
* `Trainer`: model + AdamNormGrad under a `tf.distribute` strategy; a compiled train step
  (`strategy.run` inside a `tf.function`, per-replica losses scaled by the global batch);
  validation with beta = 1; a checkpoint every epoch; TensorBoard; the best weights.

Data. One training stream covers every epoch from the first to run (`epoch_stream`): each
epoch is exactly `steps_per_epoch` batches, and one iterator is kept for the whole fit, so no
epoch pays for building a pipeline or tearing an iterator down.

Determinism. Every replica draws the noise of the *whole* global batch from a stateless seed
(the run's seed folded with the optimizer step and a per-draw counter) and keeps its own rows,
so a mirrored run computes exactly what one device would, and a resumed run continues the same
noise stream (the step counter is in the checkpoint). The data order of an epoch depends on
the run's seed and the epoch only (`tfvamp.data`).
"""
import contextlib
import json
import math
import os
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfvamp import checkpointing
from tfvamp import distribute
from tfvamp import evaluation
from tfvamp import noise
from tfvamp import optimizers
from tfvamp import pictures
from tfvamp import priors

STOP_REASONS = ("running", "max_epochs", "early_stopping", "nan_validation_loss")
_NOISE_STREAM, _VALIDATION_STREAM, _IMAGE_STREAM = 0x5EED, 0xE7A1, 0x1A6E


# A validation loss this many times the loss of a model that ignores the data (every pixel
# uniform) means training has diverged: no sane run comes near it.
DIVERGENCE_FACTOR = 100.0


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite, or the validation loss exploded; nothing of that
    epoch was saved."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) stopped the run; the message says where it will resume."""


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


def resolve_jit(setting, model_name):
    """The jit_compile decision: True for 'true', False for 'false' and 'auto' (XLA was measured
    slower than the default for every model on CPUs: docs/training.md).

    PixelHVAE is never compiled: its synchronised batch norm all-reduces (a `merge_call`)
    inside the forward pass, which a nested XLA function cannot contain.
    """
    jit = str(setting).lower() == "true"
    if jit and model_name == "pixelhvae":
        logging.warning("jit_compile is off for pixelhvae: its synchronised batch norm all-reduces inside "
                        "the step, which XLA cannot compile.")
        jit = False
    return jit


def steps_per_epoch(num_train, batch_size, cap=0):
    """Training steps in an epoch: full batches of the training set, at most `cap` (0: no cap)."""
    steps = int(num_train) // int(batch_size)
    return min(steps, int(cap)) if cap else steps


def epoch_stream(splits, first_epoch, steps):
    """One dataset of every epoch's batches from `first_epoch` on, `steps` batches per epoch.

    `splits.epochs(first_epoch)` when the splits provide it (`tfvamp.data`: each epoch's order
    from the run's seed and the epoch); otherwise `splits.train` again for every epoch.
    """
    epochs = getattr(splits, "epochs", None)
    if epochs is not None:
        return epochs(first_epoch)
    train = splits.train
    return tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(lambda _: train.take(steps))


# ---- the trainer ------------------------------------------------------------------------------
class InterruptFlag(threading.Event):
    """Set by Ctrl-C during `fit` (`interrupt_flag`).

    Inside `deferred()` a Ctrl-C only sets the flag; its KeyboardInterrupt is raised when the
    block ends. The end of an epoch (best weights, epoch counter, checkpoint) runs deferred, so
    an interrupt never leaves the counter ahead of the checkpoint on disk, and the resume hint
    names the epoch a re-run really starts from.
    """

    def __init__(self):
        super().__init__()
        self._depth = 0

    @property
    def deferring(self):
        return self._depth > 0

    @contextlib.contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.is_set():
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_flag():
    """Yields an `InterruptFlag` that SIGINT sets, besides raising KeyboardInterrupt as usual
    (outside its `deferred()` blocks).

    Python drops an exception raised in a finaliser (`__del__`, weakref callbacks: TensorFlow
    runs many), so a Ctrl-C landing in one would be lost and training would go on; the loop
    checks the flag after every step. Off the main thread (where handlers cannot be set), and
    where SIGINT is ignored (a background job of a non-interactive shell inherits that, and
    Python keeps it), nothing is installed and the flag is never set.
    """
    flag = InterruptFlag()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield flag
        return

    def handler(signum, frame):
        flag.set()
        if not flag.deferring:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


class Trainer:
    """One training run under a `tf.distribute` strategy.

    Args:
      config: a validated run config (`tfvamp.flags.validate_config`).
      strategy: the `tf.distribute.Strategy` (default: `distribute.make_strategy(config['strategy'])`).
      pseudo_inputs_data: training images `[N >= K, H, W, C]` for `vampprior_data` (or the
        `data` initialisation of the other VampPriors).
    """

    def __init__(self, config, strategy=None, pseudo_inputs_data=None):
        self.config = dict(config)
        self.strategy = strategy or distribute.make_strategy(config["strategy"])
        self.model_dir = config["model_dir"]
        self.num_replicas = int(self.strategy.num_replicas_in_sync)
        self.global_batch = int(config["batch_size"])
        if self.global_batch % self.num_replicas:
            raise ValueError(f"--batch_size={self.global_batch} does not split over {self.num_replicas} "
                             "replicas; use a multiple of the number of replicas.")
        self.local_batch = self.global_batch // self.num_replicas
        self.task_type, self.task_id, self.is_chief = distribute.task_info(self.strategy)
        self.multi_worker = self.task_type is not None
        self.jit_compile = resolve_jit(config["jit_compile"], config["model"])
        # Seeds every initializer, including the layers' unseeded ones, so that --seed fixes
        # the initial weights (multi-worker runs also broadcast the chief's).
        keras.utils.set_random_seed(int(config["seed"]))
        with self.strategy.scope():
            self._build_state(pseudo_inputs_data)
        self.history = []  # one dict per epoch this process ran: epoch, seconds, steps, losses
        self._interrupted = InterruptFlag()  # set by Ctrl-C during fit (`interrupt_flag`)
        grads = self._replica_grads
        self._grads_fn = tf.function(grads, jit_compile=True) if self.jit_compile else grads
        self._train_step = tf.function(self._distributed_step)
        self._train_step_per_replica = tf.function(self._distributed_step_per_replica)
        self._eval_step = tf.function(self._eval_batch, reduce_retracing=True)

    def _build_state(self, pseudo_inputs_data):
        config = self.config
        self.model = checkpointing.model_from_config(config, pseudo_inputs_data)
        self.optimizer = optimizers.make_optimizer(config["optimizer"], config["lr"])
        self.optimizer.build(self.model.trainable_variables)  # slots exist before any restore
        # beta is read inside the compiled step, so it is a variable: a Python float would be
        # frozen into the graph at trace time.
        self.beta = tf.Variable(warmup_beta(1, config["warmup_epochs"]), trainable=False, dtype=tf.float32,
                                name="beta")
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
        self.stop_reason = tf.Variable(0, trainable=False, dtype=tf.int64, name="stop_reason")
        self.train_seconds = tf.Variable(0.0, trainable=False, dtype=tf.float64, name="train_seconds")
        # The noise stream: stateless seeds from this and optimizer.iterations.
        self.noise_seed = tf.Variable([int(config["seed"]), _NOISE_STREAM], trainable=False, dtype=tf.int64,
                                      name="noise_seed")
        self.early_stopping = EarlyStopping(config["early_stopping_epochs"], config["warmup_epochs"])
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

    # -- the compiled step --------------------------------------------------------------------
    def _replica_grads(self, x, seed, replica_id):
        """Forward and backward pass on this replica's rows: (gradients, [3] sums)."""
        noise_fn = noise.replica_noise_fn(seed, replica_id, self.num_replicas)
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

    def _replica_step_own_rows(self, x):
        """A step on this replica's own batch (streamed sources: each replica's input pipeline
        gives it its rows), noise from the step's seed as in `_local_grads`."""
        replica_id = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
        seed = tf.random.experimental.stateless_fold_in(self.noise_seed, self.optimizer.iterations)
        grads, sums = self._grads_fn(x, seed, replica_id)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return sums

    def _distributed_step_per_replica(self, x_per_replica):
        per_replica = self.strategy.run(self._replica_step_own_rows, (x_per_replica,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

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
        """Runs one step; returns the summed [loss, reconstruction, kl] over the global batch.
        `x_global`: the global batch, or (streamed sources on several replicas) a per-replica
        value of each replica's rows."""
        if isinstance(x_global, tf.distribute.DistributedValues):
            return self._train_step_per_replica(x_global)
        x_global = tf.convert_to_tensor(x_global, tf.float32)
        if x_global.shape[0] != self.global_batch:
            raise ValueError(f"train_step takes global batches of {self.global_batch}, got {x_global.shape[0]}.")
        return self._train_step(x_global)

    def train_step_graph(self, x_global):
        """The traced train step for a batch like `x_global` (a concrete function: FLOP counting)."""
        return self._train_step.get_concrete_function(tf.convert_to_tensor(x_global, tf.float32))

    def _eval_batch(self, x, seed):
        """Sums of the beta = 1 terms over a batch, with seeded noise."""
        noise_fn = noise.replica_noise_fn(seed, 0, 1)
        terms = self.model.loss_terms(x, beta=1.0, training=False, noise_fn=noise_fn)
        return tf.stack([tf.reduce_sum(tf.cast(terms[k], tf.float64)) for k in ("loss", "reconstruction", "kl")])

    # -- epochs -------------------------------------------------------------------------------
    def train_epoch(self, epoch, batches, steps):
        """`steps` steps on batches from the iterator (or dataset) `batches`; returns (mean
        [loss, reconstruction, kl] per example, steps, seconds)."""
        iterator = iter(batches) if isinstance(batches, tf.data.Dataset) else batches
        bar = None
        if self.config["progress"] and self.is_chief:
            from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.config['epochs']}", unit="batch",
                       leave=False, dynamic_ncols=True)
        totals = tf.zeros([3], tf.float64)  # on the device: no host round trip per step
        num_steps, start = 0, time.perf_counter()
        for x in iterator:
            totals += tf.cast(self.train_step(x), tf.float64)
            num_steps += 1
            if self._interrupted.is_set():  # a Ctrl-C whose KeyboardInterrupt Python dropped
                raise KeyboardInterrupt
            if bar is not None:
                bar.update(1)
                if num_steps % 10 == 0 or num_steps == steps:
                    bar.set_postfix(loss=f"{float(totals[0]) / (num_steps * self.global_batch):.2f}")
            if num_steps == steps:
                break
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

    def agree(self, values):
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
        lr = float(self.config["lr"])
        if not math.isclose(float(self.optimizer.learning_rate.numpy()), lr, rel_tol=1e-6):
            logging.warning("--lr changed on resume: now %g.", lr)
        self.optimizer.learning_rate.assign(lr)
        return int(self.epoch.numpy())

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
        n = int(self.config["num_images"])
        seed = int(self.config["seed"])
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
        if not int(self.config["image_every_epochs"]):
            return None
        num = max(1, int(self.config["num_images"]) // 2)
        count = (getattr(getattr(splits, "info", None), "num_examples", None) or {}).get("validation")
        if count:  # random positions: a split stored in class order would show one class
            return evaluation.pick_images(splits.validation, num, count, seed=int(self.config["seed"]))
        for x in splits.validation.take(1):
            return x.numpy()[:num]
        return None

    # -- the loop -----------------------------------------------------------------------------
    def steps_per_epoch(self, splits):
        info = getattr(splits, "info", None)
        num_train = (getattr(info, "num_examples", None) or {}).get("train")
        if num_train is None:
            num_train = int(splits.train.cardinality()) * self.global_batch
        return steps_per_epoch(num_train, self.global_batch, self.config["max_steps_per_epoch"])

    def _epoch_stream(self, splits, first_epoch, steps):
        """`epoch_stream`; for a streamed source on several replicas, each input pipeline (each
        worker) reads its own shards (`tfvamp.streaming`) and feeds its replicas their rows."""
        streamed = getattr(getattr(splits, "info", None), "storage", "memory") == "streamed"
        if streamed and self.num_replicas > 1:
            return self.strategy.distribute_datasets_from_function(lambda ctx: splits.epochs(first_epoch, ctx))
        return epoch_stream(splits, first_epoch, steps)

    def fit(self, splits):
        """Trains on `splits` (train, validation) until `epochs`, early stopping or a NaN
        validation loss; resumes from the newest checkpoint. Returns a dict describing how
        training ended (`summary`).

        Raises:
          TrainingDiverged: the training loss of an epoch is not finite (that epoch is not saved).
        """
        start_epoch = self.restore() + 1
        if start_epoch == 1 and self.config.get("init_from"):
            self._init_from(self.config["init_from"])
        reason = STOP_REASONS[int(self.stop_reason.numpy())]
        epochs = int(self.config["epochs"])
        if start_epoch > 1:
            print(f"Resuming from the checkpoint of epoch {start_epoch - 1} in {self.checkpoint_dir} "
                  f"(step {int(self.optimizer.iterations.numpy())}, {self.early_stopping})", flush=True)
        if reason in ("early_stopping", "nan_validation_loss") or start_epoch > epochs:
            reason = "max_epochs" if reason == "running" else reason
            print(f"Training already ended ({reason.replace('_', ' ')}) after epoch {start_epoch - 1}.", flush=True)
            return dict(self.summary(reason), already_complete=True)
        writer = self._writer()
        if start_epoch == 1:
            self._log_config(writer)
        steps = self.steps_per_epoch(splits)
        batches = iter(self._epoch_stream(splits, start_epoch, steps))
        validation_images = self._validation_images(splits)
        reason, clock = "max_epochs", (time.perf_counter(), start_epoch)
        epoch = start_epoch
        try:
            with interrupt_flag() as self._interrupted:
                for epoch in range(start_epoch, epochs + 1):
                    stop, why = self._run_epoch(epoch, batches, steps, splits.validation, writer,
                                                validation_images, clock)
                    if stop:
                        reason = why
                        print(f"Stopping after epoch {epoch}: {reason.replace('_', ' ')}.", flush=True)
                        break
        except KeyboardInterrupt:
            # The counter is never ahead of the checkpoint on disk (each epoch's end runs deferred).
            raise TrainingInterrupted(f"Interrupted in epoch {epoch}; re-run the same command to resume from epoch "
                                      f"{int(self.epoch.numpy()) + 1}.") from None
        finally:
            writer.close()
        return self.summary(reason)

    def _run_epoch(self, epoch, batches, steps, validation, writer, validation_images, clock):
        """One epoch: train, validate, early stopping, checkpoints, logs. Returns (stop, reason)."""
        epoch_start = time.perf_counter()
        self.beta.assign(warmup_beta(epoch, self.config["warmup_epochs"]))
        train, num_steps, train_seconds = self.train_epoch(epoch, batches, steps)
        if not np.all(np.isfinite(train)):
            last = tf.train.latest_checkpoint(self.checkpoint_dir)
            best = tf.train.latest_checkpoint(self.best_dir)
            raise TrainingDiverged(
                f"Training loss is {train[0]} in epoch {epoch} (reconstruction {train[1]}, KL {train[2]}): "
                f"stopped without saving epoch {epoch}. The last good checkpoint is "
                f"{last or 'none (no epoch completed)'}; "
                + (f"the best weights are in {self.best_dir}. " if best else "there are no best weights yet. ")
                + "Try a lower --lr, or check the data for NaNs.")
        val = self.agree(self.evaluate_elbo(validation))
        self._check_divergence(epoch, val[0])
        improved, stop, why = self.early_stopping.update(epoch, val[0])
        with self._interrupted.deferred():  # a Ctrl-C here waits for the checkpoint
            if improved:
                self.save_best(epoch, val[0])
            self.train_seconds.assign_add(train_seconds)
            self.epoch.assign(epoch)
            self.stop_reason.assign(STOP_REASONS.index(why) if stop else 0)
            # The best weights are on disk before the checkpoint that records them.
            self._save(self.checkpoint, self.checkpoint_dir, epoch, keep=int(self.config["checkpoints_to_keep"]))
        epoch_seconds = time.perf_counter() - epoch_start
        examples_per_second = num_steps * self.global_batch / max(train_seconds, 1e-9)
        self.history.append({"epoch": epoch, "seconds": epoch_seconds, "train_seconds": train_seconds,
                             "steps": num_steps, "train_loss": float(train[0]), "validation_loss": float(val[0])})
        self._log_scalars(writer, epoch, train, val, epoch_seconds, examples_per_second)
        every = int(self.config["image_every_epochs"])
        if every and (epoch == clock[1] or epoch % every == 0 or stop or epoch == int(self.config["epochs"])):
            self._log_images(writer, epoch, validation_images)
        writer.flush()
        self._print_status(epoch, train, val, improved, clock)
        return stop, why

    def divergence_bound(self):
        """The validation loss past which training has diverged: DIVERGENCE_FACTOR times the loss
        of the uniform model (log 2 nats per binary pixel, log 256 per 8-bit one)."""
        pixels = int(np.prod(self.model.image_shape))
        per_pixel = math.log(2.0) if self.model.likelihood_name == "bernoulli" else math.log(256.0)
        return DIVERGENCE_FACTOR * pixels * per_pixel

    def _check_divergence(self, epoch, val_loss):
        bound = self.divergence_bound()
        if math.isfinite(val_loss) and val_loss > bound:
            last = tf.train.latest_checkpoint(self.checkpoint_dir)
            raise TrainingDiverged(
                f"Validation loss {val_loss:.4g} in epoch {epoch} is more than {DIVERGENCE_FACTOR:g} times the loss "
                f"of a model that ignores the data ({bound / DIVERGENCE_FACTOR:.4g} nats): training diverged. "
                f"Stopped without saving epoch {epoch}; the last good checkpoint is {last or 'none'}. "
                f"Re-run with a smaller --lr (e.g. {float(self.config['lr']) / 10:g}) and a new --model_dir.")

    def _print_status(self, epoch, train, val, improved, clock):
        """The whole run on one line: epoch/max, beta, losses, best epoch, patience, time."""
        stopper, epochs = self.early_stopping, int(self.config["epochs"])
        elapsed = time.perf_counter() - clock[0]
        done = epoch - clock[1] + 1
        eta = elapsed / done * (epochs - epoch)
        print(f"epoch {epoch}/{epochs} beta {float(self.beta.numpy()):.3g} | train {train[0]:.3f} "
              f"(RE {train[1]:.3f}, KL {train[2]:.3f}) | val {val[0]:.3f} | best {stopper.best_loss:.3f} "
              f"@ {stopper.best_epoch}{' *' if improved else ''} | patience {stopper.counter}/{stopper.patience} "
              f"| {_duration(elapsed)} elapsed, at most {_duration(eta)} to epoch {epochs}", flush=True)

    def summary(self, reason):
        """How training ended: stop reason, epochs, steps, best epoch and loss, seconds."""
        return {"stop_reason": reason, "epochs_trained": int(self.epoch.numpy()),
                "steps": int(self.optimizer.iterations.numpy()),
                "best_epoch": self.early_stopping.best_epoch,
                "best_validation_loss": self.early_stopping.best_loss,
                "train_seconds": float(self.train_seconds.numpy())}


def _duration(seconds):
    """'42s', '7m05s' or '3h12m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
