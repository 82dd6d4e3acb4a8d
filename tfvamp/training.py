"""Training: the warm-up schedule, early stopping and the distributed training loop.

    trainer = training.Trainer(config)          # a validated config (tfvamp.flags)
    summary = trainer.fit(splits)               # resumes from <model_dir>/checkpoints

The whole run (data, fit, test-set evaluation, export, results.json) is `tfvamp.run`.

* `warmup_beta(epoch, warmup_epochs)`: the KL weight of a (1-based) epoch
  (docs/paper_details.md section 5); `WarmUp`, the same for `model.fit`.
* `EarlyStopping`: the release's patience rule on the validation loss; its state is three
  variables, checkpointed with the run. (These three live in `tfvamp.schedule`.)
* `Trainer`: model + AdamNormGrad under a `tf.distribute` strategy; a compiled train step
  (`strategy.run` inside a `tf.function`, per-replica losses scaled by the global batch);
  validation with beta = 1; a checkpoint every epoch; TensorBoard; the best weights.

`Trainer` is the loop (here: `fit`, an epoch, validation, the stop rules) and three parts it
is made of, each a class of methods in its own module:

* `tfvamp.train_state.TrainState`: the run's variables, their `tf.train.Checkpoint`, saving
  (every epoch, the best weights) and restoring;
* `tfvamp.train_step.TrainStep`: the compiled train and evaluation steps;
* `tfvamp.train_logging.TrainLogging`: TensorBoard and the console's epoch line.

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
import math
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfvamp import distribute
# Re-exported: `tfvamp.training.WarmUp`, `warmup_beta` and `EarlyStopping`, as before the split.
from tfvamp.schedule import EarlyStopping, WarmUp, warmup_beta  # noqa: F401
from tfvamp.train_logging import TrainLogging
from tfvamp.train_state import TrainState
from tfvamp.train_step import TrainStep

STOP_REASONS = ("running", "max_epochs", "early_stopping", "nan_validation_loss")
_VALIDATION_STREAM = 0xE7A1


# A validation loss this many times the loss of a model that ignores the data (every pixel
# uniform) means training has diverged: no sane run comes near it.
DIVERGENCE_FACTOR = 100.0


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite, or the validation loss exploded; nothing of that
    epoch was saved."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) stopped the run; the message says where it will resume."""


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


class Trainer(TrainState, TrainStep, TrainLogging):
    """One training run under a `tf.distribute` strategy.

    Args:
      config: a validated run config (`tfvamp.flags.validate_config`).
      strategy: the `tf.distribute.Strategy` (default: `distribute.make_strategy(config.training.strategy)`).
      pseudo_inputs_data: training images `[N >= K, H, W, C]` for `vampprior_data` (or the
        `data` initialisation of the other VampPriors).
    """

    def __init__(self, config, strategy=None, pseudo_inputs_data=None):
        self.config = config
        self.strategy = strategy or distribute.make_strategy(config.training.strategy)
        self.model_dir = config.training.model_dir
        self.num_replicas = int(self.strategy.num_replicas_in_sync)
        self.global_batch = int(config.training.batch_size)
        if self.global_batch % self.num_replicas:
            raise ValueError(f"--batch_size={self.global_batch} does not split over {self.num_replicas} "
                             "replicas; use a multiple of the number of replicas.")
        self.local_batch = self.global_batch // self.num_replicas
        self.task_type, self.task_id, self.is_chief = distribute.task_info(self.strategy)
        self.multi_worker = self.task_type is not None
        self.jit_compile = resolve_jit(config.training.jit_compile, config.model.model)
        # Seeds every initializer, including the layers' unseeded ones, so that --seed fixes
        # the initial weights (multi-worker runs also broadcast the chief's).
        keras.utils.set_random_seed(int(config.model.seed))
        with self.strategy.scope():
            self._build_state(pseudo_inputs_data)
        self.history = []  # one dict per epoch this process ran: epoch, seconds, steps, losses
        self._interrupted = InterruptFlag()  # set by Ctrl-C during fit (`interrupt_flag`)
        self._build_steps()

    # -- epochs -------------------------------------------------------------------------------
    def train_epoch(self, epoch, batches, steps):
        """`steps` steps on batches from the iterator (or dataset) `batches`; returns (mean
        [loss, reconstruction, kl] per example, steps, seconds)."""
        iterator = iter(batches) if isinstance(batches, tf.data.Dataset) else batches
        bar = None
        if self.config.training.progress and self.is_chief:
            from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.config.training.epochs}", unit="batch",
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
        cap = int(self.config.evaluation.max_eval_batches)
        if cap:
            dataset = dataset.take(cap)
        base = tf.constant([int(self.config.model.seed), _VALIDATION_STREAM], tf.int64)
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

    # -- the loop -----------------------------------------------------------------------------
    def steps_per_epoch(self, splits):
        info = getattr(splits, "info", None)
        num_train = (getattr(info, "num_examples", None) or {}).get("train")
        if num_train is None:
            num_train = int(splits.train.cardinality()) * self.global_batch
        return steps_per_epoch(num_train, self.global_batch, self.config.training.max_steps_per_epoch)

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
        if start_epoch == 1 and self.config.training.init_from:
            self._init_from(self.config.training.init_from)
        reason = STOP_REASONS[int(self.stop_reason.numpy())]
        epochs = int(self.config.training.epochs)
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
        self.beta.assign(warmup_beta(epoch, self.config.training.warmup_epochs))
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
            self._save(self.checkpoint, self.checkpoint_dir, epoch,
                       keep=int(self.config.training.checkpoints_to_keep))
        epoch_seconds = time.perf_counter() - epoch_start
        examples_per_second = num_steps * self.global_batch / max(train_seconds, 1e-9)
        self.history.append({"epoch": epoch, "seconds": epoch_seconds, "train_seconds": train_seconds,
                             "steps": num_steps, "train_loss": float(train[0]), "validation_loss": float(val[0])})
        self._log_scalars(writer, epoch, train, val, epoch_seconds, examples_per_second)
        every = int(self.config.training.image_every_epochs)
        last = epoch == int(self.config.training.epochs)
        if every and (epoch == clock[1] or epoch % every == 0 or stop or last):
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
                f"Re-run with a smaller --lr (e.g. {float(self.config.training.lr) / 10:g}) and a new --model_dir.")

    def summary(self, reason):
        """How training ended: stop reason, epochs, steps, best epoch and loss, seconds."""
        return {"stop_reason": reason, "epochs_trained": int(self.epoch.numpy()),
                "steps": int(self.optimizer.iterations.numpy()),
                "best_epoch": self.early_stopping.best_epoch,
                "best_validation_loss": self.early_stopping.best_loss,
                "train_seconds": float(self.train_seconds.numpy())}
