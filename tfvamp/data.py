"""Input pipeline: a dataset's splits as `tf.data` datasets, plus what the models need to know.

    splits = tfvamp.data.load("dynamic_mnist", batch_size=100, seed=0)
    for x in splits.train:      # float32 [100, 28, 28, 1] in {0, 1}, re-binarised every batch
        ...
    splits.info.likelihood      # 'bernoulli'

A dataset is one of the six paper datasets (`NAMES`, read from their original files by the
TFDS builders of `tfvamp.datasets`), or your own images (`tfvamp.image_sources`):
`folder:PATH`, `array:PATH`, `tfds:NAME[/CONFIG]`, or `from_array(images)` in Python.

Preprocessing (docs/paper_details.md section 6; the table is `tfvamp.datasets.facts`):
  static_mnist, caltech101_silhouettes  0/1 as stored
  dynamic_mnist                         x / 255, then binarised (below)
  omniglot                              grey in [0, 1] as stored, then binarised (below)
  frey_faces                            (x + 0.5) / 256 of the raw uint8 pixels
  histopathology                        clipped to [1/512, 1 - 1/512]
  your 8-bit images                     (x + 0.5) / 256, per channel (as Frey)
  your binary images                    0/1 as given
Binarisation (dynamic_mnist, omniglot, and --binarize=dynamic): pixel ~ Bernoulli(grey).
  * train: re-drawn for every batch of every epoch, reproducible from `seed`.
  * validation / test: drawn once with the fixed EVAL_BINARIZATION_SEED, the same for every run
    and every `seed`, so that all runs are evaluated on the same images. It is the release's
    procedure (np.random.seed(777); binomial(1, x_val); binomial(1, x_test)), which gives
    dynamic MNIST the release's validation and test images bit for bit.
--binarize=static binarises every split once, with that seed.

Only this module, `tfvamp.image_sources` and `tfvamp.datasets` touch files; `get_info` of a
paper dataset does no I/O (of your own images, it reads them, once per process).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from tfvamp import image_sources
from tfvamp import prepared as prepared_sources
from tfvamp.datasets.errors import DataError  # re-exported: tfvamp.data.DataError
from tfvamp.datasets.facts import MANUAL_DIR_ENV, PAPER_DATASETS, SPLITS
from tfvamp.image_sources import SourceOptions

EVAL_BINARIZATION_SEED = 777
# tf.data's autotuner makes tearing down an iterator wait on its timer (up to seconds at the end
# of an epoch, docs/benchmarks.md); these pipelines are too simple to need tuning.
_OPTIONS = tf.data.Options()
_OPTIONS.autotune.enabled = False

__all__ = ["DataError", "DatasetInfo", "Splits", "SourceOptions", "get_info", "load", "load_split", "from_array",
           "as_numpy", "prepare", "available", "NAMES", "SPLITS", "EVAL_BINARIZATION_SEED", "MANUAL_DIR_ENV"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the models and the training code need to know about a dataset.

    Attributes:
      name: 'static_mnist', ..., or the source spec ('folder:images/', 'array:x.npz', ...).
      input_shape: (H, W, C).
      likelihood: 'bernoulli' (binary data) or 'discretized_logistic' (8-bit data).
      pseudo_inputs_mean, pseudo_inputs_std: N(mean, std) initialisation of VampPrior
        pseudo-inputs (docs/paper_details.md section 2; for your images, from their pixels).
      num_examples: {'train': N, 'validation': N, 'test': N}.
      dynamic_binarization: True when training images are re-binarised every batch.
      builder_name: the TFDS builder of a paper dataset, e.g. 'tfvamp_static_mnist' (None for yours).
      pixels: how stored pixels become what the model sees (`tfvamp.datasets.facts.PIXELS`).
      carved: the splits cut from the training images (your images without their own).
      storage: how your images are read: 'memory' (held as arrays) or 'streamed' (from the
        prepared shards, `tfvamp.prepared`); paper datasets are held in memory.
      notes: what reading your images converted or ignored (alpha channels, 16-bit images,
        extra .npz arrays); skipped: files left out by --skip_unreadable.
    """

    name: str
    input_shape: tuple[int, int, int]
    likelihood: str
    pseudo_inputs_mean: float
    pseudo_inputs_std: float
    num_examples: dict
    dynamic_binarization: bool
    builder_name: str | None
    pixels: str = "binary"
    carved: tuple = ()
    storage: str = "memory"
    notes: tuple = ()
    skipped: tuple = ()

    @property
    def num_pixels(self) -> int:
        """D = H * W * C."""
        return int(np.prod(self.input_shape))


NAMES = tuple(PAPER_DATASETS)
_INFOS = {name: DatasetInfo(name, f.input_shape, f.likelihood, f.pseudo_inputs_mean, f.pseudo_inputs_std,
                            dict(zip(SPLITS, f.sizes)), f.dynamic_binarization, f"tfvamp_{name}", f.pixels)
          for name, f in PAPER_DATASETS.items()}


def get_info(name: str, options: SourceOptions | None = None) -> DatasetInfo:
    """What the models need to know about dataset `name`: a paper dataset (no I/O) or a source
    spec (`folder:`, `array:`, `tfds:`; reads the images, once per process, with `options`).
    Raises ValueError for an unknown name, DataError for unreadable images."""
    if name in _INFOS:
        if options is not None and options != SourceOptions(data_dir=options.data_dir):
            raise ValueError(f"{name} is read as the paper does; --channels, --image_size, --binarize and the "
                             "split fractions are for your own images (folder:, array:, tfds:).")
        return _INFOS[name]
    if image_sources.is_source(name):
        return _source(name, options or SourceOptions()).info
    raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(NAMES)}, or your images as folder:PATH, "
                     "array:PATH (.npy/.npz) or tfds:NAME")


def _source_info(image_set, options, **extra):
    binarize = options.binarize if not image_set.binary else "none"
    binary = image_set.binary or binarize != "none"
    pixels = "binary" if image_set.binary else ("grey_255" if binary else "bins")
    train = _unit_numpy(pixels, image_set.splits["train"])
    mean = float(np.clip(train.mean(), 0.01, 0.99))
    std = float(max(train.std() / 10.0, 1e-3))
    return DatasetInfo(image_set.name, image_set.image_shape, "bernoulli" if binary else "discretized_logistic",
                       mean, std, {s: int(len(v)) for s, v in image_set.splits.items()}, binarize == "dynamic",
                       None, pixels, image_set.carved, notes=tuple(image_set.notes), **extra)


def in_memory_limit() -> int:
    """Sources whose pixels (uint8, all splits) take at most this many bytes are held in memory
    (faster per step); larger ones stream from their shards. $TFVAMP_IN_MEMORY_MB, default 512."""
    return int(float(os.environ.get("TFVAMP_IN_MEMORY_MB", "512")) * (1 << 20))


class _SourceData(NamedTuple):
    """Your images, prepared: `info`, and either `image_set` (in memory) or `prepared` (streamed)."""

    info: DatasetInfo
    image_set: image_sources.ImageSet | None
    prepared: prepared_sources.Prepared


_SOURCES: dict = {}


def _source(name: str, options: SourceOptions) -> _SourceData:
    """A `folder:` / `array:` / `tfds:` source, prepared once on disk (`tfvamp.prepared`) and, when
    small enough, read into memory; once per process."""
    key = (name, options)
    if key not in _SOURCES:
        prepared = prepared_sources.prepare(name, options)
        meta = prepared.meta
        carved = tuple(s for s in SPLITS if meta["splits"][s]["carved"])
        skipped = tuple(meta.get("skipped", ()))
        notes = tuple(meta.get("notes", ()))
        in_memory = prepared.nbytes <= in_memory_limit()
        binarize = options.binarize if not prepared.binary else "none"
        binary = prepared.binary or binarize != "none"
        pixels = "binary" if prepared.binary else ("grey_255" if binary else "bins")
        # From the pixel histogram kept at preparation (float64), never from a float copy of the
        # images: that copy and its temporaries took ~20x the images' size (docs/benchmarks.md).
        mean, std = prepared_sources.pixel_statistics(prepared, pixels)
        image_set = None
        if in_memory:
            arrays = {s: prepared_sources.read_split(prepared, s) for s in SPLITS}
            image_set = image_sources.ImageSet(name, arrays, prepared.binary, carved, notes)
        streamed_pixels = "binary" if (binarize == "static" and not in_memory) else pixels
        info = DatasetInfo(name, prepared.image_shape, "bernoulli" if binary else "discretized_logistic",
                           float(np.clip(mean, 0.01, 0.99)), float(max(std / 10.0, 1e-3)),
                           {s: prepared.count(s) for s in SPLITS}, binarize == "dynamic", None,
                           streamed_pixels, carved, "memory" if in_memory else "streamed", notes, skipped)
        _SOURCES.clear()  # one source at a time: a second one should not keep the first's arrays alive
        _SOURCES[key] = _SourceData(info, image_set, prepared)
    return _SOURCES[key]


class Splits(NamedTuple):
    """`load`'s result: three datasets of float32 image batches [B, H, W, C], the info, and
    `epochs(first_epoch)`: one dataset of the training batches of every epoch from
    `first_epoch` on, each epoch's order (and binarisation) a function of the seed and the
    epoch only, so that a resumed run sees what an uninterrupted one would."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo
    epochs: Callable[[int], tf.data.Dataset] | None = None


# ----------------------------------------------------------------------------- public API

def load(name: str, batch_size: int, *, eval_batch_size: int | None = None, data_dir=None,
         manual_dir=None, seed: int = 0, shuffle_train: bool = True, drop_remainder: bool = True,
         max_steps_per_epoch: int = 0, options: SourceOptions | None = None) -> Splits:
    """The train / validation / test splits of `name` as batched `tf.data` datasets.

    Prepares a paper dataset's TFDS data first if needed (from the original files, see
    `tfvamp.datasets`); reads your images (`folder:`, `array:`, `tfds:`) with `options`.

    Args:
      name: one of NAMES, or a source spec (module docstring).
      batch_size: training batch size (the global batch under `tf.distribute`).
      eval_batch_size: validation/test batch size (default: batch_size).
      data_dir: TFDS data dir (default: $TFDS_DATA_DIR, else TFDS' default).
      manual_dir: folder with the paper datasets' original files (default: $TFVAMP_MANUAL_DIR).
      seed: non-negative int seeding the training order and the training binarisation.
        Validation/test never depend on it.
      shuffle_train: reshuffle the training set every epoch.
      drop_remainder: drop the last incomplete training batch, so every batch (and every
        replica's share under tf.distribute) has the same size. Validation and test never drop.
      max_steps_per_epoch: cap on the batches of an epoch in `epochs` (0: every full batch).
      options: how to read your images (`SourceOptions`: channels, size, binarisation, splits).

    Returns:
      Splits(train, validation, test, info, epochs); each dataset yields float32 [B, H, W, C] in
      [0, 1]. Iterating `train` again starts a new epoch (new order, new binarisation).

    Raises:
      ValueError: unknown name, bad batch size or seed.
      DataError: a data file is missing or bad (the message says which, and the fix).
    """
    store = _store(name, data_dir, manual_dir, options)
    return _splits(store, batch_size, eval_batch_size, seed, shuffle_train, drop_remainder, max_steps_per_epoch)


def from_array(images, batch_size: int, *, validation=None, test=None, name: str = "array", seed: int = 0,
               eval_batch_size: int | None = None, max_steps_per_epoch: int = 0,
               options: SourceOptions | None = None) -> Splits:
    """`load` for images in memory: `images` (and optionally `validation`, `test`) uint8, bool or
    float in [0, 1], `[N, H, W]` or `[N, H, W, C]`; missing splits are carved as for files."""
    arrays = {"train": images, **{k: v for k, v in (("validation", validation), ("test", test)) if v is not None}}
    options = options or SourceOptions()
    image_set = image_sources.from_arrays(name, arrays, options)
    store = _Store(name, _source_info(image_set, options), image_set.splits.__getitem__, ("array", id(image_set)))
    return _splits(store, batch_size, eval_batch_size, seed, True, True, max_steps_per_epoch)


def load_split(name: str, split: str, batch_size: int, *, data_dir=None, manual_dir=None,
               options: SourceOptions | None = None) -> tf.data.Dataset:
    """One evaluation split (`validation` or `test`) as batches, preprocessed as in `load`, without
    building the others (for evaluating a trained model)."""
    if split not in ("validation", "test"):
        raise ValueError(f"load_split takes 'validation' or 'test', got {split!r}; training batches come from load.")
    store = _store(name, data_dir, manual_dir, options)
    batch_size = _positive_int("batch_size", batch_size)
    if store.prepared is not None:
        from tfvamp import streaming  # pylint: disable=import-outside-toplevel

        return streaming.evaluation(store, split, batch_size)
    x = _preprocessed(store, split)
    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size).prefetch(2).with_options(_OPTIONS)


def as_numpy(name: str, split: str, *, data_dir=None, manual_dir=None, seed: int = 0,
             options: SourceOptions | None = None) -> np.ndarray:
    """One whole split as float32 [N, H, W, C] in [0, 1], preprocessed as in `load`.

    Images are in file order (increasing TFDS `index`). For dynamically binarised data, the
    `train` split is returned grey (it is binarised per batch in `load`) and validation/test
    binarised with the fixed EVAL_BINARIZATION_SEED, i.e. exactly the images `load` yields.

    Args:
      seed: accepted for symmetry with `load`; it does not change the result, since nothing
        here is random except the fixed evaluation binarisation.
    """
    _seed(seed)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    x = _preprocessed(_store(name, data_dir, manual_dir, options), split)
    return x if x.flags.writeable else x.copy()  # never hand out the cached array


class _StreamedRows:
    """A streamed source's training images as `[N, H, W, C]` float32 rows, read on indexing by a
    sorted index array (one pass over the shards): what a VampPrior initialised from data takes."""

    def __init__(self, store):
        self._store = store
        self.shape = (store.info.num_examples["train"],) + tuple(store.info.input_shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        stored = prepared_sources.read_rows(self._store.prepared, "train", np.asarray(rows))
        if stored.dtype == np.uint8 and self._store.info.pixels in ("grey_255", "binary"):
            stored = stored.astype(np.float32) / 255.0  # grey (binarised later) or statically binarised
        return _unit_numpy("binary" if stored.dtype == np.float32 else self._store.info.pixels, stored)


def training_images(name: str, *, data_dir=None, manual_dir=None, options: SourceOptions | None = None):
    """The training split as the model sees it, for initialising pseudo-inputs from data: the
    array of `as_numpy(name, 'train')`, or, for a streamed source, rows read when indexed."""
    store = _store(name, data_dir, manual_dir, options)
    if store.prepared is not None:
        return _StreamedRows(store)
    return as_numpy(name, "train", data_dir=data_dir, manual_dir=manual_dir, options=options)


def available(*, data_dir=None, manual_dir=None) -> list[str]:
    """Datasets that are prepared in `data_dir` or whose original files can all be found.

    Only looks at the disk (no download), e.g. to choose what `prepare` builds by default.
    """
    return [n for n in NAMES if not missing_files(n, data_dir=data_dir, manual_dir=manual_dir)]


def missing_files(name: str, *, data_dir=None, manual_dir=None) -> list[str]:
    """Names of the original files of dataset `name` that cannot be found (empty when it is
    prepared in `data_dir`). Only looks at the disk (no download)."""
    builder = _builder(name, data_dir)
    if _is_prepared(builder):
        return []
    found = _found_files(builder, manual_dir)
    return [s.name for s, path in zip(builder.SOURCES, found) if path is None]


def prepare(names: Sequence[str] | None = None, *, data_dir=None, manual_dir=None,
            overwrite: bool = False, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Prepare the TFDS data of `names` ahead of time, with progress output.

    Args:
      names: datasets to prepare; default every dataset in `available()` (the others are
        listed as skipped, with the files they lack).
      overwrite: rebuild datasets that are already prepared.
      echo: where progress lines go.

    Returns:
      {name: seconds} for the datasets built or found prepared.

    Raises:
      DataError: after trying all of them, if any dataset failed (each failure is echoed).
    """
    explicit = names is not None
    names = [names] if isinstance(names, str) else list(NAMES if names is None else names)
    for n in names:
        get_info(n)
    todo = []
    for n in names:
        missing = missing_files(n, data_dir=data_dir, manual_dir=manual_dir)
        if missing and not explicit:
            echo(f"skip {n}: not found: {', '.join(missing)}")
        else:
            todo.append(n)
    timings, failures = {}, []
    for i, n in enumerate(todo, 1):
        builder = _builder(n, data_dir)
        echo(f"[{i}/{len(todo)}] {n} -> {builder.data_dir}")
        start = time.perf_counter()
        if _is_prepared(builder) and not overwrite:
            echo("    already prepared; reusing it")
        else:
            for path in _found_files(builder, manual_dir):
                echo(f"    from {path}")
            try:
                _prepare(builder, manual_dir, overwrite)
            except DataError as e:
                echo(f"    FAILED: {e}")
                failures.append(n)
                continue
        timings[n] = time.perf_counter() - start
        sizes = ", ".join(f"{s} {builder.info.splits[s].num_examples}" for s in SPLITS)
        echo(f"    done in {timings[n]:.1f} s ({sizes})")
    if failures:
        raise DataError(f"could not prepare {', '.join(failures)} (see the messages above)")
    return timings


# ----------------------------------------------------------------------------- internals

def _positive_int(what, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def original_files(name: str) -> list:
    """The original files of paper dataset `name` (`tfvamp.datasets.files.SourceFile`: name,
    sha256, size cap, ...), as its builder reads and verifies them."""
    return list(_builder(name, None).SOURCES)


def _builder(name: str, data_dir):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    import tfvamp.datasets  # noqa: F401  pylint: disable=import-outside-toplevel  (registers)
    return tfds.builder(get_info(name).builder_name, data_dir=data_dir)


def _prepare(builder, manual_dir, overwrite: bool = False) -> None:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    _remove_incomplete(builder)
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir or os.environ.get(MANUAL_DIR_ENV) or None,
        download_mode=mode, try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config)
    except DataError as e:
        # Re-raise from here: the message says it all, the frames inside TFDS would not help.
        raise type(e)(str(e)) from None


def _remove_incomplete(builder) -> None:
    """Deletes the `incomplete.*` folders a killed build left (TFDS renames a build into place
    only when it succeeds, so they are never read, only in the way)."""
    import shutil  # pylint: disable=import-outside-toplevel

    folder = builder.data_dir_root / builder.name
    for pattern in ("incomplete.*", "*.incomplete*"):
        for path in folder.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _is_prepared(builder) -> bool:
    # What builder.is_prepared() checks, without its warning for every unprepared folder.
    return (builder.data_path / "dataset_info.json").exists()


def _prepared_builder(name, data_dir, manual_dir):
    builder = _builder(name, data_dir)
    if not _is_prepared(builder):
        _prepare(builder, manual_dir)
    return builder


def _found_files(builder, manual_dir) -> list:
    """Where each original file of `builder` is (None where it cannot be found), no download."""
    from tfvamp.datasets import files  # pylint: disable=import-outside-toplevel

    bases = files.search_bases(manual_dir, builder.data_dir_root / "downloads")
    return [files.locate(s, bases) for s in builder.SOURCES]


# Arrays of the last few splits read or preprocessed, so that load + as_numpy and repeated loads
# in one process (the trainer calls load once per epoch) read the TFDS files and binarise the
# evaluation sets once. Small: one dataset's entries are at most ~120 MB (dynamic MNIST).
_CACHE: dict = {}
_CACHE_SIZE = 8


def _cached(key, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """compute(), remembered under `key` as a read-only array (oldest entries dropped first)."""
    if key not in _CACHE:
        array = compute()
        array.setflags(write=False)
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = array
    return _CACHE[key]


def _read_split(builder, name: str, split: str) -> np.ndarray:
    """The split as stored by the builder ([N, H, W, 1], uint8 or float32), in `index` order."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    def read():
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        images = arrays["image"][np.argsort(arrays["index"], kind="stable")]
        expected = get_info(name).num_examples[split]
        if len(images) != expected:
            raise DataError(f"{builder.data_path} holds {len(images)} {split} images of {name}, "
                            f"expected {expected}; delete that folder and prepare it again")
        return images

    return _cached((str(builder.data_path), split, "stored"), read)


class _Store(NamedTuple):
    """Where a dataset's stored arrays come from: `stored(split)` -> `[N, H, W, C]` as stored
    (uint8, or float32 for binary and OMNIGLOT's grey), `key` for the caches."""

    name: str
    info: DatasetInfo
    stored: Callable[[str], np.ndarray] | None
    key: tuple
    prepared: prepared_sources.Prepared | None = None  # a streamed source (then `stored` is None)
    options: SourceOptions | None = None


def _store(name, data_dir, manual_dir, options):
    if image_sources.is_source(name):
        options = options or SourceOptions()
        if options.data_dir is None and data_dir is not None:
            options = dataclasses.replace(options, data_dir=data_dir)
        source = _source(name, options)
        info = source.info
        if source.image_set is None:
            return _Store(name, info, None, (name, options), source.prepared, options)
        image_set = source.image_set
        stored = image_set.splits.__getitem__
        if options.binarize == "static" and info.likelihood == "bernoulli" and not image_set.binary:
            stored = _statically_binarized(image_set)
            info = dataclasses.replace(info, pixels="binary")
        return _Store(name, info, stored, (name, options))
    info = get_info(name, options)
    builder = _prepared_builder(name, data_dir, manual_dir)
    return _Store(name, info, lambda split: _read_split(builder, name, split), (str(builder.data_path),))


def _statically_binarized(image_set):
    """--binarize=static: every split binarised once, with the fixed seed (as static MNIST was)."""
    rs = np.random.RandomState(EVAL_BINARIZATION_SEED)
    fixed = {split: rs.binomial(1, images / 255.0).astype(np.float32) for split, images in image_set.splits.items()}
    return fixed.__getitem__


def _splits(store, batch_size, eval_batch_size, seed, shuffle_train, drop_remainder, max_steps_per_epoch):
    """The `Splits` of a store (see `load`)."""
    info = store.info
    batch_size = _positive_int("batch_size", batch_size)
    eval_batch_size = _positive_int("eval_batch_size", eval_batch_size or batch_size)
    seed = _seed(seed)
    if store.prepared is not None:
        from tfvamp import streaming  # pylint: disable=import-outside-toplevel

        return streaming.splits(store, batch_size, eval_batch_size, seed, drop_remainder, max_steps_per_epoch)
    stored_train = store.stored("train")
    if drop_remainder and batch_size > len(stored_train):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(stored_train)} training "
                         f"images of {store.name}, so no full batch is left")
    train = tf.data.Dataset.from_tensor_slices(stored_train)
    if shuffle_train:
        train = train.shuffle(len(stored_train), seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size, drop_remainder=drop_remainder)
    if info.dynamic_binarization:
        # One stateless-noise seed per batch. rerandomize_each_iteration gives new seeds every
        # epoch, still a deterministic sequence given `seed`.
        noise = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        train = tf.data.Dataset.zip((train, noise)).map(
            lambda x, s: _binarize(to_unit(info.pixels, x), s, seed), num_parallel_calls=2, deterministic=True)
    else:
        train = train.map(lambda x: to_unit(info.pixels, x), num_parallel_calls=2, deterministic=True)

    def evaluation(split):
        x = _preprocessed(store, split)
        ds = tf.data.Dataset.from_tensor_slices(x).batch(eval_batch_size, drop_remainder=False)
        return ds.prefetch(2).with_options(_OPTIONS)

    def epochs(first_epoch):
        return _epoch_stream(info, stored_train, batch_size, seed, first_epoch, max_steps_per_epoch)

    return Splits(train.prefetch(2).with_options(_OPTIONS), evaluation("validation"), evaluation("test"), info,
                  epochs)


def to_unit(pixels: str, x: tf.Tensor) -> tf.Tensor:
    """Stored images -> float32 in [0, 1] as the model sees them (grey for the binarised sets)."""
    x = tf.cast(x, tf.float32)
    if pixels == "grey_255":
        return x / 255.0
    if pixels == "bins":
        return (x + 0.5) / 256.0
    if pixels == "clip":
        return tf.clip_by_value(x, 1.0 / 512.0, 1.0 - 1.0 / 512.0)
    return x  # "binary" (0/1) and "unit" (grey in [0, 1]) as stored


def _unit_numpy(pixels, x):
    return to_unit(pixels, x).numpy()


def _epoch_stream(info, stored, batch_size, seed, first_epoch, max_steps=0):
    """Training batches of every epoch from `first_epoch` on (see `Splits.epochs`).

    Epoch e is a permutation of the stored images drawn from (seed, e), cut into full batches
    (at most `max_steps` of them); dynamically binarised sets draw each batch's pixels from
    (seed, e, batch index).
    """
    images = tf.constant(stored)
    count = len(stored)
    steps = count // batch_size
    steps = min(steps, int(max_steps)) if max_steps else steps

    def epoch_batches(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=key)
        index = tf.reshape(order[: steps * batch_size], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices((index, tf.range(steps, dtype=tf.int64))).map(
            lambda i, step: _epoch_batch(info, tf.gather(images, i), key, step),
            num_parallel_calls=2, deterministic=True)

    stream = tf.data.Dataset.range(int(first_epoch), 2 ** 62).flat_map(epoch_batches)
    return stream.prefetch(2).with_options(_OPTIONS)


def _epoch_batch(info, stored_batch, key, step):
    x = to_unit(info.pixels, stored_batch)
    if not info.dynamic_binarization:
        return x
    seed = tf.random.experimental.stateless_fold_in(key, step)
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed) < x, tf.float32)


def _binarize(grey: tf.Tensor, noise_seed: tf.Tensor, seed: int) -> tf.Tensor:
    """pixel ~ Bernoulli(grey) with stateless noise seeded by (per-batch seed, `seed`)."""
    u = tf.random.stateless_uniform(
        tf.shape(grey), seed=tf.stack([noise_seed, tf.constant(seed, tf.int64)]), dtype=tf.float32)
    return tf.cast(u < grey, tf.float32)


def _preprocessed(store, split: str) -> np.ndarray:
    """float32 [N, H, W, C] as `load` yields it (validation/test binarised for dynamic sets).

    Read-only (cached) for validation/test.
    """
    if store.prepared is not None:
        from tfvamp import streaming  # pylint: disable=import-outside-toplevel

        return np.concatenate(list(streaming.evaluation(store, split, 4096).as_numpy_iterator()))
    if split == "train":
        return _unit_numpy(store.info.pixels, store.stored(split))
    return _cached(store.key + (split, "preprocessed"), lambda: _evaluation_images(store, split))


def _evaluation_images(store, split: str) -> np.ndarray:
    x = _unit_numpy(store.info.pixels, store.stored(split))
    if not store.info.dynamic_binarization:
        return x
    # The release: np.random.seed(777); x_val = binomial(1, x_val); x_test = binomial(1, x_test).
    # The test draw follows the validation draw in the same stream, so replay both.
    grey_val = x if split == "validation" else _unit_numpy(store.info.pixels, store.stored("validation"))
    rs = np.random.RandomState(EVAL_BINARIZATION_SEED)
    val = rs.binomial(1, grey_val).astype(np.float32)
    return val if split == "validation" else rs.binomial(1, x).astype(np.float32)
