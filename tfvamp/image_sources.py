"""Your own images as a dataset: a folder, a NumPy file, any TFDS image dataset, or an array.

    --dataset=folder:PATH          PNG/JPEG/BMP/GIF files, sub-folders walked (class folders are
                                   not labels here)
    --dataset=array:PATH           .npy (one array) or .npz (one array, or `train` / `validation` /
                                   `test`): uint8, bool or float images [N, H, W] or [N, H, W, C]
    --dataset=tfds:NAME[/CONFIG]   any TFDS dataset with an `image` feature, from --data_dir
    tfvamp.data.from_array(images) in Python

`open_source(spec, options)` reads the images once (cached per process) into an `ImageSet`:
the stored arrays of each split and what was inferred from them. What is inferred, and the
flag that overrides it (`SourceOptions`):

* channels: 1 or 3 from the files; --channels=1 converts to grey (ITU-R 601 luma), 3 to RGB.
* size: every image must share one size, unless --image_size=HxW, which resizes them
  (--resize=resize, area-averaging when shrinking) or centre-crops them (--resize=crop; an image
  smaller than the crop is refused).
* pixel values: images whose values are all 0 or 1 are binary (Bernoulli likelihood); anything
  else is 8-bit grey or colour, modelled by the paper's discretized logistic over 256 bins per
  channel, with pixel k mapped to the bin centre (k + 0.5) / 256 as the paper does for Frey Faces.
  Float images in [0, 1] are read as k / 255 and rounded to the nearest k.
  --binarize=dynamic re-draws pixel ~ Bernoulli(grey) every batch (validation and test once,
  with a fixed seed), --binarize=static once for all; both use the Bernoulli likelihood.
* splits: the source's own train / validation / test where it has them; missing ones are carved
  from the training images with a fixed seed (`SPLIT_SEED`): 10% validation and 10% test
  by default (--validation_fraction, --test_fraction).
* pseudo-input initialisation: N(pixel mean, pixel std / 10) of the training images (the
  release's values for the paper's datasets are of this size: Frey 0.5 / 0.02).

Every problem is a `DataError` raised before any training, naming the file or array, the
problem and the fix.
"""
import dataclasses
import hashlib
import io
import os

import numpy as np

from tfvamp.datasets.errors import DataError
from tfvamp.datasets.facts import SPLITS

PREFIXES = ("folder:", "array:", "tfds:")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_SEED = 20180101
BINARIZE = ("none", "dynamic", "static")
RESIZE = ("resize", "crop")
_CACHE = {}


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """How to read a source: the flags of the same names."""

    channels: int = 0  # 0: from the data
    image_size: str = ""  # "HxW" or "" (all images must share one size)
    resize: str = "resize"
    binarize: str = "none"
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    skip_unreadable: bool = False
    data_dir: str = None


@dataclasses.dataclass
class ImageSet:
    """A source's images: `splits` maps split name to uint8 `[N, H, W, C]` (8-bit data) or
    float32 in {0, 1} (binary data); `binary`, `carved` (splits cut from train), `notes` (what
    was skipped or converted)."""

    name: str
    splits: dict
    binary: bool
    carved: tuple = ()
    notes: tuple = ()

    @property
    def image_shape(self):
        return tuple(int(d) for d in self.splits["train"].shape[1:])


def is_source(spec):
    """True for `folder:`, `array:` and `tfds:` specs."""
    return isinstance(spec, str) and spec.startswith(PREFIXES)


def open_source(spec, options=SourceOptions()):
    """The `ImageSet` of a `folder:` / `array:` / `tfds:` spec (read once per process)."""
    key = (spec, options)
    if key not in _CACHE:
        kind, _, target = spec.partition(":")
        if not target:
            raise DataError(f"--dataset={spec!r} names no {kind}: write {kind}:PATH"
                            + ("" if kind != "tfds" else " (tfds:NAME or tfds:NAME/CONFIG)") + ".")
        reader = {"folder": _read_folder, "array": _read_array_file, "tfds": _read_tfds}[kind]
        splits, notes = reader(target, options)
        _CACHE[key] = _finish(spec, splits, options, notes)
    return _CACHE[key]


def from_arrays(name, splits, options=SourceOptions()):
    """An `ImageSet` from in-memory arrays: {split: images} with at least `train`."""
    checked = {split: _check_array(np.asarray(images), f"{name} ({split})") for split, images in splits.items()}
    return _finish(name, checked, options, ())


# ---- reading ------------------------------------------------------------------------------------
def _read_folder(path, options):
    if not os.path.isdir(path):
        raise DataError(f"folder {path!r} does not exist (or is not a folder). Fix: give --dataset=folder:PATH "
                        "with the folder that holds your images.")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"folder {path!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}), in it or below it.")
    images, skipped = [], []
    for file in files:
        try:
            images.append(_decode(file, options))
        except DataError:
            if not options.skip_unreadable:
                raise
            skipped.append(file)
    if not images:
        raise DataError(f"folder {path!r}: none of its {len(files)} image files could be read.")
    notes = (f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:5])}",) if skipped else ()
    kept = [f for f in files if f not in set(skipped)]
    return {"train": _convert(_check_array(_stack(images, kept, options), path), path, options)}, notes


def _decode(file, options):
    """One image file as uint8 `[H, W, C]` (C = 1 or 3, or as --channels says)."""
    from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel

    try:
        with open(file, "rb") as f:
            picture = Image.open(io.BytesIO(f.read()))
            picture.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{file} cannot be read as an image ({type(e).__name__}: {e}); it may be truncated or not "
                        "an image. Fix: remove it, or pass --skip_unreadable to leave such files out.") from None
    grey = picture.mode in ("1", "L", "LA", "I", "I;16", "F") or (
        picture.mode == "P" and all(c[0] == c[1] == c[2] for c in picture.convert("RGB").getcolors(1 << 24) or []))
    channels = options.channels or (1 if grey else 3)
    picture = picture.convert("L" if channels == 1 else "RGB")
    picture = _to_size(picture, file, options)
    array = np.asarray(picture, np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _to_size(picture, file, options):
    if not options.image_size:
        return picture
    height, width = parse_image_size(options.image_size)
    from PIL import Image  # pylint: disable=import-outside-toplevel

    if options.resize == "resize":
        return picture.resize((width, height), Image.BOX if picture.width >= width else Image.BICUBIC)
    if picture.width < width or picture.height < height:
        raise DataError(f"{file} is {picture.height}x{picture.width}, smaller than the {height}x{width} crop. Fix: "
                        "--resize=resize, or a smaller --image_size.")
    left, top = (picture.width - width) // 2, (picture.height - height) // 2
    return picture.crop((left, top, left + width, top + height))


def _stack(images, files, options):
    """One array of the decoded images, refusing mixed sizes or channels with the fix."""
    shapes = {}
    for image, file in zip(images, files):
        shapes.setdefault(image.shape, file)
    if len(shapes) > 1:
        (a, file_a), (b, file_b) = list(shapes.items())[:2]
        if a[:2] != b[:2]:
            raise DataError(f"images of different sizes: {file_a} is {a[0]}x{a[1]}, {file_b} is {b[0]}x{b[1]}. Fix: "
                            "--image_size=HxW resizes (or, with --resize=crop, centre-crops) them all.")
        raise DataError(f"grey and colour images are mixed ({file_a} has {a[2]} channel(s), {file_b} {b[2]}). Fix: "
                        "--channels=1 (all grey) or --channels=3 (all RGB).")
    return np.stack(images)


def _read_array_file(path, options):
    if not os.path.isfile(path):
        raise DataError(f"array file {path!r} does not exist. Fix: give --dataset=array:PATH with a .npy or .npz file.")
    try:
        loaded = np.load(path, allow_pickle=False)  # never unpickle a data file: it could run code
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read as a .npy/.npz file ({e}). Fix: save the images with numpy.save "
                        "or numpy.savez (no object arrays).") from None
    if isinstance(loaded, np.ndarray):
        return {"train": _convert(_check_array(loaded, path), path, options)}, ()
    with loaded:
        names = list(loaded.files)
        named = [n for n in names if n in SPLITS]
        if named and "train" not in named:
            raise DataError(f"{path} has arrays {names} but no 'train'. Fix: name the training images 'train' "
                            "(and optionally 'validation', 'test').")
        if not named and len(names) != 1:
            raise DataError(f"{path} holds {len(names)} arrays ({', '.join(names)}): give one array, or name them "
                            "train / validation / test.")
        keys = named or names
        return {("train" if not named else k): _convert(_check_array(loaded[k], f"{path}[{k}]"), path, options)
                for k in keys}, ()


def _read_tfds(name, options):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        builder = tfds.builder(name, data_dir=options.data_dir)
    except Exception as e:  # TFDS raises several kinds for an unknown or unreadable dataset
        raise DataError(f"TFDS has no dataset {name!r} in {options.data_dir or 'its default data_dir'} ({e}). Fix: "
                        "check the name, or prepare it there (with network access: tfds build).") from None
    image_features = [k for k, v in builder.info.features.items() if isinstance(v, tfds.features.Image)]
    if "image" not in image_features:
        raise DataError(f"TFDS dataset {name!r} has no 'image' feature (features: "
                        f"{', '.join(builder.info.features)}). tfvamp reads the 'image' feature of a dataset.")
    if not _tfds_prepared(builder):
        _tfds_prepare(builder, name)
    splits = {}
    for split in builder.info.splits:
        if split in SPLITS:
            images = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))["image"]
            splits[split] = _convert(_check_array(images, f"tfds:{name} ({split})"), f"tfds:{name}", options)
    if "train" not in splits:
        raise DataError(f"TFDS dataset {name!r} has no 'train' split (splits: {', '.join(builder.info.splits)}).")
    return splits, ()


def _tfds_prepared(builder):
    return (builder.data_path / "dataset_info.json").exists()


def _tfds_prepare(builder, name):
    if os.environ.get("TFVAMP_OFFLINE") == "1":
        raise DataError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and this machine is offline. "
                        f"Fix: prepare it where the network is reachable (python -c \"import tensorflow_datasets as "
                        f"tfds; tfds.builder('{name}').download_and_prepare()\") and copy it into --data_dir.")
    try:
        builder.download_and_prepare()
    except Exception as e:  # network errors and missing manual files come in many types
        raise DataError(f"TFDS dataset {name!r} is not prepared and could not be downloaded ({type(e).__name__}: "
                        f"{e}). Fix: prepare it with network access and point --data_dir at it.") from None


# ---- checking and converting ----------------------------------------------------------------------
def _check_array(array, what):
    """Images `[N, H, W]` or `[N, H, W, C]` of a numeric dtype with values a picture can have."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "uif":
        raise DataError(f"{what}: images must be uint8, bool or float, got dtype {array.dtype}.")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or min(array.shape) < 1:
        raise DataError(f"{what}: images must be [N, H, W] or [N, H, W, C], got shape {list(array.shape)}.")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
            raise DataError(f"{what}: float images must lie in [0, 1] (got values in [{np.nanmin(array):.4g}, "
                            f"{np.nanmax(array):.4g}], or NaN). Fix: divide 8-bit images by 255, or save them as uint8.")
    elif array.min() < 0 or array.max() > 255:
        raise DataError(f"{what}: integer images must lie in [0, 255], got values in [{array.min()}, {array.max()}].")
    return array


def _convert(array, what, options):
    """Checked images -> the stored form: uint8 (8-bit data) or float32 {0, 1} (binary data),
    with --channels applied."""
    binary = bool(np.all((array == 0) | (array == 1)))
    if not binary and array.dtype == np.uint8 and np.all((array == 0) | (array == 255)):
        array, binary = array // 255, True  # black-and-white 8-bit pictures are binary data
    if binary:
        stored = array.astype(np.float32)
    elif array.dtype.kind == "f":
        stored = np.round(array * 255.0).astype(np.uint8)
    else:
        stored = array.astype(np.uint8)
    return _set_channels(stored, what, options.channels)


def _set_channels(images, what, channels):
    if not channels or images.shape[-1] == channels:
        return images
    if channels == 3 and images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and images.shape[-1] == 3:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.round(luma)[..., None].astype(images.dtype) if images.dtype == np.uint8 else (luma > 0.5)[..., None]
    raise DataError(f"{what}: cannot convert {images.shape[-1]} channels to {channels} (--channels converts between "
                    "1 and 3).")


def parse_image_size(text):
    """'64x48' -> (64, 48); a DataError for anything else."""
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise DataError(f"--image_size={text!r}: write HxW, e.g. 32x32.") from None
    if height < 1 or width < 1:
        raise DataError(f"--image_size={text!r}: both sides must be at least 1.")
    return height, width


def _finish(name, splits, options, notes):
    """Channels and binarisation made consistent over the splits, missing splits carved."""
    binary = all(np.all((s == 0) | (s == 1)) for s in splits.values()) and all(
        s.dtype == np.float32 for s in splits.values())
    if not binary:  # 8-bit data: every split stored as uint8 (a binary split would be 0/1 pixels)
        splits = {k: (np.round(v * 255).astype(np.uint8) if v.dtype == np.float32 else v) for k, v in splits.items()}
    shapes = {k: v.shape[1:] for k, v in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{name}: the splits have different image shapes ({shapes}). Fix: --image_size=HxW.")
    splits, carved = _carve(name, splits, options)
    return ImageSet(name, splits, binary, carved, tuple(notes))


def _carve(name, splits, options):
    """Validation and test cut from the training images where the source lacks them: a fixed
    permutation (SPLIT_SEED) and fractions of the training set."""
    missing = [s for s in ("validation", "test") if s not in splits]
    if not missing:
        return splits, ()
    train = splits["train"]
    fractions = {"validation": options.validation_fraction, "test": options.test_fraction}
    counts = {s: int(round(fractions[s] * len(train))) for s in missing}
    if any(c < 1 for c in counts.values()) or len(train) - sum(counts.values()) < 1:
        raise DataError(f"{name} has {len(train)} images: too few to carve {', '.join(missing)} from them "
                        f"({counts}). Fix: more images, or give the splits (an .npz with train/validation/test).")
    order = np.random.RandomState(SPLIT_SEED).permutation(len(train))
    out, start = dict(splits), 0
    for split in missing:
        out[split] = train[np.sort(order[start:start + counts[split]])]
        start += counts[split]
    out["train"] = train[np.sort(order[start:])]
    return out, tuple(missing)


def fingerprint(image_set):
    """A short hash of the stored training images (to tell two sources apart in a run's config)."""
    return hashlib.sha256(image_set.splits["train"].tobytes()).hexdigest()[:16]
