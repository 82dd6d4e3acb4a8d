"""The whole run (tfvamp.run, scripts/train.py): the Frey flagfile end to end, resuming after
SIGKILL, refusing another run's directory, divergence from the command line."""
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

from helpers import ROOT, SCRIPT, checkpoint_tensors, read_events, run_script, script_env, synthetic_splits, tiny_config
from tfvamp import checkpointing
from tfvamp import flags as tflags
from tfvamp import run
from tfvamp import training


def test_resuming_into_a_directory_of_another_run_is_refused(tmp_path):
    config = tiny_config(tmp_path / "run")
    checkpointing.save_config(config.training.model_dir, config)
    with pytest.raises(run.RunError, match="prior: 'vampprior' -> 'standard'"):
        run.run(config.replace(prior="standard"), tf.distribute.get_strategy(), synthetic_splits())


def test_nan_message_from_the_script_and_exit_status(tmp_path, real_data_dir):
    """The command line reports divergence on stderr and exits with status 1: lr = 1e30 breaks it."""
    result = run_script(["--flagfile=configs/frey.cfg", "--flagfile=configs/quick.cfg", "--lr=1e30",
                         f"--model_dir={tmp_path / 'run'}", f"--data_dir={real_data_dir('frey_faces')}",
                         "--noprogress", "--image_every_epochs=0", "--epochs=3"])
    if result.returncode == 0:  # did not diverge on this machine: nothing to check
        pytest.skip("lr=1e30 did not produce a non-finite loss")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: Training loss is" in result.stderr and "without saving epoch" in result.stderr


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
    assert (config.model.model, config.model.prior, config.data.dataset, config.training.epochs) == \
        ("hvae", "vampprior", "frey_faces", 2)
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
    # The paper-budget report reads the finished run: merged JSON, curves and a table row.
    report = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "report.py"), "--paper_budget",
                             f"--output_dir={tmp_path / 'report'}", str(model_dir)], cwd=ROOT, env=script_env(),
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    with open(tmp_path / "report" / "frey.json") as f:
        merged = json.load(f)
    assert merged["config"]["model"] == "hvae" and merged["test"]["eval_samples"] == 10
    assert {"epochs_trained", "best_epoch", "stop_reason", "train_seconds"} <= set(merged["training"])
    assert (tmp_path / "report" / "curves.png").exists() and "| frey | 4.51 |" in report.stdout


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
    stopper = trainer.early_stopping
    for name, variable in (("beta", trainer.beta), ("patience", stopper.counter_variable), ("epoch", trainer.epoch),
                           ("noise_seed", trainer.noise_seed), ("best_val_loss", stopper.best_loss_variable)):
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
