"""The six paper datasets on disk: finding their original files, building their TFDS data once
(`prepare`, `tfvamp-prepare-data`) and reading a prepared split back as an array. `tfvamp.data`
re-exports the public names (`tfvamp.data.prepare`, ...) and is where datasets are loaded.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

from tfvamp.datasets.errors import DataError
from tfvamp.datasets.facts import MANUAL_DIR_ENV, PAPER_DATASETS, SPLITS

__all__ = ["available", "missing_files", "prepare", "original_files", "prepared_builder", "read_split",
           "unknown_dataset", "builder_name"]


def unknown_dataset(name: str) -> ValueError:
    """The error for a dataset name that is neither a paper dataset nor a source spec."""
    return ValueError(f"unknown dataset {name!r}; use one of {', '.join(PAPER_DATASETS)}, or your images as "
                      "folder:PATH, array:PATH (.npy/.npz) or tfds:NAME")


def available(*, data_dir=None, manual_dir=None) -> list[str]:
    """Datasets that are prepared in `data_dir` or whose original files can all be found.

    Only looks at the disk (no download), e.g. to choose what `prepare` builds by default.
    """
    return [n for n in PAPER_DATASETS if not missing_files(n, data_dir=data_dir, manual_dir=manual_dir)]


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
    names = [names] if isinstance(names, str) else list(PAPER_DATASETS if names is None else names)
    for n in names:
        builder_name(n)
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


def original_files(name: str) -> list:
    """The original files of paper dataset `name` (`tfvamp.datasets.files.SourceFile`: name,
    sha256, size cap, ...), as its builder reads and verifies them."""
    return list(_builder(name, None).SOURCES)


def prepared_builder(name: str, data_dir, manual_dir):
    """The TFDS builder of paper dataset `name` in `data_dir`, its data prepared first if needed."""
    builder = _builder(name, data_dir)
    if not _is_prepared(builder):
        _prepare(builder, manual_dir)
    return builder


def read_split(builder, name: str, split: str) -> np.ndarray:
    """The split as stored by the builder ([N, H, W, 1], uint8 or float32), in `index` order;
    DataError if it does not hold the paper's number of images."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    images = arrays["image"][np.argsort(arrays["index"], kind="stable")]
    expected = dict(zip(SPLITS, PAPER_DATASETS[name].sizes))[split]
    if len(images) != expected:
        raise DataError(f"{builder.data_path} holds {len(images)} {split} images of {name}, "
                        f"expected {expected}; delete that folder and prepare it again")
    return images


def builder_name(name: str) -> str:
    """The TFDS builder of paper dataset `name` ('tfvamp_<name>'); ValueError for another name."""
    if name not in PAPER_DATASETS:
        raise unknown_dataset(name)
    return f"tfvamp_{name}"


def _builder(name: str, data_dir):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    import tfvamp.datasets  # noqa: F401  pylint: disable=import-outside-toplevel  (registers)
    return tfds.builder(builder_name(name), data_dir=data_dir)


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


def _found_files(builder, manual_dir) -> list:
    """Where each original file of `builder` is (None where it cannot be found), no download."""
    from tfvamp.datasets import files  # pylint: disable=import-outside-toplevel

    bases = files.search_bases(manual_dir, builder.data_dir_root / "downloads")
    return [files.locate(s, bases) for s in builder.SOURCES]
