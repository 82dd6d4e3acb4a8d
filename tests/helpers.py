"""Small helpers shared by the tests (imported as `helpers`: pytest puts tests/ on sys.path)."""
import collections
import glob
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from tfvamp import flags as tflags


def train_briefly(model, data, steps=150, batch=32, lr=3e-3):
    """A few hundred plain Adam steps on random batches of `data`, so a model is not random-init."""
    optimizer = keras.optimizers.Adam(lr)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.loss_terms(x, training=True)["loss"])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(1)
    for _ in range(steps):
        step(tf.constant(data[rng.integers(0, len(data), batch)]))
    return model


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")

Info = collections.namedtuple("Info", "name image_shape likelihood pseudo_inputs_mean pseudo_inputs_std "
                                      "num_examples dynamic_binarization")
Splits = collections.namedtuple("Splits", "train validation test info epochs", defaults=(None,))
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
    shape = tuple(info.image_shape)

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




def free_ports(n):
    """`n` free TCP ports on loopback."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(driver, args, num_workers=2, timeout=300, **env):
    """Runs `python driver *args(index)` as `num_workers` MultiWorkerMirroredStrategy workers on
    loopback (TF_CONFIG), all at once; asserts each exits 0 and returns their (stdout, stderr)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(num_workers)]}
    processes = []
    for index in range(num_workers):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, str(driver)] + [str(a) for a in args(index)], cwd=ROOT,
            env=script_env(TF_CONFIG=tf_config, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in processes:
            outputs.append(p.communicate(timeout=timeout))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    failed = [f"worker {i} exited {p.returncode}:\n{err[-4000:]}"
              for i, (p, (_, err)) in enumerate(zip(processes, outputs)) if p.returncode != 0]
    assert not failed, "\n\n".join(failed)
    return outputs
