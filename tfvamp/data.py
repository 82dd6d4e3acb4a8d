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

Only this module, `tfvamp.paper_data`, `tfvamp.image_sources` and `tfvamp.datasets` touch files;
`get_info` of a paper dataset does no I/O (of your own images, it reads them, once per process).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

from tfvamp import image_sources
from tfvamp import paper_data, pipeline
from tfvamp import prepared as prepared_sources
from tfvamp.datasets.errors import DataError  # re-exported: tfvamp.data.DataError
from tfvamp.datasets.facts import MANUAL_DIR_ENV, PAPER_DATASETS, SPLITS
from tfvamp.image_sources import SourceOptions
# Re-exported: tfvamp.data.prepare, tfvamp.data.to_unit, ... (the paper datasets' preparation is
# `tfvamp.paper_data`, the tf.data pipeline of images in memory `tfvamp.pipeline`).
from tfvamp.paper_data import available, missing_files, original_files, prepare
from tfvamp.pipeline import EVAL_BINARIZATION_SEED, to_unit
from tfvamp.pipeline import unit_numpy as _unit_numpy

__all__ = ["DataError", "DatasetInfo", "Splits", "SourceOptions", "get_info", "load", "load_split", "from_array",
           "as_numpy", "prepare", "available", "NAMES", "SPLITS", "EVAL_BINARIZATION_SEED", "MANUAL_DIR_ENV"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the models and the training code need to know about a dataset.

    Attributes:
      name: 'static_mnist', ..., or the source spec ('folder:images/', 'array:x.npz', ...).
      image_shape: (H, W, C).
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
    image_shape: tuple[int, int, int]
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
        return int(np.prod(self.image_shape))


NAMES = tuple(PAPER_DATASETS)
_INFOS = {name: DatasetInfo(name, f.image_shape, f.likelihood, f.pseudo_inputs_mean, f.pseudo_inputs_std,
                            dict(zip(SPLITS, f.sizes)), f.dynamic_binarization, paper_data.builder_name(name),
                            f.pixels)
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
    raise paper_data.unknown_dataset(name)


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
    return pipeline.evaluation_batches(pipeline.preprocessed(store, split), batch_size)


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
        self.shape = (store.info.num_examples["train"],) + tuple(store.info.image_shape)

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


# ----------------------------------------------------------------------------- internals

def _positive_int(what, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


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
    builder = paper_data.prepared_builder(name, data_dir, manual_dir)

    def stored(split):
        return pipeline.cached((str(builder.data_path), split, "stored"),
                               lambda: paper_data.read_split(builder, name, split))

    return _Store(name, info, stored, (str(builder.data_path),))


def _statically_binarized(image_set):
    """--binarize=static: every split binarised once, with the fixed seed (as static MNIST was)."""
    rs = np.random.RandomState(EVAL_BINARIZATION_SEED)
    fixed = {split: rs.binomial(1, images / 255.0).astype(np.float32) for split, images in image_set.splits.items()}
    return fixed.__getitem__


def _splits(store, batch_size, eval_batch_size, seed, shuffle_train, drop_remainder, max_steps_per_epoch):
    """The `Splits` of a store (see `load`)."""
    batch_size = _positive_int("batch_size", batch_size)
    eval_batch_size = _positive_int("eval_batch_size", eval_batch_size or batch_size)
    seed = _seed(seed)
    if store.prepared is not None:
        from tfvamp import streaming  # pylint: disable=import-outside-toplevel

        return streaming.splits(store, batch_size, eval_batch_size, seed, drop_remainder, max_steps_per_epoch)
    train, validation, test, epochs = pipeline.batches(store, batch_size, eval_batch_size, seed, shuffle_train,
                                                       drop_remainder, max_steps_per_epoch)
    return Splits(train, validation, test, store.info, epochs)


def _preprocessed(store, split: str) -> np.ndarray:
    """float32 [N, H, W, C] as `load` yields it (validation/test binarised for dynamic sets).

    Read-only (cached) for validation/test of images in memory.
    """
    if store.prepared is not None:
        from tfvamp import streaming  # pylint: disable=import-outside-toplevel

        return np.concatenate(list(streaming.evaluation(store, split, 4096).as_numpy_iterator()))
    return pipeline.preprocessed(store, split)
