"""Counting FLOPs and measuring the machine, for benchmarks.

FLOPs are counted from the traced graph of the exact computation being timed: TensorFlow
registers a FLOP statistic, computed from the static shapes, for every MatMul, Conv2D and
their gradient ops (`ops.get_stats_for_node_def`), so the count follows the layer shapes
of the model as built rather than a hand-written formula. Only those dense linear-algebra
ops are counted ("model FLOPs"); element-wise work is real but is not what the matmul peak
measures.
"""
import collections
import resource
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
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
