"""Training: schedule, early stopping, the loop's checkpoints/TensorBoard/NaN handling, flags and
flagfiles, the Frey flagfile end to end, and resuming after SIGKILL.

Small on purpose: tiny models, a few steps per epoch, few importance samples. The real-data
tests build Frey Faces from ../shared/data (conftest's `real_data_dir`) and skip without it.
"""
import collections
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags

from tfvamp import checkpointing
from tfvamp import flags as tflags
from tfvamp import training

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")

Info = collections.namedtuple("Info", "name input_shape likelihood pseudo_inputs_mean pseudo_inputs_std "
                                      "num_examples dynamic_binarization")
Splits = collections.namedtuple("Splits", "train validation test info")
GRAY_INFO = Info("frey_faces", (28, 20, 1), "discretized_logistic", 0.5, 0.02,
                 {"train": 40, "validation": 20, "test": 20}, False)


# ---- helpers ----------------------------------------------------------------------------------
def tiny_config(model_dir, info=GRAY_INFO, **overrides):
    base = dict(dataset=info.name, model="hvae", prior="vampprior", num_components=5, z1_size=4, z2_size=4,
                batch_size=10, eval_batch_size=10, epochs=3, warmup_epochs=2, early_stopping_epochs=1,
                model_dir=str(model_dir), evaluate=False, export=False, progress=False, image_every_epochs=1,
                num_images=4, checkpoints_to_keep=100, strategy="default")
    base.update(overrides)
    return tflags.validate_config(tflags.default_config(**base), info=info)


def synthetic_splits(info=GRAY_INFO, seed=0):
    rng = np.random.default_rng(seed)
    shape = tuple(info.input_shape)

    def make(n, drop):
        x = rng.random((n,) + shape).astype(np.float32)
        return tf.data.Dataset.from_tensor_slices(x).batch(10, drop_remainder=drop)

    n = info.num_examples
    return Splits(make(n["train"], True), make(n["validation"], False), make(n["test"], False), info)


def read_events(tb_dir):
    """{tag: {step: value}} of every summary under `tb_dir`; images/text values are the plugin name."""
    events = collections.defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    events[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
                else:
                    events[value.tag][event.step] = plugin
    return events


def script_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_script(args, timeout=240):
    return subprocess.run([sys.executable, SCRIPT] + list(args), cwd=ROOT, env=script_env(),
                          capture_output=True, text=True, timeout=timeout)


def checkpoint_tensors(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


# ---- schedule and early stopping (SPEC section 5) -------------------------------------------
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
    trainer = training.Trainer(config, tf.distribute.get_strategy(), synthetic_splits())
    scripted = iter([10.0, 9.0, 9.5, 9.6, 9.7, 9.8, 9.9])
    trainer.evaluate_elbo = lambda dataset: np.array([next(scripted), 0.0, 0.0])
    summary = trainer.fit()
    # Epochs 3 (warm-up) hold the counter at 0; epoch 4 (beta = 1) counts 1, epoch 5 counts 2 > 1.
    assert summary["stop_reason"] == "early_stopping" and summary["epochs_trained"] == 5
    assert summary["best_epoch"] == 2 and summary["best_validation_loss"] == 9.0
    events = read_events(os.path.join(config["model_dir"], "tensorboard"))
    assert events["train/beta"] == pytest.approx({e: training.warmup_beta(e, 4) for e in range(1, 6)})
    assert events["early_stopping/counter"] == {1: 0, 2: 0, 3: 0, 4: 1, 5: 2}
    assert tf.train.latest_checkpoint(os.path.join(config["model_dir"], "best")).endswith("ckpt-2")
    for epoch, (patience, beta) in {1: (0, 0.25), 3: (0, 0.75), 4: (1, 1.0), 5: (2, 1.0)}.items():
        state = checkpoint_tensors(os.path.join(config["model_dir"], "checkpoints", f"ckpt-{epoch}"))
        assert state["patience/.ATTRIBUTES/VARIABLE_VALUE"] == patience
        assert state["beta/.ATTRIBUTES/VARIABLE_VALUE"] == pytest.approx(beta)
        assert state["epoch/.ATTRIBUTES/VARIABLE_VALUE"] == epoch
    assert state["stop_reason/.ATTRIBUTES/VARIABLE_VALUE"] == training.STOP_REASONS.index("early_stopping")
    # A finished run does nothing more when started again.
    again = training.Trainer(config, tf.distribute.get_strategy(), synthetic_splits())
    assert again.fit()["already_complete"] is True


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
    passes = []

    def train_for_epoch(epoch):
        passes.append(epoch)
        x = clean.copy()
        if epoch == 2:
            x[7, 3, 3, 0] = np.nan
        return tf.data.Dataset.from_tensor_slices(x).batch(10, drop_remainder=True)

    config = tiny_config(tmp_path / "run", epochs=5)
    with pytest.raises(training.TrainingDiverged, match=r"epoch 2\b.*without saving epoch 2.*ckpt-1"):
        training.train(config, tf.distribute.get_strategy(), synthetic_splits(), train_for_epoch=train_for_epoch)
    assert passes == [1, 2]
    ckpt_dir = os.path.join(config["model_dir"], "checkpoints")
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-1")
    assert not glob.glob(os.path.join(ckpt_dir, "ckpt-2*"))
    model, _ = checkpointing.load_model(config["model_dir"], "latest")
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    model, _ = checkpointing.load_model(config["model_dir"], "best")
    assert np.all(np.isfinite(model.loss_terms(tf.constant(clean[:4]))["loss"].numpy()))


def test_nan_message_from_the_script_and_exit_status(tmp_path, real_data_dir):
    """The command line reports divergence on stderr and exits with status 1: lr = 1e30 breaks it."""
    result = run_script(["--flagfile=configs/frey.cfg", "--flagfile=configs/quick.cfg", "--lr=1e30",
                         f"--model_dir={tmp_path / 'run'}", f"--data_dir={real_data_dir('frey_faces')}",
                         "--noprogress", "--image_every_epochs=0", "--epochs=3"])
    if result.returncode == 0:  # did not diverge on this machine: nothing to check
        pytest.skip("lr=1e30 did not produce a non-finite loss")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ERROR: Training loss is" in result.stderr and "without saving epoch" in result.stderr


# ---- flags ------------------------------------------------------------------------------------
def test_flags_are_validated_with_clear_messages(tmp_path):
    def error(**overrides):
        info = overrides.pop("info", GRAY_INFO)
        with pytest.raises(ValueError) as e:
            tflags.validate_config(tflags.default_config(**dict(dict(dataset=info.name, model_dir=str(tmp_path)),
                                                                **overrides)), info=info)
        return str(e.value)

    assert "K (--num_components) must be an integer >= 1, got 0" in error(num_components=0)
    assert "unknown prior 'vampire'" in error(prior="vampire")
    tiny = Info("frey_faces", (3, 3, 1), "discretized_logistic", 0.5, 0.02, GRAY_INFO.num_examples, False)
    assert "--model=convhvae needs images of at least 4x4" in error(model="convhvae", info=tiny)
    assert "--likelihood=bernoulli cannot model frey_faces" in error(likelihood="bernoulli")
    assert "--batch_size=100 exceeds the 40 training images" in error()
    assert "only 40" in error(prior="vampprior_data", batch_size=10)
    assert "outside [0, 1]" in error(pseudo_inputs_mean=-0.05, batch_size=10)
    assert "--lr must be a positive number" in error(lr=0.0, batch_size=10)
    assert "--model_dir is required" in error(model_dir=None, batch_size=10)
    # Several problems are reported together.
    message = error(z1_size=0, epochs=0, batch_size=10)
    assert "--z1_size" in message and "--epochs" in message


def test_script_rejects_bad_flags_before_doing_anything(tmp_path):
    result = run_script(["--flagfile=configs/frey.cfg", "--prior=vampire", f"--model_dir={tmp_path}"], timeout=120)
    assert result.returncode != 0 and "vampprior" in result.stderr and "prior" in result.stderr
    result = run_script(["--flagfile=configs/frey.cfg", "--num_components=0", f"--model_dir={tmp_path}"], timeout=120)
    assert result.returncode != 0 and "K (--num_components) must be an integer >= 1" in result.stderr
    assert not os.listdir(tmp_path)


EXPERIMENTS = [f"{d}_{m}_{p}" for d in tflags.DATASETS for m in ("vae", "hvae", "convhvae", "pixelhvae")
               for p in ("standard", "vampprior")] + \
    [f"static_mnist_hvae_{p}" for p in ("mog", "vampprior_data", "weighted_vampprior")]


def parse_flagfiles(*paths):
    fv = absl_flags.FlagValues()
    tflags.define_flags(fv)
    fv(["train.py"] + [f"--flagfile={os.path.join(ROOT, p)}" for p in paths])
    return tflags.config_from_flags(fv)


def test_every_paper_experiment_has_a_flagfile_with_the_papers_hyperparameters():
    names = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "configs", "*.cfg"))}
    assert names == set(EXPERIMENTS) | {"frey", "quick"}
    pseudo = {"static_mnist": (0.05, 0.01), "dynamic_mnist": (0.05, 0.01), "omniglot": (0.05, 0.01),
              "caltech101_silhouettes": (0.5, 0.02), "frey_faces": (0.5, 0.02), "histopathology": (0.4, 0.05)}
    for name in EXPERIMENTS:
        config = parse_flagfiles(f"configs/{name}.cfg")
        assert f"{config['dataset']}_{config['model']}_{config['prior']}" == name
        assert (config["lr"], config["batch_size"], config["epochs"], config["warmup_epochs"],
                config["early_stopping_epochs"], config["optimizer"]) == (5e-4, 100, 2000, 100, 50, "adam_norm_grad")
        assert (config["z1_size"], config["z2_size"], config["num_components"], config["eval_samples"]) == \
            (40, 40, 500, 5000)
        assert (config["pseudo_inputs_mean"], config["pseudo_inputs_std"]) == pseudo[config["dataset"]]
        assert config["model_dir"] == f"runs/{name}"
    frey = parse_flagfiles("configs/frey.cfg")
    assert (frey["dataset"], frey["model"], frey["prior"], frey["likelihood"], frey["input_shape"]) == \
        ("frey_faces", "hvae", "vampprior", "discretized_logistic", [28, 20, 1])
    quick = parse_flagfiles("configs/frey.cfg", "configs/quick.cfg")
    assert (quick["model"], quick["epochs"], quick["max_steps_per_epoch"], quick["model_dir"]) == \
        ("hvae", 2, 5, "runs/quick")


def test_resuming_into_a_directory_of_another_run_is_refused(tmp_path):
    config = tiny_config(tmp_path / "run")
    checkpointing.save_config(config["model_dir"], config)
    with pytest.raises(ValueError, match="prior: 'vampprior' -> 'standard'"):
        training.train(dict(config, prior="standard"), tf.distribute.get_strategy(), synthetic_splits())


# ---- the real thing: Frey flagfile end to end, SIGKILL and resume ----------------------------
def test_frey_flagfile_end_to_end_two_epochs(tmp_path, real_data_dir):
    model_dir, export_dir = tmp_path / "frey", tmp_path / "saved_models" / "frey"
    result = run_script(["--flagfile=configs/frey.cfg", "--epochs=2", f"--model_dir={model_dir}",
                         f"--export_dir={export_dir}", f"--data_dir={real_data_dir('frey_faces')}",
                         "--eval_samples=10", "--num_images=16"])
    assert result.returncode == 0, result.stderr[-5000:]
    assert "epoch 2/2" in result.stdout and "Test log-likelihood" in result.stdout
    # Checkpoints every epoch, the best weights, the config.
    assert sorted(os.path.basename(p) for p in glob.glob(str(model_dir / "checkpoints" / "*.index"))) == \
        ["ckpt-1.index", "ckpt-2.index"]
    assert tf.train.latest_checkpoint(str(model_dir / "best")) is not None
    config = checkpointing.load_config(str(model_dir))
    assert (config["model"], config["prior"], config["dataset"], config["epochs"]) == ("hvae", "vampprior", "frey_faces", 2)
    # TensorBoard: per-epoch scalars, image grids, the flags; test results at the end.
    events = read_events(str(model_dir / "tensorboard"))
    for tag in ("train/loss", "train/reconstruction", "train/kl", "validation/loss", "validation/reconstruction",
                "validation/kl", "train/learning_rate", "time/epoch_seconds", "time/examples_per_second",
                "early_stopping/counter"):
        assert set(events[tag]) == {1, 2}, tag
        assert all(math.isfinite(v) for v in events[tag].values()), tag
    assert events["train/beta"] == pytest.approx({1: 0.01, 2: 0.02})
    assert events["train/learning_rate"][1] == pytest.approx(5e-4)
    for tag in ("images/samples", "images/reconstructions", "images/pseudo_inputs"):
        assert events[tag] and set(events[tag].values()) == {"images"}, tag
    assert events["config/flags"] == {0: "text"}
    assert any(tag.startswith("_hparams_") for tag in events)
    assert math.isfinite(events["test/log_likelihood"][2]) and math.isfinite(events["test/bits_per_dim"][2])
    assert events["test_images/samples"] == {2: "images"}
    # results.json: the best model on the test set, gray data in bits/dim.
    with open(model_dir / "results.json") as f:
        results = json.load(f)
    test = results["test"]
    assert test["num_examples"] == 200 and test["num_samples"] == 10
    assert test["log_likelihood"] < 0 and test["bits_per_dim"] == pytest.approx(
        -test["log_likelihood"] / (560 * math.log(2)))
    assert results["training"]["epochs_trained"] == 2
    assert os.path.exists(export_dir / "saved_model.pb")


def test_sigkill_then_rerun_resumes_with_identical_state(tmp_path, real_data_dir):
    model_dir = tmp_path / "run"
    command = [sys.executable, SCRIPT, "--flagfile=configs/frey.cfg", "--flagfile=configs/quick.cfg",
               "--epochs=6", "--max_steps_per_epoch=3", "--warmup_epochs=10", "--noevaluate", "--noexport",
               "--image_every_epochs=0", "--noprogress", f"--model_dir={model_dir}",
               f"--data_dir={real_data_dir('frey_faces')}"]
    process = subprocess.Popen(command, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    ckpt_dir = model_dir / "checkpoints"
    deadline = time.time() + 180
    try:
        while tf.train.latest_checkpoint(str(ckpt_dir)) is None:
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    path = tf.train.latest_checkpoint(str(ckpt_dir))
    saved = checkpoint_tensors(path)
    epoch = int(saved["epoch/.ATTRIBUTES/VARIABLE_VALUE"])
    assert 1 <= epoch < 6, "the run finished before it was killed"

    # Restoring puts back exactly the saved optimizer state, beta, patience, epoch and RNG state.
    parsed = absl_flags.FlagValues()
    tflags.define_flags(parsed)
    parsed(["train.py"] + command[2:])
    trainer = training.Trainer(tflags.config_from_flags(parsed), tf.distribute.get_strategy())
    assert trainer.restore() == epoch
    reader = tf.train.load_checkpoint(path)
    for name, variable in (("beta", trainer.beta), ("patience", trainer.patience), ("epoch", trainer.epoch),
                           ("noise_seed", trainer.noise_seed), ("best_val_loss", trainer.best_val_loss)):
        np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))
    assert float(trainer.beta.numpy()) == pytest.approx(training.warmup_beta(epoch, 10))
    # Keras keeps the optimizer's variables (iterations, learning rate, every m and v) in one list.
    assert len(trainer.optimizer.variables) == 2 + 2 * len(trainer.model.trainable_variables)
    # The checkpoint stores each once: iterations and learning rate under their own names.
    keys = ["optimizer/_iterations", "optimizer/_learning_rate"] + \
        [f"optimizer/_variables/{i}" for i in range(2, len(trainer.optimizer.variables))]
    for key, variable in zip(keys, trainer.optimizer.variables):
        np.testing.assert_array_equal(variable.numpy(), saved[f"{key}/.ATTRIBUTES/VARIABLE_VALUE"], err_msg=key)
    assert int(trainer.optimizer.iterations.numpy()) == 3 * epoch

    # The same command again resumes after the checkpointed epoch and finishes the run.
    result = subprocess.run(command, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from the checkpoint of epoch {epoch}" in result.stdout
    assert f"epoch {epoch + 1}/6" in result.stdout and f"epoch {epoch}/6" not in result.stdout
    final = checkpoint_tensors(tf.train.latest_checkpoint(str(ckpt_dir)))
    assert final["epoch/.ATTRIBUTES/VARIABLE_VALUE"] == 6
    assert final["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 18  # no epoch run twice or skipped
    # --checkpoints_to_keep=3 across both processes.
    assert sorted(glob.glob(str(ckpt_dir / "*.index"))) == [str(ckpt_dir / f"ckpt-{e}.index") for e in (4, 5, 6)]
    # Killed and resumed = uninterrupted: same data per epoch, same noise stream, same weights.
    reference_dir = tmp_path / "reference"
    reference = subprocess.run([c.replace(str(model_dir), str(reference_dir)) for c in command], cwd=ROOT,
                               env=script_env(), capture_output=True, text=True, timeout=240)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = checkpoint_tensors(tf.train.latest_checkpoint(str(reference_dir / "checkpoints")))
    weights = [k for k in expected if "optimizer" in k or k.startswith("model/") or "best_val_loss" in k]
    assert len(weights) > 20
    for key in weights:
        np.testing.assert_allclose(final[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key)
