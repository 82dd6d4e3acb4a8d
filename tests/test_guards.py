"""What a careless user or a crash does to a run, each written as the mistake it defends against:
a kill during export, a bad export dir, two runs in one directory, Ctrl-C, leftovers of a killed
run, a diverging learning rate, missing data, bad flags. Real scripts in subprocesses on Frey."""
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import ROOT, SCRIPT, script_env

QUICK = ["--flagfile=configs/frey.cfg", "--flagfile=configs/quick.cfg", "--num_components=5", "--z1_size=4",
         "--z2_size=4", "--noprogress", "--image_every_epochs=0"]
TRACEBACK = "Traceback (most recent call last)"


def _train(args, data_dir, timeout=240, **popen):
    command = [sys.executable, SCRIPT] + QUICK + [f"--data_dir={data_dir}"] + list(args)
    if popen:
        return subprocess.Popen(command, cwd=ROOT, env=script_env(), text=True, **popen)
    return subprocess.run(command, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=timeout)


def _wait_for(predicate, process, seconds=180):
    deadline = time.time() + seconds
    while not predicate():
        assert process.poll() is None, "the run ended before the moment the test waits for"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _load_saved_model(path):
    code = f"import tensorflow as tf; m = tf.saved_model.load({str(path)!r}); print(m.sample(3, 1).shape)"
    return subprocess.run([sys.executable, "-c", code], env=script_env(), capture_output=True, text=True, timeout=120)


def test_kill_during_export_then_rerun_exports_again(tmp_path, real_data_dir):
    """A run killed while its SavedModel is being written leaves no folder that looks finished;
    the same command again skips training and the evaluation, and exports."""
    model_dir, export_dir = tmp_path / "run", tmp_path / "export" / "frey"
    killer = tmp_path / "kill_in_export.py"
    killer.write_text(textwrap.dedent(f"""
        import os, runpy, signal, sys
        sys.path.insert(0, {ROOT!r})
        from tfvamp import export
        real = export.tf.saved_model.save
        def save_then_die(*args, **kwargs):
            real(*args, **kwargs)          # the graph and variables are written ...
            os.kill(os.getpid(), signal.SIGKILL)   # ... and the process dies before the rename
        export.tf.saved_model.save = save_then_die
        sys.argv = [{SCRIPT!r}] + sys.argv[1:]
        runpy.run_path({SCRIPT!r}, run_name="__main__")
    """))
    args = QUICK + [f"--data_dir={real_data_dir('frey_faces')}", f"--model_dir={model_dir}", f"--export_dir={export_dir}"]
    killed = subprocess.run([sys.executable, str(killer)] + args, cwd=ROOT, env=script_env(), capture_output=True,
                            text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL
    assert not (export_dir / "saved_model.pb").exists()  # nothing at the real path
    assert glob.glob(str(export_dir) + ".incomplete-*")  # the half-written export, off to the side
    with open(model_dir / "results.json") as f:
        assert "test" in json.load(f)  # the evaluation was recorded before the export began
    again = _train([f"--model_dir={model_dir}", f"--export_dir={export_dir}"], real_data_dir("frey_faces"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Training already ended" in again.stdout and "Test log-likelihood" not in again.stdout
    assert "SavedModel of the best model" in again.stdout
    assert not glob.glob(str(export_dir) + ".incomplete-*")
    loaded = _load_saved_model(export_dir)
    assert loaded.returncode == 0 and "(3, 28, 20, 1)" in loaded.stdout, loaded.stderr[-2000:]
    third = _train([f"--model_dir={model_dir}", f"--export_dir={export_dir}"], real_data_dir("frey_faces"))
    assert third.returncode == 0 and "Nothing left to do" in third.stdout


def test_unwritable_export_dir_fails_before_training(tmp_path, real_data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = _train([f"--model_dir={tmp_path / 'run'}", f"--export_dir={blocker / 'frey'}"], real_data_dir("frey_faces"))
    assert result.returncode == 1 and TRACEBACK not in result.stderr
    assert "Cannot write the SavedModel" in result.stderr and "--export_dir" in result.stderr
    assert "epoch 1" not in result.stdout
    assert not (tmp_path / "run").exists()  # nothing half-built, no stray config.json


def test_second_run_into_a_busy_directory_is_refused(tmp_path, real_data_dir):
    model_dir = tmp_path / "run"
    first = _train([f"--model_dir={model_dir}", "--epochs=4", "--noexport"], real_data_dir("frey_faces"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: (model_dir / ".lock").exists(), first)
        second = _train([f"--model_dir={model_dir}", "--epochs=4", "--noexport"], real_data_dir("frey_faces"))
        assert second.returncode == 1 and TRACEBACK not in second.stderr
        assert f"in use by process {first.pid}" in second.stderr
    finally:
        out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-3000:]
    assert "epoch 4/4" in out and not (model_dir / ".lock").exists()  # released at the end


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, real_data_dir):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (model_dir / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout)}))
    result = _train([f"--model_dir={model_dir}", "--epochs=1", "--noexport", "--noevaluate"], real_data_dir("frey_faces"))
    assert result.returncode == 0, result.stderr[-3000:]


def test_ctrl_c_exits_130_with_a_resume_hint_and_the_rerun_resumes(tmp_path, real_data_dir):
    model_dir = tmp_path / "run"
    # Far more epochs than it can run before the signal: a loaded machine must not let it finish first.
    args = [f"--model_dir={model_dir}", "--epochs=2000", "--noexport", "--noevaluate"]
    # SIG_DFL in the child, so that Python installs its KeyboardInterrupt handler as in a terminal:
    # a child of a background job (pytest run with `&` from a script) would inherit SIGINT ignored.
    process = _train(args, real_data_dir("frey_faces"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(lambda: glob.glob(str(model_dir / "checkpoints" / "ckpt-2.index")), process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and TRACEBACK not in err, err[-3000:]
    hint = [line for line in err.splitlines() if "re-run the same command to resume from epoch" in line]
    assert len(hint) == 1 and hint[0].startswith("error: Interrupted in epoch")
    resume_epoch = int(hint[0].rsplit("epoch ", 1)[1].rstrip("."))
    again = _train(args[:1] + ["--epochs=" + str(resume_epoch), "--noexport", "--noevaluate"], real_data_dir("frey_faces"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from the checkpoint of epoch {resume_epoch - 1}" in again.stdout
    assert f"epoch {resume_epoch}/{resume_epoch}" in again.stdout


def test_leftovers_of_a_killed_run_are_removed(tmp_path, real_data_dir):
    model_dir = tmp_path / "run"
    temp = model_dir / "checkpoints" / "ckpt-7_temp"
    temp.mkdir(parents=True)
    (temp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    data_dir = tmp_path / "tfds"
    stale = data_dir / "tfvamp_frey_faces" / "incomplete.ABC123_1.0.0"
    stale.mkdir(parents=True)
    (stale / "tfvamp_frey_faces-train.tfrecord-00000-of-00001").write_bytes(b"half")
    command = [sys.executable, SCRIPT] + QUICK + [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=1",
                                                  "--noexport", "--noevaluate"]
    result = subprocess.run(command, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not temp.exists() and not stale.exists()
    assert (data_dir / "tfvamp_frey_faces" / "1.0.0" / "dataset_info.json").exists()


def test_a_learning_rate_that_diverges_stops_with_advice(tmp_path, real_data_dir):
    result = _train([f"--model_dir={tmp_path / 'run'}", "--lr=1", "--epochs=5", "--max_steps_per_epoch=10",
                     "--noexport"], real_data_dir("frey_faces"))
    assert result.returncode == 1 and TRACEBACK not in result.stderr
    assert "training diverged" in result.stderr and "smaller --lr" in result.stderr


def test_missing_data_unwritable_dir_and_bad_flags_are_one_paragraph(tmp_path):
    env = script_env(TFVAMP_MANUAL_DIR=str(tmp_path / "nothing_here"))
    missing = subprocess.run([sys.executable, SCRIPT, "--flagfile=configs/frey.cfg", f"--model_dir={tmp_path / 'run'}",
                              f"--data_dir={tmp_path / 'tfds'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=240)
    assert missing.returncode == 1 and TRACEBACK not in missing.stderr
    assert "cannot find freyfaces.pkl" in missing.stderr and "Fix:" in missing.stderr
    assert not (tmp_path / "run" / "config.json").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = subprocess.run([sys.executable, SCRIPT, "--flagfile=configs/frey.cfg", f"--model_dir={blocker / 'run'}"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert unwritable.returncode == 1 and TRACEBACK not in unwritable.stderr
    assert "Cannot write the run" in unwritable.stderr and "--model_dir" in unwritable.stderr
    bad_flag = subprocess.run([sys.executable, SCRIPT, "--flagfile=configs/frey.cfg", "--num_components=0",
                               f"--model_dir={tmp_path / 'x'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.strip().splitlines()) <= 4
    assert bad_flag.stderr.startswith("error: Invalid training flags") and "--helpshort" in bad_flag.stderr
    evaluate = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), f"--model_dir={tmp_path}",
                               "--eval_samples=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert evaluate.returncode != 0 and TRACEBACK not in evaluate.stderr and "eval_samples" in evaluate.stderr
    no_run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), f"--model_dir={tmp_path}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert no_run.returncode == 1 and TRACEBACK not in no_run.stderr and "config.json" in no_run.stderr


def test_nan_stop_without_a_good_checkpoint_says_so(tmp_path, real_data_dir):
    result = _train([f"--model_dir={tmp_path / 'run'}", "--lr=1e30", "--epochs=3", "--noexport"],
                    real_data_dir("frey_faces"))
    if "Training loss is" not in result.stderr:
        pytest.skip("lr=1e30 did not give a non-finite training loss in epoch 1 here")
    assert result.returncode == 1 and "there are no best weights yet" in result.stderr
    assert "best/" not in result.stderr.replace("no best weights", "")
