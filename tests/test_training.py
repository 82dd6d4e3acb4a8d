"""Training: the warm-up schedule, early stopping, and the loop's checkpoints, TensorBoard and
NaN handling on synthetic data with tiny models."""
import contextlib
import glob
import os
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import checkpoint_tensors, read_events, synthetic_splits, tiny_config
from tfvamp import checkpointing
from tfvamp import run
from tfvamp import training


# ---- schedule and early stopping (docs/paper_details.md section 5) -------------------------------------------
def test_warmup_beta_follows_the_spec_schedule():
    # beta = min(epoch / 100, 1), epochs counted from 1: epoch 1 trains with 0.01.
    assert [training.warmup_beta(e, 100) for e in (1, 2, 50, 99, 100, 101, 2000)] == \
        [0.01, 0.02, 0.5, 0.99, 1.0, 1.0, 1.0]
    assert training.warmup_beta(1, 0) == 1.0  # no warm-up
    assert training.warmup_beta(3, 4) == 0.75
    with pytest.raises(ValueError):
        training.warmup_beta(0, 100)


def test_early_stopping_counter_is_held_during_warmup_and_stops_after_patience():
    stopper = training.EarlyStopping(patience=2, warmup_epochs=5)
    # Warm-up (epochs 1-4, beta < 1): worse losses do not count.
    log = [stopper.update(e, v) for e, v in enumerate([10.0, 9.0, 9.5, 9.7, 9.8], start=1)]
    assert [improved for improved, _, _ in log] == [True, True, False, False, False]
    assert stopper.best_loss == 9.0 and stopper.best_epoch == 2
    # Epoch 5 has beta = 1: the counter runs from there (the release: `if epoch < warmup: e = 0`).
    assert stopper.counter == 1
    assert stopper.update(6, 9.9)[1:] == (False, None) and stopper.counter == 2
    assert stopper.update(7, 8.0)[:2] == (True, False) and stopper.counter == 0  # improvement resets
    assert stopper.update(8, 8.1)[1] is False
    assert stopper.update(9, 8.1)[1] is False
    assert stopper.update(10, 8.2) == (False, True, "early_stopping")  # counter 3 > patience 2
    # A NaN validation loss stops at once, even during warm-up, and is never "best".
    nan_stopper = training.EarlyStopping(patience=50, warmup_epochs=100)
    nan_stopper.update(1, 5.0)
    assert nan_stopper.update(2, float("nan")) == (False, True, "nan_validation_loss")
    assert nan_stopper.best_loss == 5.0


def test_training_loop_applies_warmup_and_early_stopping_per_epoch(tmp_path):
    """The loop with scripted validation losses: beta per epoch, counter frozen during warm-up,
    the stop epoch, the best weights and the checkpointed state, against the schedule."""
    config = tiny_config(tmp_path / "run", epochs=20, warmup_epochs=4, early_stopping_epochs=1)
    trainer = training.Trainer(config, tf.distribute.get_strategy())
    scripted = iter([10.0, 9.0, 9.5, 9.6, 9.7, 9.8, 9.9])
    trainer.evaluate_elbo = lambda dataset: np.array([next(scripted), 0.0, 0.0])
    summary = trainer.fit(synthetic_splits())
    # Epochs 3 (warm-up) hold the counter at 0; epoch 4 (beta = 1) counts 1, epoch 5 counts 2 > 1.
    assert summary["stop_reason"] == "early_stopping" and summary["epochs_trained"] == 5
    assert summary["best_epoch"] == 2 and summary["best_validation_loss"] == 9.0
    events = read_events(os.path.join(config.training.model_dir, "tensorboard"))
    assert events["train/beta"] == pytest.approx({e: training.warmup_beta(e, 4) for e in range(1, 6)})
    assert events["early_stopping/counter"] == {1: 0, 2: 0, 3: 0, 4: 1, 5: 2}
    assert tf.train.latest_checkpoint(os.path.join(config.training.model_dir, "best")).endswith("ckpt-2")
    for epoch, (patience, beta) in {1: (0, 0.25), 3: (0, 0.75), 4: (1, 1.0), 5: (2, 1.0)}.items():
        state = checkpoint_tensors(os.path.join(config.training.model_dir, "checkpoints", f"ckpt-{epoch}"))
        assert state["patience/.ATTRIBUTES/VARIABLE_VALUE"] == patience
        assert state["beta/.ATTRIBUTES/VARIABLE_VALUE"] == pytest.approx(beta)
        assert state["epoch/.ATTRIBUTES/VARIABLE_VALUE"] == epoch
    assert state["stop_reason/.ATTRIBUTES/VARIABLE_VALUE"] == training.STOP_REASONS.index("early_stopping")
    # A finished run does nothing more when started again.
    again = training.Trainer(config, tf.distribute.get_strategy())
    assert again.fit(synthetic_splits())["already_complete"] is True


def test_beta_is_a_variable_read_by_the_compiled_step(tmp_path):
    """The compiled step reads beta at run time: loss = RE + beta * KL follows assignments to the
    variable without retracing (a Python float would be frozen at trace time)."""
    trainer = training.Trainer(tiny_config(tmp_path / "run"), tf.distribute.get_strategy())
    x = tf.constant(np.random.default_rng(0).random((10, 28, 20, 1)), tf.float32)
    for beta in (0.0, 0.25, 1.0):
        trainer.beta.assign(beta)
        loss, recon, kl = trainer.train_step(x).numpy()
        assert abs(kl) > 1e-3
        assert loss == pytest.approx(recon + beta * kl, rel=1e-5)
    assert trainer._train_step.experimental_get_tracing_count() == 1  # pylint: disable=protected-access


def test_nan_training_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
    """Epoch 2's data holds a NaN: training stops with a message naming the epoch, epoch 2 is not
    saved, and the epoch-1 checkpoint loads with finite weights."""
    rng = np.random.default_rng(0)
    clean = rng.random((40, 28, 20, 1)).astype(np.float32)

    def epochs(first_epoch):
        def epoch_data(epoch):
            x = clean.copy()
            if epoch == 2:
                x[7, 3, 3, 0] = np.nan
            return tf.data.Dataset.from_tensor_slices(x).batch(10, drop_remainder=True)
        stream = epoch_data(first_epoch)
        for epoch in range(first_epoch + 1, 6):
            stream = stream.concatenate(epoch_data(epoch))
        return stream

    config = tiny_config(tmp_path / "run", epochs=5)
    with pytest.raises(training.TrainingDiverged, match=r"epoch 2\b.*without saving epoch 2.*ckpt-1"):
        run.run(config, tf.distribute.get_strategy(), synthetic_splits()._replace(epochs=epochs))
    ckpt_dir = os.path.join(config.training.model_dir, "checkpoints")
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-1")
    assert not glob.glob(os.path.join(ckpt_dir, "ckpt-2*"))
    model, _ = checkpointing.load_model(config.training.model_dir, "latest")
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    model, _ = checkpointing.load_model(config.training.model_dir, "best")
    assert np.all(np.isfinite(model.loss_terms(tf.constant(clean[:4]))["loss"].numpy()))




def test_a_ctrl_c_that_python_drops_in_a_finaliser_is_still_seen():
    """Python ignores an exception raised in __del__; TensorFlow runs many finalisers, so a
    Ctrl-C can land in one. The flag of `interrupt_flag` records it anyway."""
    class SendsCtrlC:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, and its KeyboardInterrupt is dropped

    # Python's own handler, as in a terminal (pytest may run with SIGINT ignored, as a background job).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with training.interrupt_flag() as flag:
            SendsCtrlC()
            time.sleep(0.05)  # no KeyboardInterrupt reaches this frame
            assert flag.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored (a background job): left alone
        with training.interrupt_flag() as flag:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and not flag.is_set()
    finally:
        signal.signal(signal.SIGINT, before)


def test_training_stops_at_the_next_step_once_the_interrupt_flag_is_set(tmp_path, monkeypatch):
    @contextlib.contextmanager
    def already_interrupted():
        flag = training.InterruptFlag()
        flag.set()
        yield flag

    monkeypatch.setattr(training, "interrupt_flag", already_interrupted)
    config = tiny_config(tmp_path / "run", epochs=3)
    trainer = training.Trainer(config, tf.distribute.get_strategy())
    with pytest.raises(training.TrainingInterrupted, match="Interrupted in epoch 1; .* resume from epoch 1"):
        trainer.fit(synthetic_splits())
    assert trainer.history == []  # not one epoch finished


def test_a_ctrl_c_while_an_epoch_is_saved_waits_for_the_checkpoint(tmp_path):
    """A Ctrl-C that lands while epoch 2 is being saved: the checkpoint is completed first, the
    hint names epoch 3, and a re-run resumes from the checkpoint of epoch 2. (Raised at once, it
    left the epoch counter ahead of the checkpoint: the hint said 3, the re-run started at 2.)"""
    config = tiny_config(tmp_path / "run", epochs=3)
    trainer = training.Trainer(config, tf.distribute.get_strategy())
    save = trainer._save

    def save_with_ctrl_c(checkpoint, directory, epoch, keep):
        if epoch == 2 and directory == trainer.checkpoint_dir:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here
        return save(checkpoint, directory, epoch, keep)

    trainer._save = save_with_ctrl_c
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(training.TrainingInterrupted, match="Interrupted in epoch 2; .* resume from epoch 3"):
            trainer.fit(synthetic_splits())
    finally:
        signal.signal(signal.SIGINT, before)
    assert os.path.basename(tf.train.latest_checkpoint(trainer.checkpoint_dir)) == "ckpt-2"
    again = training.Trainer(config, tf.distribute.get_strategy())
    assert again.restore() == 2


def test_whole_epochs_through_the_real_loop_do_not_stall(tmp_path):
    """Epochs of the real loop (a pipeline shaped like the paper datasets': a permutation per
    epoch, gather, map, prefetch, then the validation pass and a checkpoint): none takes more
    than 1.5x the median of the others plus a little. An iterator teardown that waits on a
    timer (tf.data's autotuner did, for up to seconds) would double an epoch this short."""
    from tfvamp import data

    rng = np.random.default_rng(0)
    images = (rng.random((3200, 28, 28)) < 0.15).astype(np.uint8)
    splits = data.from_array(images, 100, eval_batch_size=100)
    config = tiny_config(tmp_path / "run", info=splits.info, model="vae", prior="standard", z1_size=8, batch_size=100,
                         eval_batch_size=100, epochs=4, warmup_epochs=1, image_every_epochs=0,
                         checkpoints_to_keep=1)
    trainer = training.Trainer(config, tf.distribute.get_strategy())
    trainer.fit(splits)
    seconds = [row["seconds"] for row in trainer.history[1:]]  # the first epoch also traces the step
    assert len(seconds) == 3 and trainer.history[-1]["steps"] == 25
    for i, value in enumerate(seconds):
        others = float(np.median(seconds[:i] + seconds[i + 1:]))
        assert value <= 1.5 * others + 0.3, seconds
