"""Counting FLOPs, measuring the machine, and timing training and evaluation, for benchmarks.

FLOPs are counted from the traced graph of the exact computation being timed, from each
dense op's static shapes: MatMul 2 m n k, BatchMatMul the same per batch entry, Conv2D
2 x outputs x (kernel area x input channels), and the two convolution gradients alike. So the
count follows the model as built rather than a hand-written formula. Only these dense ops are
counted ("model FLOPs"); element-wise work is real but is not what the matmul peak measures.
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

from tfvamp import estimator
from tfvamp import training

DENSE_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "Conv2DBackpropInput",
             "Conv2DBackpropFilter")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If", "StatelessIf")


def _static_shape(tensor, op):
    if not tensor.shape.is_fully_defined():
        raise ValueError(f"Cannot count FLOPs of {op.type} op {op.name!r}: its shapes are not static "
                         f"({tensor.shape}). Trace with fully defined input shapes.")
    return tensor.shape.as_list()


def op_flops(op):
    """Dense FLOPs of one MatMul / BatchMatMul / Conv2D(-gradient) op, from its static shapes."""
    if op.type == "MatMul":
        a = _static_shape(op.inputs[0], op)
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return 2 * k * int(np.prod(_static_shape(op.outputs[0], op)))
    if op.type.startswith("BatchMatMul"):
        a = _static_shape(op.inputs[0], op)
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2 * k * int(np.prod(_static_shape(op.outputs[0], op)))
    strides = op.get_attr("strides")
    if op.type == "Conv2D":  # output elements x a kernel window each
        kernel = _static_shape(op.inputs[1], op)
        return 2 * int(np.prod(_static_shape(op.outputs[0], op))) * kernel[0] * kernel[1] * kernel[2]
    if op.type == "Conv2DBackpropInput":  # as many multiply-adds as the forward convolution
        image = _static_shape(op.outputs[0], op)
        kernel = _static_shape(op.inputs[1], op)
    elif op.type == "Conv2DBackpropFilter":
        image = _static_shape(op.inputs[0], op)
        kernel = _static_shape(op.outputs[0], op)
    else:
        raise ValueError(f"op_flops counts {DENSE_OPS}, not {op.type}.")
    return 2 * int(np.prod(image)) * int(np.prod(kernel)) // (image[-1] * strides[1] * strides[2])


def graph_flops(concrete_function, op_types=DENSE_OPS):
    """FLOPs per op type of one call of `concrete_function` (shapes must be static).

    Dense ops inside nested function bodies (loops, conditionals, nested `tf.function`s) have
    no static shapes to read here: a graph with any is refused, so that nothing is silently
    left out; trace the loop body on its own instead.

    Returns:
      dict op type -> FLOPs, plus 'total'.
    """
    graph = concrete_function.graph
    counts = collections.Counter()
    for op in graph.get_operations():
        if op.type in op_types:
            counts[op.type] += op_flops(op)
    for function in graph.as_graph_def().library.function:
        hidden = sorted({node.op for node in function.node_def if node.op in op_types})
        if hidden:
            raise ValueError(f"Cannot count FLOPs inside the nested function {function.signature.name!r} "
                             f"(it holds {', '.join(hidden)}): trace its body on its own.")
    counts["total"] = sum(counts.values())
    return dict(counts)


def matmul_peak(sizes=(1024, 2048, 3072), repeats=5, dtype=tf.float32, cpu=False):
    """The machine's dense matmul throughput in FLOP/s: best over square sizes and repeats.

    Each size is timed as one matmul and as two independent ones in the same call, so that the
    peak is the machine's whatever the thread layout (`distribute.thread_layout`: with one
    intra-op thread per op, one matmul uses one core and two run side by side).
    `cpu=True` times with this process's CPU time instead of the wall clock: per thread, and
    not stretched by other processes on a shared host (with one thread, the core's rate).
    """
    best = 0.0
    single = tf.function(tf.matmul)
    pair = tf.function(lambda a, b, c, d: (tf.matmul(a, b), tf.matmul(c, d)))
    clock = time.process_time if cpu else time.perf_counter
    for n in sizes:
        a, b, c, d = (tf.random.normal([n, n], dtype=dtype) for _ in range(4))
        for fn, args, count in ((single, (a, b), 1), (pair, (a, b, c, d), 2)):
            _block(fn(*args))  # compile and warm up
            for _ in range(repeats):
                start = clock()
                _block(fn(*args))
                best = max(best, count * 2.0 * n ** 3 / max(clock() - start, 1e-9))
    return best


def time_call(fn, *args, warmup=2, repeats=5, iterations=10, cpu=False):
    """Median seconds per call of `fn(*args)` over `repeats` timings of `iterations` calls.

    Waits for the results (`.numpy()` on the last output) so asynchronous execution is counted.
    `cpu=True` also returns the median CPU seconds of this process per call: with one thread
    (`--threads 1`) that is the work itself, which other processes on a shared host do not
    stretch the way they stretch wall time.
    """
    for _ in range(warmup):
        _block(fn(*args))
    timings, cpu_timings = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(iterations):
            out = fn(*args)
        _block(out)
        timings.append((time.perf_counter() - start) / iterations)
        cpu_timings.append((time.process_time() - cpu_start) / iterations)
    if cpu:
        return float(np.median(timings)), float(np.median(cpu_timings))
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
    cpu_seconds_per_step (this process's CPU time: see `time_call`), flops_per_step (dense ops
    of the traced step: forward, backward, optimizer).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    _block(trainer.train_step(x))  # compiles
    start = time.perf_counter()
    _block(trainer.train_step(x))
    # Slow steps (the conv models) get fewer iterations per timing: about 2 s each.
    once = time.perf_counter() - start
    iterations = int(max(1, min(iterations, 2.0 / max(once, 1e-6))))
    seconds, cpu = time_call(trainer.train_step, x, warmup=warmup, repeats=repeats, iterations=iterations,
                             cpu=True)
    flops = graph_flops(trainer.train_step_graph(x))["total"]
    batch = int(x.shape[0])
    return {"seconds_per_step": seconds, "steps_per_second": 1.0 / seconds,
            "examples_per_second": batch / seconds, "cpu_seconds_per_step": cpu, "flops_per_step": flops}


def benchmark_epochs(config, splits, x, epochs=3, strategy=None):
    """Whole epochs through the real loop (`Trainer.fit`: the input pipeline, the validation pass,
    checkpoints, TensorBoard), against the step alone on the fixed batch `x`.

    Returns a dict: `epoch_seconds` (each epoch; the first also traces the step), `steps` per
    epoch, `seconds_per_epoch` (median of the epochs after the first), `step_seconds`,
    `epoch_over_steps` = seconds_per_epoch / (steps x step_seconds): what an epoch costs beyond
    its steps (the validation pass, about 5-15% on static MNIST, included), `train_over_steps`:
    the same for the training loop alone (near 1: the input pipeline keeps up), and
    `slowest_over_median`: the slowest epoch after the first against their median (a stall
    at epochs' ends makes some epochs 1.5-2x the others).
    """
    model_dir = tempfile.mkdtemp(prefix="tfvamp_epochs_")
    try:
        config = config.replace(epochs=int(epochs), model_dir=model_dir, image_every_epochs=0, progress=False,
                                evaluate=False, export=False, checkpoints_to_keep=1)
        trainer = training.Trainer(config, strategy)
        trainer.fit(splits)
        seconds = [row["seconds"] for row in trainer.history]
        train_seconds = [row["train_seconds"] for row in trainer.history]
        steps = trainer.history[-1]["steps"]
        step = time_call(trainer.train_step, tf.convert_to_tensor(x, tf.float32), warmup=1, repeats=3,
                         iterations=max(5, min(50, steps)))
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    later = slice(1, None) if len(seconds) > 1 else slice(None)
    per_epoch = float(np.median(seconds[later]))
    return {"epoch_seconds": seconds, "steps": steps, "seconds_per_epoch": per_epoch, "step_seconds": step,
            "epoch_over_steps": per_epoch / (steps * step),
            "train_over_steps": float(np.median(train_seconds[later])) / (steps * step),
            "slowest_over_median": float(np.max(seconds[later])) / per_epoch}


def evaluation_flops(model, batch_size, num_samples, chunk_size, prior_dtype="float32"):
    """Dense FLOPs of `model.log_likelihood` on a batch, counted from traced graphs.

    The estimator runs a set-up (prior: the pseudo-inputs' encodings; the batch's encoders)
    once, then ceil(S / chunk) chunk bodies; both are traced with static shapes here.

    Returns FLOPs per evaluated image.
    """
    x = tf.zeros((int(batch_size),) + tuple(model.image_shape))

    def setup(x):
        encoded, log_prior, prior = estimator.setup(model, x, prior_dtype)
        floats = [t for t in tf.nest.flatten(prior, expand_composites=True) if t.dtype.is_floating]
        return tf.nest.flatten(encoded) + floats, log_prior, encoded

    def setup_only(x):
        return setup(x)[0]

    def setup_and_chunk(x):
        tensors, log_prior, encoded = setup(x)
        return tensors + [estimator.chunk_log_weights(model, x, encoded, log_prior, int(chunk_size),
                                                      tf.constant([0, 0], tf.int32))]

    base = graph_flops(tf.function(setup_only).get_concrete_function(x))["total"]
    with_chunk = graph_flops(tf.function(setup_and_chunk).get_concrete_function(x))["total"]
    num_chunks = -(-int(num_samples) // int(chunk_size))
    return (base + num_chunks * (with_chunk - base)) / int(batch_size)


def benchmark_evaluation(model, x, num_samples, chunk_size=None, repeats=2, prior_dtype="float32"):
    """Times `model.log_likelihood(x, num_samples)` (IS, float64 accumulation).

    Returns a dict: images_per_second (best of `repeats`), cpu_images_per_second (the same from
    this process's CPU time, see `time_call`), chunk_size, flops_per_image.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    batch = int(x.shape[0])
    chunk = int(chunk_size or estimator.default_chunk_size(model, batch, num_samples))
    model.log_likelihood(x, num_samples=chunk, chunk_size=chunk, prior_dtype=prior_dtype).numpy()  # warm up
    best, best_cpu = math.inf, math.inf
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.log_likelihood(x, num_samples=num_samples, chunk_size=chunk, prior_dtype=prior_dtype).numpy()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu_start)
    return {"images_per_second": batch / best, "seconds": best, "cpu_images_per_second": batch / best_cpu,
            "chunk_size": chunk, "prior_dtype": prior_dtype,
            "flops_per_image": evaluation_flops(model, batch, num_samples, chunk, prior_dtype)}


# ---- where the time goes ------------------------------------------------------------------------
def _wire_fields(buffer):
    """(field number, value) of one protobuf message: ints for varints, bytes for length-
    delimited fields; fixed-width fields are skipped (none of the XPlane fields read here)."""
    position, end = 0, len(buffer)

    def varint():
        nonlocal position
        value, shift = 0, 0
        while True:
            byte = buffer[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while position < end:
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            yield number, varint()
        elif wire_type == 2:
            size = varint()
            yield number, buffer[position:position + size]
            position += size
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"Unsupported protobuf wire type {wire_type} in a profiler trace.")


def _trace_events(xspace_bytes):
    """(op name, duration in ps) of every event on the executor's compute lines of an XSpace.

    Read straight from the protobuf wire format with the XPlane schema's field numbers
    (XSpace.planes 1; XPlane.lines 3, event_metadata 4; XLine.name 2, events 4; XEvent
    metadata_id 1, duration_ps 3; XEventMetadata.name 2), so no TensorFlow-internal module
    is needed.
    """
    for number, plane in _wire_fields(xspace_bytes):
        if number != 1:
            continue
        names, lines = {}, []
        for field, value in _wire_fields(plane):
            if field == 4:  # map entry: key 1, value 2 (XEventMetadata)
                entry = dict(_wire_fields(value))
                names[entry.get(1, 0)] = dict(_wire_fields(entry.get(2, b""))).get(2, b"").decode()
            elif field == 3:
                lines.append(value)
        for line in lines:
            fields = list(_wire_fields(line))
            if not dict(fields).get(2, b"").decode().startswith("tf_Compute"):  # the executor's op events
                continue
            for field, event in fields:
                if field == 4:
                    event = dict(_wire_fields(event))
                    yield names.get(event.get(1, 0), ""), event.get(3, 0)


def op_times(fn, *args, calls=10, warmup=2):
    """Per-op time of `calls` calls of `fn(*args)`, from a TensorFlow profiler trace.

    TensorFlow's executor runs independent ops concurrently (two at a time on two cores), so
    the times are each op's wall time while it ran, and they can sum to more than the calls'
    wall time; read them as shares, not as a partition.

    Returns:
      (wall seconds per call, list of (op name, op type, seconds per call, count per call),
      slowest first).
    """
    for _ in range(warmup):
        _block(fn(*args))
    logdir = tempfile.mkdtemp(prefix="tfvamp_profile_")
    seconds, counts = collections.Counter(), collections.Counter()
    try:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        _block(out)
        wall = (time.perf_counter() - start) / calls
        tf.profiler.experimental.stop()
        for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
            with open(path, "rb") as f:
                for name, duration_ps in _trace_events(f.read()):
                    if ":" not in name or name.startswith(("ExecutorState", "ParallelFor")):
                        continue  # executor bookkeeping, not an op
                    seconds[name] += duration_ps * 1e-12
                    counts[name] += 1
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    rows = [(name.rsplit(":", 1)[0], name.rsplit(":", 1)[1], total / calls, counts[name] / calls)
            for name, total in seconds.most_common()]
    return wall, rows


# ---- XLA ------------------------------------------------------------------------------------------
def benchmark_xla(config, steps=20, rounds=5, strategy=None):
    """Times the train step with and without XLA on random data of the dataset's shape.

    Both variants are built and compiled first, then timed in alternating rounds of `steps`
    steps (so a busy machine slows both alike); the best round counts.

    Returns:
      {jit_compile (bool): seconds per step}.
    """
    shape = [config.training.batch_size] + list(config.model.image_shape)
    images = np.random.default_rng(0).random(shape).astype(np.float32)
    if config.model.likelihood == "bernoulli":
        images = (images > 0.5).astype(np.float32)
    images = tf.constant(images)
    trainers = {}
    for jit in (False, True):
        trainer = training.Trainer(config.replace(jit_compile="true" if jit else "false"), strategy)
        if trainer.jit_compile == jit:
            trainers[jit] = trainer
            for _ in range(3):  # trace, compile, warm up
                trainer.train_step(images).numpy()
    timings = {jit: math.inf for jit in trainers}
    for _ in range(int(rounds)):
        for jit, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(int(steps)):
                out = trainer.train_step(images)
            out.numpy()
            timings[jit] = min(timings[jit], (time.perf_counter() - start) / int(steps))
    return timings
