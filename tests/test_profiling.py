"""Benchmark machinery: FLOP counts against closed forms from the layer shapes, and the
benchmark script end to end in its quick mode."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfvamp
from tfvamp import models
from tfvamp import profiling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_graph_flops_counts_a_matmul_forward_and_backward():
    m, k, n = 6, 5, 7
    w = tf.Variable(tf.ones([k, n]))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.matmul(x, w))
        return tape.gradient(loss, [x, w])

    counts = profiling.graph_flops(step.get_concrete_function(tf.TensorSpec([m, k])))
    # forward x @ w, backward dx = g @ w^T and dw = x^T @ g: 2 m k n FLOPs each.
    assert counts["total"] == 3 * 2 * m * k * n


def test_graph_flops_refuses_unknown_shapes():
    fn = tf.function(lambda x: tf.matmul(x, tf.ones([3, 2])))
    with pytest.raises(ValueError, match="static"):
        profiling.graph_flops(fn.get_concrete_function(tf.TensorSpec([None, 3])))


def test_op_times_finds_the_ops_of_a_traced_call():
    a, b = tf.random.normal([256, 256]), tf.random.normal([256, 256])
    fn = tf.function(lambda a, b: tf.nn.relu(tf.matmul(a, b)) + 1.0)
    wall, rows = profiling.op_times(fn, a, b, calls=3)
    assert wall > 0
    matmuls = [row for row in rows if "MatMul" in row[1]]
    assert matmuls and matmuls[0][3] == pytest.approx(1.0)  # one per call
    # Seconds per call: each op runs inside its call, and a 256^3 matmul cannot take under
    # 0.1 us (over 300 TFLOP/s on a CPU); picoseconds read as anything else fail one of the two.
    assert all(seconds <= 1.05 * wall for _, _, seconds, _ in rows)
    assert matmuls[0][2] > 1e-7
    assert not any(name.startswith("ExecutorState") for name, _, _, _ in rows)


@pytest.mark.parametrize("prior", ["standard", "vampprior"])
def test_evaluation_flops_match_the_layer_shapes(prior):
    """FLOPs per evaluated image of the VAE's importance sampler, written out from the paper's
    architecture: encoder on the batch and the K pseudo-inputs once, decoder and prior per sample."""
    shape, d, k, batch, chunk, samples = (6, 5, 1), 4, 3, 2, 5, 20
    pixels, hidden = int(np.prod(shape)), models.HIDDEN
    model = tfvamp.build_model("vae", prior, shape, "bernoulli", num_components=k, z1_size=d)
    gated = lambda fan_in: 2 * fan_in * hidden  # noqa: E731  (two kernels per gated layer)
    encoder = gated(pixels) + gated(hidden) + hidden * 2 * d  # multiply-adds per image
    decoder = gated(d) + gated(hidden) + hidden * pixels
    # Once per batch the Bernoulli's linear term also goes through the head: (x - 1/2) @ W^T.
    context = batch * pixels * hidden
    if prior == "vampprior":
        setup = (batch + k) * encoder + context  # the batch and the pseudo-inputs
        per_sample = decoder + (2 * d + 1) * k  # the centred mixture's batched matmul
    else:
        setup, per_sample = batch * encoder + context, decoder
    expected = 2 * (setup + samples * batch * per_sample) / batch
    assert profiling.evaluation_flops(model, batch, samples, chunk) == pytest.approx(expected, rel=1e-12)


def _vae_train_flops(pixels, d, batch):
    """Dense FLOPs of one VAE training step (standard prior), from the paper's layer shapes:
    forward, and the backward pass's two matmuls per forward one (input and weight gradients),
    except the first layer's input gradient, which nothing needs."""
    hidden = models.HIDDEN
    gated = lambda fan_in: 2 * fan_in * hidden  # noqa: E731  (two kernels per gated layer)
    forward = gated(pixels) + gated(hidden) + hidden * 2 * d + gated(d) + gated(hidden) + hidden * pixels
    first_layer = gated(pixels)
    return 2 * batch * (3 * forward - first_layer)


def test_benchmark_script_quick(tmp_path):
    """scripts/benchmark.py --quick: its FLOPs per step against the closed form of the VAE's
    layer shapes, finite rates, the profile and the rows asked for, each in float32 and in the
    mixed mode beside it, with the speed-ups and the bfloat16 / float32 matmul ratios."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--quick", "--models=vae",
         "--components=2", "--op_profile=3", "--compute_dtypes=float32,mixed", "--threads=1",
         f"--output_json={out}"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["model"], r["prior"], r["k"], r["compute_dtype"]) for r in result["rows"]] == [
        ("vae", "standard", 1, "float32"), ("vae", "standard", 1, "mixed"), ("vae", "vampprior", 2, "float32"),
        ("vae", "vampprior", 2, "mixed")]
    standard = result["rows"][0]["train"]
    assert standard["flops_per_step"] == _vae_train_flops(784, 40, result["batch_size"])
    assert result["rows"][1]["train"]["flops_per_step"] == standard["flops_per_step"]  # the same model
    speedups = result["speedups"]
    assert [(e["prior"], e["compute_dtype"]) for e in speedups] == [("standard", "mixed"), ("vampprior", "mixed")]
    for e in speedups:
        assert e["train_speedup"] == pytest.approx(e["step_ms"]["float32"] / e["step_ms"]["mixed"])
        assert 0 < e["eval_speedup"] and 0 < e["eval_speedup_cpu"] and 0 < e["train_speedup_cpu"]
        assert 0 < e["matmul_ratio_beside"]
    assert result["matmul_ratio"] == pytest.approx(result["matmul_peak_flops_bfloat16"] / result["matmul_peak_flops"])
    assert "bfloat16 / float32 =" in proc.stdout and "train speed-up" in proc.stdout
    cpu_peaks = result["matmul_peak_flops_cpu_time"]  # --threads=1: the core's rates by CPU time
    assert cpu_peaks["ratio"] == pytest.approx(cpu_peaks["bfloat16"] / cpu_peaks["float32"])
    assert cpu_peaks["float32"] > 1e9
    for row in result["rows"]:
        assert 0 < row["train"]["seconds_per_step"] < 10 and row["peak_rss_mb"] > 0
        assert len(row["train_ops"]) == 3 and len(row["eval_ops"]) == 3
        assert 1e9 < row["train"]["beside_peak_flops"] and 1e9 < row["eval"]["beside_peak_flops"]
    # The epoch rows: whole epochs of the real loop beside the step alone.
    epochs = result["rows"][2]["epochs"]
    assert len(epochs["epoch_seconds"]) == 3 and epochs["steps"] == 16  # 2000 images, 20% carved, batch 100
    assert epochs["epoch_over_steps"] == pytest.approx(
        epochs["seconds_per_epoch"] / (epochs["steps"] * epochs["step_seconds"]))
    assert 0.5 < epochs["epoch_over_steps"] < 5
    assert 0.3 < epochs["train_over_steps"] <= epochs["epoch_over_steps"]  # the training loop is part of the epoch
    later = epochs["epoch_seconds"][1:]  # the first epoch also traces the step
    assert epochs["seconds_per_epoch"] == pytest.approx(float(np.median(later)))
    assert epochs["slowest_over_median"] == pytest.approx(max(later) / float(np.median(later)))
    # The VampPrior adds the pseudo-inputs' encoder pass and the mixture to the same step.
    assert result["rows"][2]["train"]["flops_per_step"] > standard["flops_per_step"]
    assert "% peak" in proc.stdout and result["machine"]["cpu"]
