"""A newcomer's console: no TensorFlow start-up noise from the scripts or `import tfvamp`, and two
quick runs of different experiments side by side in one checkout."""
import os
import subprocess
import sys

from helpers import ROOT, script_env

NOISE = ("cuInit", "cpu_feature_guard", "oneDNN custom operations", "rebuild TensorFlow", "Local rendezvous",
         "will be renamed", "cuda drivers", "I tensorflow/", "Traceback")


def test_import_tfvamp_prints_nothing():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run([sys.executable, "-c", "import tfvamp"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_two_quick_runs_side_by_side_with_quiet_consoles(tmp_path, real_data_dir):
    env = script_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the scripts must be quiet on their own
    outputs = {}
    for flagfile in ("frey_faces_hvae_vampprior", "frey_faces_vae_standard"):
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
             f"--flagfile={ROOT}/configs/{flagfile}.cfg", f"--flagfile={ROOT}/configs/quick.cfg",
             f"--data_dir={real_data_dir('frey_faces')}", "--noprogress"],
            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[flagfile] = result
        for line in NOISE:
            assert line not in result.stderr, (line, result.stderr[-2000:])
        assert result.stderr.strip() == ""
        assert (tmp_path / "runs" / "quick" / flagfile / "results.json").exists()
        assert (tmp_path / "runs" / "quick" / flagfile / "saved_model" / "saved_model.pb").exists()
        assert "View the run: tensorboard --logdir" in result.stdout
    for script, args in (("evaluate.py", [f"--model_dir=runs/quick/frey_faces_vae_standard", "--eval_samples=4",
                                          "--max_batches=1", "--noprogress", "--num_pictures=4",
                                          f"--data_dir={real_data_dir('frey_faces')}"]),
                         ("sample.py", ["--saved_model=runs/quick/frey_faces_vae_standard/saved_model",
                                        "--num_samples=4"])):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script)] + args, cwd=str(tmp_path),
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not any(line in result.stderr for line in NOISE), result.stderr[-2000:]
    assert (tmp_path / "runs" / "quick" / "frey_faces_vae_standard" / "saved_model_samples.png").exists()
