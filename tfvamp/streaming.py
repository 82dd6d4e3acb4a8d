"""tf.data pipelines over a prepared source's shards (`tfvamp.prepared`): memory bounded by
the buffers, not by the data.

Training, epoch e (e counted as the trainer counts, from the run's --seed):
  1. the training shards in an order drawn from (seed, e);
  2. read `CYCLE` shards at a time, interleaved record by record;
  3. a shuffle buffer of `shuffle_buffer()` images, seeded from (seed, e);
  4. full batches, parsed, mapped to [0, 1] (and binarised from (seed, e, batch) for
     --binarize=dynamic), `steps` of them.
Each epoch's order depends on (seed, e) only, so a resumed run reads what an uninterrupted one
would. It is not a uniform permutation of the whole set, as the in-memory path's is: an image can
move at most about a buffer's length from where the interleaved shards put it. Shards are
written in the source's order (carved splits: in sorted index order), so with many similar
neighbours in a folder (frames of one video, one class per sub-folder), raise the buffer
($TFVAMP_SHUFFLE_BUFFER) or shuffle the files' names.

Validation and test are read in order; --binarize=dynamic draws their pixels once, from each
image's index (`EVAL_BINARIZATION_SEED`), the same for every run; --binarize=static binarises
every split that way.

Several workers (`tf.distribute.InputContext` with more than one input pipeline): each worker
reads only the training shards `i, i + n, i + 2n, ...` (i its pipeline id, n the pipelines) and
yields its share of the global batch. There are at least as many shards as workers
(`prepared.MIN_TRAIN_SHARDS`), else the call is refused.
"""
import os

import tensorflow as tf

from tfvamp import data
from tfvamp import prepared as prepared_sources

CYCLE = 4  # shards read at once
DEFAULT_SHUFFLE_BUFFER = 10_000  # images (at 64x64x3: 123 MB of uint8)
_BUFFER_BYTES = 256 << 20  # ... and at most this many bytes, whatever the image size
_EVAL_STREAM = {"train": 0, "validation": 1, "test": 2}


def shuffle_buffer(image_bytes):
    """Images in the training shuffle buffer: $TFVAMP_SHUFFLE_BUFFER, else 10,000 capped at 256 MB."""
    env = os.environ.get("TFVAMP_SHUFFLE_BUFFER")
    if env:
        return max(1, int(env))
    return max(1, min(DEFAULT_SHUFFLE_BUFFER, _BUFFER_BYTES // max(1, int(image_bytes))))


def _options():
    options = tf.data.Options()
    options.autotune.enabled = False  # as tfvamp.data: the autotuner's timer stalls iterator teardown
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded here
    return options


def _static_binarized(store, split):
    options = store.options
    return options is not None and options.binarize == "static" and not store.prepared.binary


def _eval_binarize(grey, index, split):
    """pixel ~ Bernoulli(grey), drawn from (EVAL_BINARIZATION_SEED, split, image index)."""
    def one(args):
        g, i = args
        seed = tf.stack([tf.constant(data.EVAL_BINARIZATION_SEED, tf.int64) * 3 + _EVAL_STREAM[split], i])
        return tf.cast(tf.random.stateless_uniform(tf.shape(g), seed=seed) < g, tf.float32)

    return tf.map_fn(one, (grey, index), fn_output_signature=tf.float32)


def _to_model(store, split, index, images, key=None, step=None):
    """uint8 batch -> float32 in [0, 1] as the model sees it."""
    info = store.info
    if _static_binarized(store, split):
        return _eval_binarize(tf.cast(images, tf.float32) / 255.0, index, split)
    x = data.to_unit(info.pixels, images)
    if not info.dynamic_binarization:
        return x
    if split != "train":
        return _eval_binarize(x, index, split)
    seed = tf.random.experimental.stateless_fold_in(key, step)
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed) < x, tf.float32)


def evaluation(store, split, batch_size):
    """Batches of a split in order, float32 `[B, H, W, C]`, the last one partial."""
    parse = prepared_sources.parser(store.prepared)
    ds = tf.data.TFRecordDataset(store.prepared.files(split), buffer_size=1 << 20)
    ds = ds.batch(batch_size).map(lambda r: _to_model(store, split, *parse(r)), num_parallel_calls=2,
                                  deterministic=True)
    return ds.prefetch(2).with_options(_options())


def training_epochs(store, batch_size, seed, first_epoch, max_steps=0, input_context=None):
    """Training batches of every epoch from `first_epoch` on (module docstring).

    With an `input_context` (`tf.distribute`'s `distribute_datasets_from_function`): batches of
    the per-replica size, `steps x replicas per pipeline` of them an epoch, and with several
    pipelines (workers) only this pipeline's shards, read round and round, so that every worker
    makes the epoch's `steps` steps whatever its shards hold.
    """
    prepared = store.prepared
    files = prepared.files("train")
    steps = prepared.count("train") // batch_size
    steps = min(steps, int(max_steps)) if max_steps else steps
    if steps < 1:
        raise ValueError(f"{prepared.count('train')} training images give no full batch of {batch_size}.")
    batches_per_epoch, repeat = steps, False
    if input_context is not None:
        workers, worker = input_context.num_input_pipelines, input_context.input_pipeline_id
        local = input_context.get_per_replica_batch_size(batch_size)
        batches_per_epoch = steps * (batch_size // local) // workers
        batch_size = local
        if workers > 1:
            if len(files) < workers:
                raise ValueError(f"{len(files)} training shards cannot be split over {workers} workers; prepare the "
                                 "source with more shards (tfvamp.prepared.MIN_TRAIN_SHARDS).")
            files, repeat = files[worker::workers], True
    parse = prepared_sources.parser(prepared)
    buffer = shuffle_buffer(prepared.image_bytes)
    names = tf.constant(files)

    def epoch_batches(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.size(names)), seed=key)
        shards = tf.data.Dataset.from_tensor_slices(tf.gather(names, order))
        records = shards.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
                                    cycle_length=min(CYCLE, len(files)), block_length=1,
                                    num_parallel_calls=min(CYCLE, len(files)), deterministic=True)
        if repeat:
            records = records.repeat()
        shuffle_seed = tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)
        records = records.shuffle(buffer, seed=shuffle_seed).batch(batch_size, drop_remainder=True)
        records = records.take(batches_per_epoch)
        return tf.data.Dataset.zip((records, tf.data.Dataset.range(batches_per_epoch))).map(
            lambda r, step: _to_model(store, "train", *parse(r), key=key, step=step),
            num_parallel_calls=2, deterministic=True)

    stream = tf.data.Dataset.range(int(first_epoch), 2 ** 62).flat_map(epoch_batches)
    return stream.prefetch(2).with_options(_options())


def splits(store, batch_size, eval_batch_size, seed, drop_remainder=True, max_steps=0):
    """`tfvamp.data.Splits` of a streamed source."""
    if not drop_remainder:
        raise ValueError("A streamed source always drops the last partial training batch.")
    count = store.prepared.count("train")
    steps = count // batch_size
    steps = min(steps, int(max_steps)) if max_steps else steps

    def epochs(first_epoch, input_context=None):
        return training_epochs(store, batch_size, seed, first_epoch, max_steps, input_context)

    # `train`: one epoch (epoch 0) at a time, as a dataset of known length.
    train = epochs(0).take(steps).apply(tf.data.experimental.assert_cardinality(steps))
    return data.Splits(train, evaluation(store, "validation", eval_batch_size),
                       evaluation(store, "test", eval_batch_size), store.info, epochs)
