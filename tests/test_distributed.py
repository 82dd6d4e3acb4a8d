"""tf.distribute: MirroredStrategy over two logical CPUs equals one device; two
MultiWorkerMirroredStrategy workers on loopback train together to identical weights.

Both run in subprocesses: the CPU split must happen before TensorFlow initialises, and each
worker is its own process.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import run_workers
from tfvamp import distribute

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def run_python(code, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


MIRRORED = """
import collections, json, sys
import numpy as np
from tfvamp import distribute
devices = distribute.split_cpu(2)          # before TensorFlow initialises
import tensorflow as tf
from tfvamp import flags as tflags, training

Info = collections.namedtuple("Info", "name image_shape likelihood pseudo_inputs_mean pseudo_inputs_std "
                                      "num_examples dynamic_binarization")
INFOS = {"gray": Info("frey_faces", (28, 20, 1), "discretized_logistic", 0.5, 0.02,
                      {"train": 100, "validation": 10, "test": 10}, False),
         "binary": Info("static_mnist", (28, 28, 1), "bernoulli", 0.05, 0.01,
                        {"train": 100, "validation": 10, "test": 10}, False)}
# One strategy of each kind per process (as in a real run; separate MirroredStrategy objects in
# one process can collide in their collective keys).
one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
two_cpus = tf.distribute.MirroredStrategy(devices)
results = {}
for model, data in (("vae", "binary"), ("hvae", "gray"), ("convhvae", "binary"), ("pixelhvae", "binary")):
    info = INFOS[data]
    config = tflags.validate_config(tflags.default_config(
        dataset=info.name, model=model, prior="vampprior", num_components=6, z1_size=6, z2_size=6,
        batch_size=8, warmup_epochs=10, model_dir="/nonexistent", jit_compile="false"), info=info)
    single = training.Trainer(config, one_device)
    mirrored = training.Trainer(config, two_cpus)
    assert mirrored.num_replicas == 2
    for a, b in zip(single.model.weights, mirrored.model.weights):
        b.assign(a.numpy())                 # same initial weights
    for t in (single, mirrored):
        t.beta.assign(0.3)
    rng = np.random.default_rng(1)
    x = rng.random((8,) + info.image_shape).astype(np.float32)
    grad_error = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-30))
                     for a, b in zip(single.global_gradients(x), mirrored.global_gradients(x)))
    losses = []
    for step in range(2):
        x = rng.random((8,) + info.image_shape).astype(np.float32)
        if data == "binary":
            x = (x > 0.5).astype(np.float32)
        losses.append([single.train_step(x).numpy().tolist(), mirrored.train_step(x).numpy().tolist()])
    diffs = np.concatenate([np.abs(a.numpy() - b.numpy()).ravel()
                            for a, b in zip(single.model.weights, mirrored.model.weights)])
    slots = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(single.optimizer.variables, mirrored.optimizer.variables))
    results[model] = {"losses": losses, "grad_error": grad_error, "weights": float(diffs.max()),
                      "weights_off": float(np.mean(diffs > 1e-6)), "slots": slots,
                      "iterations": [int(single.optimizer.iterations.numpy()), int(mirrored.optimizer.iterations.numpy())]}
print("RESULT " + json.dumps(results))
"""


def test_mirrored_two_cpus_equals_one_device():
    """Same global batch, same initial weights: the two-replica run gives the same loss terms,
    the same (all-reduced) gradient, and the same updated weights and Adam moments as one device,
    for every model family. (Every replica takes its rows of one global noise draw; the loss is
    scaled by the global batch; AdamNormGrad normalises the all-reduced gradient.)"""
    result = run_python(MIRRORED, timeout=400)
    assert result.returncode == 0, result.stderr[-5000:]
    results = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert sorted(results) == ["convhvae", "hvae", "pixelhvae", "vae"]
    for model, r in results.items():
        assert r["iterations"] == [2, 2]
        first_single, first_mirrored = r["losses"][0]
        # Step 1 starts from identical weights: identical losses up to summation order.
        np.testing.assert_allclose(first_mirrored, first_single, rtol=1e-5, err_msg=model)
        if model == "pixelhvae":
            # Eight synchronised batch norms (E[x^2] - E[x]^2 from per-replica partial sums,
            # epsilon 1e-5) magnify float32 rounding: the gradients agree to a few percent in
            # float32, and to 1e-13 in float64 (docs/training.md), so this is rounding, not a
            # different computation. Adam's first steps (about lr times the sign of each entry)
            # then differ by up to 2 lr on entries whose gradient is nearly zero.
            assert r["grad_error"] < 5e-2 and r["weights"] < 4 * 5e-4, (model, r)
            continue
        assert r["grad_error"] < 1e-5, (model, r)  # per tensor, relative to its largest entry
        np.testing.assert_allclose(r["losses"][1][1], r["losses"][1][0], rtol=1e-5, err_msg=model)
        # A step moves a weight by about lr = 5e-4. Entries whose gradient nearly cancels to 0
        # are where Adam's g / sqrt(v) magnifies rounding: a few of them differ by up to ~1e-5;
        # everything else agrees to 1e-6 (and a per-replica normalisation would be off everywhere).
        assert r["weights"] < 5e-5 and r["weights_off"] < 1e-3, (model, r)
        assert r["slots"] < 1e-5, (model, r)


def test_multi_worker_two_processes_train_one_epoch_to_identical_weights(tmp_path, real_data_dir):
    """Two workers on loopback (TF_CONFIG) train one full Frey epoch together; both end with
    the same weights, only the chief writes checkpoints/TensorBoard/results, and both exit."""
    data_dir = real_data_dir("frey_faces")
    model_dir = tmp_path / "run"
    driver = tmp_path / "worker.py"
    driver.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        from absl import flags as absl_flags
        from tfvamp import distribute, flags as tflags, run, training
        strategy = distribute.make_strategy("auto")   # MultiWorkerMirroredStrategy, before any op
        fv = absl_flags.FlagValues()
        tflags.define_flags(fv)
        fv(["train.py", "--flagfile=configs/frey.cfg", "--flagfile=configs/quick.cfg", "--epochs=1",
            "--max_steps_per_epoch=0", "--num_components=10", "--z1_size=8", "--z2_size=8",
            "--eval_samples=4", "--noexport", "--noprogress", "--image_every_epochs=1", "--num_images=4",
            "--model_dir=" + sys.argv[1], "--data_dir=" + sys.argv[2]])
        config = tflags.config_from_flags(fv)
        trainer_holder = {}
        original = training.Trainer.fit
        def fit(self, splits):
            trainer_holder["trainer"] = self
            return original(self, splits)
        training.Trainer.fit = fit
        results = run.run(config, strategy)
        trainer = trainer_holder["trainer"]
        print("REPLICAS", trainer.num_replicas, "CHIEF", trainer.is_chief, "STEPS",
              int(trainer.optimizer.iterations.numpy()), flush=True)
        np.savez(sys.argv[3], *[w.numpy() for w in trainer.model.weights])
    """))
    outputs = run_workers(driver, lambda index: [model_dir, data_dir, tmp_path / f"weights{index}.npz"])
    assert "REPLICAS 2 CHIEF True STEPS 15" in outputs[0][0]   # 1565 // 100 global batches
    assert "REPLICAS 2 CHIEF False STEPS 15" in outputs[1][0]
    a, b = np.load(tmp_path / "weights0.npz"), np.load(tmp_path / "weights1.npz")
    assert len(a.files) == len(b.files) > 0
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The chief wrote the run directory; the other worker's temporary copies are gone.
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["checkpoint", "ckpt-1.data-00000-of-00001",
                                                              "ckpt-1.index"]
    assert not [p for p in os.listdir(model_dir / "best") if p.startswith(".worker")]
    assert os.path.exists(model_dir / "results.json")
    assert "Test log-likelihood" in outputs[0][0] and "Test log-likelihood" not in outputs[1][0]


def test_strategy_choice_from_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.cluster_size() == 0
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert distribute.cluster_size() == 3
    with pytest.raises(ValueError, match="names 3 workers"):
        distribute.make_strategy("one_device")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.tf_config()
    with pytest.raises(ValueError, match="Unknown strategy"):
        distribute.make_strategy("tpu")


def test_thread_layout_runs_two_ops_side_by_side_on_two_cores():
    assert distribute.thread_layout(0, cores=2) == (1, 2)  # the measured case
    assert distribute.thread_layout(2, cores=64) == (1, 2)
    assert distribute.thread_layout(1, cores=2) == (1, 1)  # a long run kept to one core
    assert distribute.thread_layout(0, cores=1) == (1, 1)
    assert distribute.thread_layout(0, cores=8) == (8, 8)  # unmeasured: as before
    assert distribute.thread_layout(3, cores=8) == (3, 3)
    assert distribute.thread_layout(0, cores=2, has_gpu=True) == (0, 0)  # TensorFlow's default
    assert distribute.thread_layout(2, cores=2, has_gpu=True) == (1, 2)  # asked for: honoured
    with pytest.raises(ValueError, match="num_threads must be >= 0"):
        distribute.thread_layout(-1, cores=2)


@pytest.mark.parametrize("threads, expected", [(2, (1, 2)), (1, (1, 1)), (3, (3, 3))])
def test_set_threads_sets_tensorflows_pools(threads, expected):
    proc = run_python(f"""
        from tfvamp import distribute
        layout = distribute.set_threads({threads})
        import tensorflow as tf
        tf.constant(1.0) + 1.0  # initialise
        print(layout, (tf.config.threading.get_intra_op_parallelism_threads(),
                       tf.config.threading.get_inter_op_parallelism_threads()))
        try:
            distribute.set_threads(4)  # a change after initialisation
        except RuntimeError as e:
            print("REFUSED", e)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"{expected} {expected}"
    assert lines[1].startswith("REFUSED") and "before anything else uses TensorFlow" in lines[1]
