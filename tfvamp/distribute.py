"""Choosing the `tf.distribute` strategy a training run uses (`--strategy`).

| name           | strategy                                                                      |
|----------------|-------------------------------------------------------------------------------|
| `auto`         | `multi_worker` when `TF_CONFIG` names more than one task, else `mirrored`      |
| `mirrored`     | `MirroredStrategy` over the local GPUs; the CPU when there is none             |
| `multi_worker` | `MultiWorkerMirroredStrategy`, cluster and task from `TF_CONFIG`               |
| `one_device`   | `OneDeviceStrategy` on the first GPU, or the CPU                               |
| `default`      | TensorFlow's default (no-op) strategy                                          |

`TF_CONFIG` is the usual JSON, e.g. for worker 0 of two:

    {"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}

Every worker runs the same command; worker 0 (or the `chief` task if the cluster has one)
writes checkpoints, TensorBoard and results.

`MultiWorkerMirroredStrategy` must be created before TensorFlow runs any op, so call
`make_strategy` first thing in a program. `split_cpu(n)` (testing multi-replica code on one
machine) must run even earlier, before TensorFlow initialises its devices.
"""
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device", "default")


def tf_config():
    """The parsed `TF_CONFIG` environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]!r}") from e
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {raw[:200]!r}.")
    return config


def cluster_size(config=None):
    """How many chief/worker tasks `TF_CONFIG` names (0 without a cluster)."""
    config = tf_config() if config is None else config
    cluster = config.get("cluster", {}) or {}
    return sum(len(cluster.get(role, []) or []) for role in ("chief", "worker"))


def split_cpu(num_devices):
    """Splits the host CPU into `num_devices` logical devices (`/cpu:0` ... `/cpu:{n-1}`).

    Must run before TensorFlow initialises (before any op, strategy or variable): it lets
    `MirroredStrategy` run several replicas on one CPU, which is how multi-replica code is
    tested without GPUs. Returns the device names.
    """
    num_devices = int(num_devices)
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if not current or len(current) != num_devices:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
        except RuntimeError as e:
            raise RuntimeError(f"Cannot split the CPU into {num_devices} devices: TensorFlow is already "
                               "initialised. Call split_cpu (--cpu_devices) before anything else uses "
                               f"TensorFlow. ({e})") from e
    return [f"/cpu:{i}" for i in range(num_devices)]


def available_cores():
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_layout(num_threads, cores, has_gpu=False):
    """`(intra_op, inter_op)` thread counts for a run allowed `num_threads` cores (0 = all `cores`).

    A training step at batch 100 is many small matmuls with independent neighbours (each layer's
    input and weight gradients; the batch's and the pseudo-inputs' encodings), and a 100-row
    matmul split across threads pays more in handing out its pieces than it gains. So on two
    cores two ops run side by side with one thread each, `(1, 2)`: measured on a 2-core EPYC
    (Zen 5), the HVAE + VampPrior step went from 17.6 to 13.7 ms, the VAE's from 12.4 to
    11.0 ms, convHVAE's 1-2% faster, and the importance sampler unchanged
    (docs/benchmarks.md). Elsewhere each count is the number of cores, `(n, n)`, as before:
    with more cores nothing was measured, and with a GPU (`has_gpu`, `num_threads == 0`) the
    host's threads mostly launch kernels, so TensorFlow keeps its own default, `(0, 0)`.
    """
    num_threads, cores = int(num_threads), int(cores)
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0 = every core), got {num_threads}.")
    if num_threads == 0 and has_gpu:
        return 0, 0
    n = num_threads or max(1, cores)
    return (1, 2) if n == 2 else (n, n)


def set_threads(num_threads):
    """Sets TensorFlow's thread pools for a run allowed `num_threads` cores (0 = all of them),
    laid out by `thread_layout`; returns `(intra_op, inter_op)` (0 = TensorFlow's default).

    Like `split_cpu`, it must run before TensorFlow initialises.
    """
    intra, inter = thread_layout(num_threads, available_cores(), bool(tf.config.list_physical_devices("GPU")))
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as e:
        raise RuntimeError("Cannot set TensorFlow's threads: it is already initialised. Call "
                           f"set_threads (--threads) before anything else uses TensorFlow. ({e})") from e
    return intra, inter


def describe_threads():
    """TensorFlow's thread pools as set, for the console: e.g. 'threads 1 intra-op x 2 inter-op'."""
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    if not intra and not inter:
        return "TensorFlow's default threads"
    return f"threads {intra or 'default'} intra-op x {inter or 'default'} inter-op"


def _local_devices():
    """Local GPUs if any, else every logical CPU device (one unless `split_cpu` ran)."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(name="auto", devices=None):
    """Builds the strategy called `name` (see the module docstring).

    Args:
      name: one of `STRATEGIES`.
      devices: explicit device list for `mirrored` (default: every local GPU, else every
        logical CPU device).

    Returns:
      A `tf.distribute.Strategy`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
    config = tf_config()
    workers = cluster_size(config)
    if name == "auto":
        name = "multi_worker" if workers > 1 else "mirrored"
    if name == "multi_worker":
        if workers < 1 or "task" not in config:
            raise ValueError("--strategy=multi_worker needs TF_CONFIG with a cluster and this process's "
                             'task, e.g. {"cluster": {"worker": ["host0:port", "host1:port"]}, '
                             '"task": {"type": "worker", "index": 0}}.')
        # RING collectives work on CPUs and GPUs alike; NCCL is picked automatically by AUTO
        # on GPUs.
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO))
    if workers > 1:
        raise ValueError(f"TF_CONFIG names {workers} workers but --strategy={name} runs on one machine; "
                         "use --strategy=multi_worker (or auto), or unset TF_CONFIG.")
    if name == "mirrored":
        # Over the CPU alone this is one replica on the same code path as several GPUs.
        return tf.distribute.MirroredStrategy(list(devices) if devices else _local_devices())
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def task_info(strategy):
    """(task_type, task_id, is_chief) of this process in `strategy`'s cluster.

    Single-machine strategies are always the chief. In a multi-worker cluster the chief is
    the `chief` task, or worker 0 when there is none.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    task_id = getattr(resolver, "task_id", None) if resolver is not None else None
    if not task_type:
        return None, 0, True
    cluster = resolver.cluster_spec().as_dict() if hasattr(resolver, "cluster_spec") else {}
    has_chief = bool(cluster.get("chief"))
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return task_type, int(task_id or 0), is_chief


def worker_write_dir(directory, strategy):
    """Where this process writes `directory`'s files.

    The chief writes to `directory` itself. Other workers must still take part in saving
    (saving mirrored variables may involve collectives) but into a private temporary
    directory, `directory/.worker_<type>_<id>`, which `remove_worker_dir` deletes afterwards.
    """
    task_type, task_id, is_chief = task_info(strategy)
    if is_chief:
        return directory
    return os.path.join(directory, f".worker_{task_type}_{task_id}")


def remove_worker_dir(path, directory, strategy):
    """Deletes a non-chief's temporary write directory (no-op on the chief)."""
    if path != directory and tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
