"""Your own images, prepared once into sharded TFRecord files and streamed from them.

The first run on a `folder:`, `array:` or `tfds:` source converts it, in one pass, into

    <data_dir>/tfvamp_sources/<name>-<fingerprint>/
        meta.json                       shape, pixels, split counts, shard lists, statistics, notes
        train-00000-of-00016.tfrecord   one record per image: int64 index + raw uint8 pixels
        validation-...  test-...

where data_dir is --data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets. Later runs find
the folder by the fingerprint and read nothing else of the source: the fingerprint hashes the
source's file list with sizes and modification times (a folder), the file's size and time (an
array), or the builder's name, version and data_dir (TFDS), plus the options that change pixels
or splits. A source that changes gets a new fingerprint and is prepared again; the old folder is
never mixed in.

Preparation writes into `<folder>.incomplete-<pid>-<random>` and renames it into place only when
every shard and meta.json are written, so a run killed (or a disk that fills) half-way leaves
nothing that a later run would trust; leftovers are removed by the next preparation. Processes
that prepare the same source at once take turns on `<folder>.lock`: one prepares, the others wait
and then read its copy.

Decoding runs on a thread pool (Pillow releases the GIL while decoding). Decoded images go to a
temporary uint8 file on disk, not to memory: the splits that the source lacks are carved from
its training images exactly as `tfvamp.image_sources` carves them (the same permutation of the
same images), and what training must know up front (shape, binary or 8-bit, the pseudo-input
initialisation, split counts) is computed in the same pass and kept in meta.json.
"""
import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sys
import time
import uuid

import numpy as np

from tfvamp import array_files, image_sources
from tfvamp.datasets.errors import DataError
from tfvamp.datasets.facts import SPLITS

FORMAT = 1
ROOT_NAME = "tfvamp_sources"
META_FILE = "meta.json"
SHARD_BYTES = 64 << 20  # about 64 MB of pixels per shard
MIN_TRAIN_SHARDS = 16  # so that up to 16 workers each read their own shards
DECODE_BLOCK = 2048  # files decoded per round of the thread pool (bounds what waits in memory)
CHUNK = 1024  # array rows converted at a time
_INDEX_BYTES = 8


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared source: its folder and meta.json."""

    path: str
    meta: dict

    @property
    def image_shape(self):
        return tuple(self.meta["image_shape"])

    @property
    def binary(self):
        return bool(self.meta["binary"])

    @property
    def image_bytes(self):
        return int(np.prod(self.image_shape))

    def count(self, split):
        return int(self.meta["splits"][split]["count"])

    def files(self, split):
        return [os.path.join(self.path, name) for name in self.meta["splits"][split]["shards"]]

    @property
    def nbytes(self):
        """Pixels of every split, in bytes (uint8)."""
        return sum(self.count(s) for s in self.meta["splits"]) * self.image_bytes


def root_dir(data_dir=None):
    """Where prepared sources live: `<data_dir>/tfvamp_sources`."""
    base = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return os.path.join(os.path.abspath(base), ROOT_NAME)


# ---- fingerprints -------------------------------------------------------------------------------
def _pixel_options(options):
    """The options that change pixels or splits (binarisation is applied when reading)."""
    return {"channels": options.channels, "image_size": options.image_size, "resize": options.resize,
            "validation_fraction": options.validation_fraction, "test_fraction": options.test_fraction,
            "skip_unreadable": options.skip_unreadable}


def folder_files(path):
    """The image files of a folder and its sub-folders, sorted (the order images are numbered in)."""
    return sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                  if name.lower().endswith(image_sources.IMAGE_EXTENSIONS))


def fingerprint(spec, options):
    """A short hash naming what preparing `spec` with `options` would produce."""
    kind, _, target = spec.partition(":")
    h = hashlib.sha256(json.dumps({"format": FORMAT, "kind": kind, "options": _pixel_options(options)},
                                  sort_keys=True).encode())
    if kind == "folder":
        root = os.path.abspath(target)
        h.update(root.encode())
        for file in folder_files(target):
            st = os.stat(file)
            h.update(f"\0{os.path.relpath(file, root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    elif kind == "array":
        st = os.stat(target)
        h.update(f"{os.path.abspath(target)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    else:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        builder = tfds.builder(target, data_dir=options.data_dir)
        h.update(f"{target}\0{builder.version}\0{builder.data_path}".encode())
    return h.hexdigest()[:16]


def _folder_name(spec):
    kind, _, target = spec.partition(":")
    base = os.path.basename(os.path.normpath(target)) or kind
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:40]
    return f"{kind}_{safe}"


# ---- finding and preparing ------------------------------------------------------------------------
def find(spec, options):
    """The prepared folder of `spec` with `options`, or None when it is not prepared (yet)."""
    path = os.path.join(root_dir(options.data_dir), f"{_folder_name(spec)}-{fingerprint(spec, options)}")
    meta = _read_meta(path)
    return Prepared(path, meta) if meta else None


def _read_meta(path):
    try:
        with open(os.path.join(path, META_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or not all(
            os.path.exists(os.path.join(path, s)) for split in meta["splits"].values() for s in split["shards"]):
        return None
    return meta


def prepare(spec, options, progress=True):
    """`find(spec, options)`, preparing the source first if needed. Returns a `Prepared`.

    Processes that prepare the same source at once (the workers of one multi-worker run) take
    turns on a lock file beside the folder: the first prepares it, the others then find it.
    Raises DataError for unusable images (naming the file or array and the fix) and when the
    disk fills (nothing is kept).
    """
    found = find(spec, options)
    if found:
        return found
    root = root_dir(options.data_dir)
    final = os.path.join(root, f"{_folder_name(spec)}-{fingerprint(spec, options)}")
    try:
        os.makedirs(root, exist_ok=True)
        with _exclusive(final + ".lock", spec):
            return find(spec, options) or _prepare_into(spec, options, root, final, progress)
    except OSError as e:
        raise _write_error(spec, root, e) from None


def _prepare_into(spec, options, root, final, progress):
    _remove_leftovers(root)
    tmp = f"{final}.incomplete-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    to_log = progress and not sys.stderr.isatty()  # a log gets two lines where a terminal gets the bars
    if to_log:
        print(f"Preparing {spec} once into {final} (later runs read it from there) ...", file=sys.stderr,
              flush=True)
    start = time.monotonic()
    try:
        os.makedirs(tmp)
        meta = _Preparation(spec, options, tmp, progress).run()
        shutil.rmtree(final, ignore_errors=True)  # a stale, incomplete copy (the lock keeps good ones safe)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = Prepared(final, meta)
    if to_log:
        count = sum(result.count(split) for split in meta["splits"])
        print(f"Prepared {count:,} images in {time.monotonic() - start:.1f} s.", file=sys.stderr, flush=True)
    return result


def _write_error(spec, root, e):
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataError(f"{spec}: the disk filled while preparing it under {root} ({e.strerror}); nothing was "
                         "kept. Fix: free space there, or point --data_dir at a disk with room (about "
                         "twice the images' uint8 size is needed while preparing).")
    return DataError(f"{spec}: cannot write the prepared copy under {root} ({e}). Fix: check that folder's "
                     "permissions, or point --data_dir elsewhere.")


@contextlib.contextmanager
def _exclusive(lock_path, spec):
    """Holds an advisory lock on `lock_path`, saying so when another process holds it first."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; a second process prepares its own copy
        yield
        return
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"Waiting for another process that is preparing {spec} (lock {lock_path}).",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(root):
    """Half-written preparations of processes that no longer run."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if ".incomplete-" not in name:
            continue
        try:
            pid = int(name.rsplit(".incomplete-", 1)[1].split("-")[0])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


class _Preparation:
    """One pass over a source: decode -> temporary uint8 files -> carve -> shards + meta.json."""

    def __init__(self, spec, options, out, progress):
        self.spec, self.options, self.out, self.progress = spec, options, out, progress
        self.shape = None
        self.counts = {}  # source split -> images written
        self.kinds = {}  # source split -> [all values in {0, 1}, all in {0, 255}]
        self.skipped, self.tags, self.notes = [], {}, []

    # -- pass 1: the source's images, in order, into <split>.u8 ------------------------------------
    def run(self):
        kind, _, target = self.spec.partition(":")
        if not target:
            raise DataError(f"--dataset={self.spec!r} names no {kind}: write {kind}:PATH.")
        {"folder": self._folder, "array": self._arrays, "tfds": self._tfds}[kind](target)
        if not self.counts.get("train"):
            raise DataError(f"{self.spec}: no training images.")
        return self._write_shards()

    def _open(self, split):
        return open(os.path.join(self.out, f"{split}.u8"), "wb")

    def _append(self, f, split, images, what):
        """uint8 `[n, H, W, C]` images of one split, checked for one shape."""
        if self.shape is None:
            self.shape = images.shape[1:]
        elif images.shape[1:] != self.shape:
            raise DataError(f"{what}: different image shapes, {list(images.shape[1:])} among images of shape "
                            f"{list(self.shape)}. Fix: --image_size=HxW resizes them all (and --channels=1 or 3 "
                            "makes the channels agree).")
        kinds = self.kinds.setdefault(split, [True, True])
        if kinds[0]:
            kinds[0] = bool(images.max(initial=0) <= 1)
        if kinds[1]:
            kinds[1] = bool(np.all((images == 0) | (images == 255)))
        f.write(np.ascontiguousarray(images).tobytes())
        self.counts[split] = self.counts.get(split, 0) + len(images)

    def _bar(self, total, desc):
        from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

        return tqdm(total=total, desc=desc, unit="img", disable=not self.progress or not sys.stderr.isatty(),
                    leave=False)

    def _folder(self, path):
        if not os.path.isdir(path):
            raise DataError(f"folder {path!r} does not exist (or is not a folder). Fix: give --dataset=folder:PATH "
                            "with the folder that holds your images.")
        files = folder_files(path)
        if not files:
            raise DataError(f"folder {path!r} holds no image files ({', '.join(image_sources.IMAGE_EXTENSIONS)}), "
                            "in it or below it.")
        first_file = {}
        workers = max(1, min(8, os.cpu_count() or 1))
        with self._open("train") as f, self._bar(len(files), f"Preparing {path}") as bar, \
                concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(files), DECODE_BLOCK):
                block = files[start:start + DECODE_BLOCK]
                for file, result in zip(block, pool.map(self._decode, block)):
                    if isinstance(result, DataError):
                        if not self.options.skip_unreadable:
                            raise result
                        self.skipped.append(file)
                        continue
                    image, tags = result
                    for tag in tags:
                        self.tags.setdefault(tag, []).append(file)
                    first_file.setdefault(image.shape, file)
                    if image.shape != (self.shape or image.shape):
                        raise image_sources.mixed_images(self.shape, first_file[self.shape], image.shape, file)
                    self._append(f, "train", image[None], file)
                bar.update(len(block))
        if not self.counts.get("train"):
            raise DataError(f"folder {path!r}: none of its {len(files)} image files could be read.")

    def _decode(self, file):
        try:
            return image_sources.decode_image(file, self.options)
        except DataError as e:
            return e

    def _arrays(self, path):
        members, notes = array_members(path)
        self.notes.extend(notes)
        for split, (load, what) in members.items():
            array = load()
            with self._open(split) as f, self._bar(len(array), f"Preparing {what}") as bar:
                for start in range(0, len(array), CHUNK):
                    chunk = to_uint8(np.asarray(array[start:start + CHUNK]), what, self.options)
                    self._append(f, split, chunk, what)
                    bar.update(len(chunk))
            del array

    def _tfds(self, name):
        builder = image_sources.tfds_builder(name, self.options)
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        for split in builder.info.splits:
            if split not in SPLITS:
                continue
            what = f"tfds:{name} ({split})"
            ds = builder.as_dataset(split=split, shuffle_files=False).map(lambda e: e["image"]).batch(CHUNK)
            with self._open(split) as f:
                for images in tfds.as_numpy(ds):
                    self._append(f, split, to_uint8(images, what, self.options), what)
        if "train" not in self.counts:
            raise DataError(f"TFDS dataset {name!r} has no 'train' split (splits: {', '.join(builder.info.splits)}).")

    # -- pass 2: carve, fix the binary coding, write shards --------------------------------------
    def _stored(self, split):
        path = os.path.join(self.out, f"{split}.u8")
        count = self.counts.get(split, 0)
        return np.memmap(path, np.uint8, "r", shape=(count,) + tuple(self.shape)) if count else None

    def _write_shards(self):
        binary = all(k[0] or k[1] for k in self.kinds.values())
        # As image_sources: binary data as 0/1; in 8-bit data a 0/1 split is scaled to 0/255.
        scale = {s: ("div255" if binary and not k[0] else "mul255" if not binary and k[0] and not k[1] else None)
                 for s, k in self.kinds.items()}
        layout = self._carve()
        meta_splits, histogram = {}, np.zeros(256, np.int64)
        for split, (source, index) in layout.items():
            stored = self._stored(source)
            shards = self._num_shards(len(index), split)
            names = [f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
            bounds = np.linspace(0, len(index), shards + 1).astype(int)
            with self._bar(len(index), f"Writing {split} shards") as bar:
                for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
                    self._write_shard(os.path.join(self.out, name), stored, index[lo:hi], scale[source],
                                      histogram if split == "train" else None)
                    bar.update(hi - lo)
            meta_splits[split] = {"count": int(len(index)), "shards": names, "carved": split != source,
                                  "shard_counts": np.diff(bounds).tolist()}
            del stored
        for split in self.counts:
            os.remove(os.path.join(self.out, f"{split}.u8"))
        meta = {"format": FORMAT, "spec": self.spec, "fingerprint": os.path.basename(self.out).split(".")[0],
                "options": _pixel_options(self.options), "image_shape": list(self.shape), "binary": binary,
                "splits": meta_splits, "train_histogram": histogram.tolist(),
                "skipped": self.skipped, "notes": self._notes()}
        with open(os.path.join(self.out, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        return meta

    def _notes(self):
        return list(self.notes) + list(image_sources.tag_notes(self.tags))

    def _num_shards(self, count, split):
        by_size = -(-count * int(np.prod(self.shape)) // SHARD_BYTES)
        wanted = max(by_size, MIN_TRAIN_SHARDS if split == "train" else 1)
        return max(1, min(count, wanted))

    def _carve(self):
        """{split: (source split, sorted indices into it)}: the source's own splits, the missing
        ones cut from train with image_sources' permutation."""
        layout = {s: (s, np.arange(self.counts[s])) for s in SPLITS if self.counts.get(s)}
        missing = [s for s in ("validation", "test") if s not in layout]
        if not missing:
            return layout
        n = self.counts["train"]
        fractions = {"validation": self.options.validation_fraction, "test": self.options.test_fraction}
        counts = {s: int(round(fractions[s] * n)) for s in missing}
        if any(c < 1 for c in counts.values()) or n - sum(counts.values()) < 1:
            raise DataError(f"{self.spec} has {n} images: too few to carve {', '.join(missing)} from them "
                            f"({counts}). Fix: more images, or give the splits (an .npz with train/validation/test).")
        order = np.random.RandomState(image_sources.SPLIT_SEED).permutation(n)
        start = 0
        for split in missing:
            layout[split] = ("train", np.sort(order[start:start + counts[split]]))
            start += counts[split]
        layout["train"] = ("train", np.sort(order[start:]))
        return {s: layout[s] for s in SPLITS}

    @staticmethod
    def _write_shard(path, stored, index, scale, histogram):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        with tf.io.TFRecordWriter(path) as writer:
            for lo in range(0, len(index), CHUNK):
                rows = index[lo:lo + CHUNK]
                images = np.asarray(stored[rows])
                if scale == "div255":
                    images = images // 255
                elif scale == "mul255":
                    images = images * np.uint8(255)
                if histogram is not None:
                    histogram += np.bincount(images.ravel(), minlength=256)
                flat = images.reshape(len(rows), -1)
                for i, row in zip(rows, flat):
                    writer.write(np.int64(i).tobytes() + row.tobytes())


# ---- arrays ---------------------------------------------------------------------------------------
def array_members(path):
    """({split: (load, what)}, notes) of an .npy or .npz file, nothing read yet but the headers:
    `load()` gives the array (an .npy memory-mapped, an .npz member read whole). Every header is
    checked against the bytes the file holds before anything is allocated
    (`array_files.check_array_header`), as the whole-source reader does."""
    if array_files.array_kind(path) == "npy":
        with open(path, "rb") as f:
            shape, dtype = array_files.read_array_header(f, path)
            array_files.check_array_header(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), path)
        return {"train": (lambda: np.load(path, mmap_mode="r", allow_pickle=False), path)}, ()
    archive, members, notes = array_files.open_npz(path)

    def loader(info, what):
        # Header checked, then read whole: the reader refuses forged headers and corrupt data.
        return lambda: array_files.load_npz_member(archive, info, what)

    return {split: (loader(info, what), what) for split, (info, what) in members.items()}, notes


def to_uint8(chunk, what, options):
    """Checked images `[n, H, W(, C)]` (uint8, bool, or float in [0, 1]) -> uint8 `[n, H', W', C']`:
    float k / 255 rounded to k, then --image_size and --channels as for files."""
    chunk = array_files.check_array(chunk, what)
    if options.image_size:
        chunk = image_sources.resize_array(chunk, what, options)
    elif chunk.dtype.kind == "f":
        chunk = np.round(chunk * 255.0).astype(np.uint8)
    else:
        chunk = chunk.astype(np.uint8)
    return image_sources.set_channels(chunk, what, options.channels)


# ---- reading ------------------------------------------------------------------------------------
def records(prepared, split, files=None):
    """The split's records in order, as (index int64, uint8 image `[H, W, C]`); `files`: a subset of
    its shards (in the given order)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    files = prepared.files(split) if files is None else files
    return tf.data.TFRecordDataset(files, buffer_size=1 << 20).map(parser(prepared))


def parser(prepared):
    """record (scalar string) -> (index int64, uint8 `[H, W, C]`); also works on a batch `[B]`."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    shape = list(prepared.image_shape)

    def parse(record):
        raw = tf.io.decode_raw(record, tf.uint8)
        lead = tf.shape(raw)[:-1]
        index = tf.bitcast(tf.reshape(raw[..., :_INDEX_BYTES], tf.concat([lead, [_INDEX_BYTES]], 0)), tf.int64)
        image = tf.reshape(raw[..., _INDEX_BYTES:], tf.concat([lead, shape], 0))
        return index, image

    return parse


def _batched_records(prepared, split, batch=4096):
    """(index, images) NumPy batches of a split in order, parsed a batch at a time."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    ds = tf.data.TFRecordDataset(prepared.files(split), buffer_size=1 << 20).batch(batch).map(parser(prepared))
    return ds.as_numpy_iterator()


def read_split(prepared, split):
    """A whole split as the array `tfvamp.image_sources` would hold: uint8 `[N, H, W, C]` (8-bit
    data) or float32 in {0, 1} (binary data)."""
    out = np.empty((prepared.count(split),) + prepared.image_shape, np.uint8)
    start = 0
    for _, images in _batched_records(prepared, split):
        out[start:start + len(images)] = images
        start += len(images)
    return out.astype(np.float32) if prepared.binary else out


def read_rows(prepared, split, rows):
    """Images at positions `rows` (sorted) of a split, in that order: one pass over its shards."""
    rows = np.asarray(rows)
    out = np.empty((len(rows),) + prepared.image_shape, np.uint8)
    start, filled = 0, 0
    position = {int(r): i for i, r in enumerate(rows)}
    for _, images in _batched_records(prepared, split):
        for offset in range(len(images)):
            if start + offset in position:
                out[position[start + offset]] = images[offset]
                filled += 1
        start += len(images)
        if filled == len(rows):
            break
    return out.astype(np.float32) if prepared.binary else out


def pixel_statistics(prepared, pixels):
    """(mean, std) of the training pixels as the model sees them (`pixels` of tfvamp.data), from
    the histogram kept in meta.json."""
    counts = np.asarray(prepared.meta["train_histogram"], np.float64)
    values = np.arange(256, dtype=np.float64)
    unit = {"grey_255": values / 255.0, "bins": (values + 0.5) / 256.0, "binary": values}[pixels]
    total = counts.sum()
    mean = float((counts * unit).sum() / total)
    var = float((counts * (unit - mean) ** 2).sum() / total)
    return mean, var ** 0.5
