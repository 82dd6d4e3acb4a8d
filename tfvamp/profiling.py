"""Counting FLOPs and measuring the machine, for benchmarks.

FLOPs are counted from the traced graph of the exact computation being timed: TensorFlow
registers a FLOP statistic, computed from the static shapes, for every MatMul, Conv2D and
their gradient ops (`ops.get_stats_for_node_def`), so the count follows the layer shapes
of the model as built rather than a hand-written formula. Only those dense linear-algebra
ops are counted ("model FLOPs"); element-wise work is real but is not what the matmul peak
measures.
"""
import collections
import glob
import math
import os
import resource
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

DENSE_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "Conv2DBackpropInput",
             "Conv2DBackpropFilter", "DepthwiseConv2dNative")


def _subgraphs(graph):
    """The graph and the function bodies it calls (while-loop bodies, nested functions)."""
    yield graph
    for fn in getattr(graph, "_functions", {}).values():
        fn_graph = getattr(fn, "graph", None)
        if fn_graph is not None:
            yield from _subgraphs(fn_graph)


def graph_flops(concrete_function, op_types=DENSE_OPS):
    """FLOPs per op type of one call of `concrete_function` (shapes must be static).

    Ops inside loop bodies are counted once per body (callers scale by the trip count).

    Returns:
      dict op type -> FLOPs, plus 'total'.
    """
    counts = collections.Counter()
    for graph in _subgraphs(concrete_function.graph):
        for op in graph.get_operations():
            if op.type not in op_types:
                continue
            try:
                value = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            except (ValueError, TypeError):  # an op with unknown shapes: not countable
                value = None
            if value is None:
                raise ValueError(f"Cannot count FLOPs of {op.type} op {op.name!r}: its shapes are not "
                                 "static. Trace with fully defined input shapes.")
            counts[op.type] += int(value)
    counts["total"] = sum(v for k, v in counts.items() if k != "total")
    return dict(counts)


def matmul_peak(sizes=(1024, 2048, 3072), repeats=5, dtype=tf.float32):
    """The machine's dense matmul throughput in FLOP/s: best over square sizes and repeats."""
    best = 0.0
    fn = tf.function(tf.matmul)
    for n in sizes:
        a = tf.random.normal([n, n], dtype=dtype)
        b = tf.random.normal([n, n], dtype=dtype)
        fn(a, b).numpy()  # compile and warm up
        for _ in range(repeats):
            start = time.perf_counter()
            fn(a, b).numpy()
            best = max(best, 2.0 * n ** 3 / (time.perf_counter() - start))
    return best


def time_call(fn, *args, warmup=2, repeats=5, iterations=10):
    """Median seconds per call of `fn(*args)` over `repeats` timings of `iterations` calls.

    Waits for the results (`.numpy()` on the last output) so asynchronous execution is counted.
    """
    def _block(out):
        for t in tf.nest.flatten(out):
            if hasattr(t, "numpy"):
                t.numpy()

    for _ in range(warmup):
        _block(fn(*args))
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            out = fn(*args)
        _block(out)
        timings.append((time.perf_counter() - start) / iterations)
    return float(np.median(timings))


def peak_rss_bytes():
    """This process's peak resident memory so far.

    Linux's VmHWM is the high-water mark of this address space; `ru_maxrss` would instead
    carry the parent's mark across fork and exec, so every benchmark worker would report
    at least its launcher's memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


# ---- model benchmarks ---------------------------------------------------------------------------
def _block(out):
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def benchmark_training(trainer, x, repeats=5, iterations=30, warmup=3):
    """Times `trainer.train_step` on one fixed global batch (no input pipeline).

    Returns a dict: seconds_per_step (median), steps_per_second, examples_per_second,
    flops_per_step (dense ops of the traced step: forward, backward, optimizer).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    _block(trainer.train_step(x))  # compiles
    start = time.perf_counter()
    _block(trainer.train_step(x))
    # Slow steps (the conv models) get fewer iterations per timing: about 2 s each.
    once = time.perf_counter() - start
    iterations = int(max(1, min(iterations, 2.0 / max(once, 1e-6))))
    seconds = time_call(trainer.train_step, x, warmup=warmup, repeats=repeats, iterations=iterations)
    flops = graph_flops(trainer._train_step.get_concrete_function(x))["total"]
    batch = int(x.shape[0])
    return {"seconds_per_step": seconds, "steps_per_second": 1.0 / seconds,
            "examples_per_second": batch / seconds, "flops_per_step": flops}


def benchmark_input_pipeline(trainer, dataset, x, steps=None):
    """A whole epoch of the training loop against the step alone.

    The loop includes everything an epoch pays for: creating the iterator (which fills the
    shuffle buffer), tf.data's work, and the per-step host code. Timing only a few steps would
    charge the buffer fill to those few, so a whole epoch is timed.

    Returns seconds per step of both and their ratio (near 1: the pipeline keeps up).
    """
    trainer.train_epoch(1, dataset.take(2), steps=2)  # trace the step
    _, num_steps, seconds = trainer.train_epoch(1, dataset if steps is None else dataset.take(steps),
                                                steps=steps)
    step_alone = time_call(trainer.train_step, tf.convert_to_tensor(x, tf.float32), warmup=1, repeats=3,
                           iterations=20)
    loop = seconds / max(num_steps, 1)
    return {"loop_seconds_per_step": loop, "step_seconds": step_alone, "loop_over_step": loop / step_alone,
            "steps": num_steps}


def evaluation_flops(model, batch_size, num_samples, chunk_size, prior_dtype="float32"):
    """Dense FLOPs of `model.log_likelihood` on a batch, counted from traced graphs.

    The estimator runs a set-up (prior: the pseudo-inputs' encodings; the batch's encoders)
    once, then ceil(S / chunk) chunk bodies; both are traced with static shapes here.

    Returns FLOPs per evaluated image.
    """
    x = tf.zeros((int(batch_size),) + tuple(model.image_shape))

    def setup(x):
        encoded, log_prior, prior = model._estimator_setup(x, prior_dtype)
        floats = [t for t in tf.nest.flatten(prior, expand_composites=True) if t.dtype.is_floating]
        return tf.nest.flatten(encoded) + floats, log_prior, encoded

    def setup_only(x):
        return setup(x)[0]

    def setup_and_chunk(x):
        tensors, log_prior, encoded = setup(x)
        terms = model._terms(x, encoded, int(chunk_size), log_prior, None, False)
        return tensors + list(terms)

    base = graph_flops(tf.function(setup_only).get_concrete_function(x))["total"]
    with_chunk = graph_flops(tf.function(setup_and_chunk).get_concrete_function(x))["total"]
    num_chunks = -(-int(num_samples) // int(chunk_size))
    return (base + num_chunks * (with_chunk - base)) / int(batch_size)


def benchmark_evaluation(model, x, num_samples, chunk_size=None, repeats=2, prior_dtype="float32"):
    """Times `model.log_likelihood(x, num_samples)` (IS, float64 accumulation).

    Returns a dict: images_per_second (best of `repeats`), chunk_size, flops_per_image.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    batch = int(x.shape[0])
    chunk = int(chunk_size or model.default_chunk_size(batch, num_samples))
    model.log_likelihood(x, num_samples=chunk, chunk_size=chunk, prior_dtype=prior_dtype).numpy()  # warm up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        model.log_likelihood(x, num_samples=num_samples, chunk_size=chunk, prior_dtype=prior_dtype).numpy()
        best = min(best, time.perf_counter() - start)
    return {"images_per_second": batch / best, "seconds": best, "chunk_size": chunk,
            "prior_dtype": prior_dtype,
            "flops_per_image": evaluation_flops(model, batch, num_samples, chunk, prior_dtype)}


# ---- where the time goes ------------------------------------------------------------------------
def op_times(fn, *args, calls=10, warmup=2):
    """Per-op time of `calls` calls of `fn(*args)`, from a TensorFlow profiler trace.

    TensorFlow's executor runs independent ops concurrently (two at a time on two cores), so
    the times are each op's wall time while it ran, and they can sum to more than the calls'
    wall time; read them as shares, not as a partition.

    Returns:
      (wall seconds per call, list of (op name, op type, seconds per call, count per call),
      slowest first).
    """

    # An internal module (TF 2.20's path), imported only when a trace is asked for.
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel

    for _ in range(warmup):
        _block(fn(*args))
    logdir = tempfile.mkdtemp(prefix="tfvamp_profile_")
    try:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        _block(out)
        wall = (time.perf_counter() - start) / calls
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
            with open(path, "rb") as f:
                space.MergeFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    seconds, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's op events
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith(("ExecutorState", "ParallelFor")):
                    continue  # executor bookkeeping, not an op
                seconds[name] += event.duration_ps * 1e-12
                counts[name] += 1
    rows = [(name.rsplit(":", 1)[0], name.rsplit(":", 1)[1], total / calls, counts[name] / calls)
            for name, total in seconds.most_common()]
    return wall, rows
