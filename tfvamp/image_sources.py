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

* limits: a picture whose header declares more than `MAX_SOURCE_PIXELS` pixels is refused
  before it is decoded (a decompression bomb, or far too large to train on), --image_size sides
  are at most `MAX_IMAGE_SIDE`, and an .npy/.npz array whose header declares more bytes than the
  file holds is refused before anything is allocated.
* 16-bit grey files (mode I;16, and mode I with values above 255) are scaled to 8 bits as
  round(v / 257); alpha channels (transparency) are dropped. Both are recorded as `notes` on the
  `ImageSet`, with the files --skip_unreadable left out (`skipped`) and the extra arrays of an .npz.

Every problem is a `DataError` raised before any training, naming the file or array, the
problem and the fix.
"""
import contextlib
import dataclasses
import io
import os
import warnings

import numpy as np

from tfvamp import array_files
from tfvamp.array_files import check_array, some_of
# re-exported: tfvamp.prepared and the tests use them as image_sources.X
from tfvamp.array_files import check_array_header, load_npz_member, open_npz, read_array_header  # noqa: F401
from tfvamp.datasets.errors import DataError
from tfvamp.datasets.facts import SPLITS

PREFIXES = ("folder:", "array:", "tfds:")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_SEED = 20180101
BINARIZE = ("none", "dynamic", "static")
RESIZE = ("resize", "crop")
MAX_SOURCE_PIXELS = 50_000_000  # pixels (height x width) of one source picture, read from its header before decoding
MAX_IMAGE_SIDE = 4096  # --image_size: each side at most this many pixels
TAGS = ("alpha_dropped", "16bit_scaled")  # what `decode_image` may report about a file
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
    float32 in {0, 1} (binary data); `binary`, `carved` (splits cut from train), `notes` (short
    texts: what was converted or ignored, e.g. dropped alpha channels, 16-bit files scaled, extra
    .npz arrays) and `skipped` (the paths --skip_unreadable left out, in file order)."""

    name: str
    splits: dict
    binary: bool
    carved: tuple = ()
    notes: tuple = ()
    skipped: tuple = ()

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
        splits, notes, skipped = reader(target, options)
        _CACHE[key] = _finish(spec, splits, options, notes, skipped)
    return _CACHE[key]


def from_arrays(name, splits, options=SourceOptions()):
    """An `ImageSet` from in-memory arrays: {split: images} with at least `train`."""
    checked = {split: check_array(np.asarray(images), f"{name} ({split})") for split, images in splits.items()}
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
    images, kept, skipped, tagged = [], [], [], {}
    for file in files:
        try:
            image, tags = decode_image(file, options)
        except DataError:
            if not options.skip_unreadable:
                raise
            skipped.append(file)
            continue
        images.append(image)
        kept.append(file)
        for tag in tags:
            tagged.setdefault(tag, []).append(file)
    if not images:
        raise DataError(f"folder {path!r}: none of its {len(files)} image files could be read.")
    return ({"train": _convert(check_array(_stack(images, kept, options), path), path, options)},
            tag_notes({tag: tagged[tag] for tag in TAGS if tag in tagged}), tuple(skipped))


def tag_notes(tagged):
    """{tag: [file, ...]} of `decode_image` -> the `ImageSet` notes (short texts)."""
    texts = {"alpha_dropped": "dropped the alpha channel (transparency) of {n} file(s): {files}",
             "16bit_scaled": "scaled {n} 16-bit file(s) to 8 bits, round(v / 257): {files}"}
    return tuple(texts[tag].format(n=len(files), files=some_of(files)) for tag, files in tagged.items() if files)


def _decode(file, options):
    """One image file as uint8 `[H, W, C]` (see `decode_image`)."""
    return decode_image(file, options)[0]


def decode_image(file, options=SourceOptions()):
    """One image file -> (uint8 `[H, W, C]`, tags).

    C is 1 or 3 as the file is, or as --channels says; --image_size / --resize applied. `tags` is
    a frozenset of `TAGS`: "alpha_dropped" (the file's transparency was dropped), "16bit_scaled"
    (16-bit grey values v were scaled to round(v / 257)). Raises DataError, naming the file and the
    fix, for a file that cannot be read, and for one whose header declares more than
    `MAX_SOURCE_PIXELS` pixels (refused before decoding: a decompression bomb, or far too large).
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    try:
        with open(file, "rb") as f:
            raw = f.read()
        with warnings.catch_warnings():  # MAX_SOURCE_PIXELS, below Pillow's warning threshold, is checked here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(raw))  # lazy: reads the header only
        _check_pixels(picture.height, picture.width, file)
        picture.load()
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{file} is refused unread: its header declares more than {MAX_SOURCE_PIXELS:,} pixels "
                        f"(Pillow: {str(e).rstrip('.')}; a decompression bomb, or a picture far too large to "
                        "train on). Fix: shrink it (e.g. to 4096x4096 or less), remove it, or pass "
                        "--skip_unreadable to leave such files out.") from None
    except MemoryError:
        raise DataError(f"{file} is too large to decode in this machine's memory. Fix: shrink it, remove it, or pass "
                        "--skip_unreadable to leave such files out.") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{file} cannot be read as an image: its content is no picture format Pillow knows. Fix: "
                        "remove it, or pass --skip_unreadable to leave such files out.") from None
    except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, struct.error, ...)
        raise DataError(f"{file} cannot be read as an image ({type(e).__name__}: {e}); it may be truncated or not "
                        "an image. Fix: remove it, or pass --skip_unreadable to leave such files out.") from None
    try:
        return _picture_to_array(picture, file, options)
    except DataError:
        raise
    except Exception as e:  # a mode Pillow cannot convert, ...
        raise DataError(f"{file} cannot be converted to 8-bit grey or RGB ({type(e).__name__}: {e}; mode "
                        f"{picture.mode}). Fix: save it as an 8-bit PNG, remove it, or pass --skip_unreadable to "
                        "leave such files out.") from None


def _picture_to_array(picture, file, options):
    tags = set()
    if picture.has_transparency_data:
        tags.add("alpha_dropped")
    if picture.mode.startswith("I;16") or picture.mode == "I":
        picture, scaled = _to_8_bits(picture, file)
        if scaled:
            tags.add("16bit_scaled")
    grey = picture.mode in ("1", "L", "LA", "I", "I;16", "F") or (
        picture.mode == "P" and all(c[0] == c[1] == c[2] for c in picture.convert("RGB").getcolors(1 << 24) or []))
    channels = options.channels or (1 if grey else 3)
    picture = picture.convert("L" if channels == 1 else "RGB")
    picture = _to_size(picture, file, options)
    array = np.asarray(picture, np.uint8)
    return (array[..., None] if array.ndim == 2 else array), frozenset(tags)


def _check_pixels(height, width, file):
    if height * width > MAX_SOURCE_PIXELS:
        raise DataError(f"{file} is refused unread: its header declares {height}x{width} = {height * width:,} pixels, "
                        f"more than the {MAX_SOURCE_PIXELS:,} (MAX_SOURCE_PIXELS) a source picture may have (a "
                        "decompression bomb, or far too large to train on). Fix: shrink it (e.g. to 4096x4096 or "
                        "less), remove it, or pass --skip_unreadable to leave such files out.")


def _to_8_bits(picture, file):
    """A 16-bit grey picture (mode I;16*, or mode I with values above 255) as mode L, v -> round(v / 257);
    (picture, True) when scaled, (picture, False) for mode I within 0..255 (read as today)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    values = np.asarray(picture).astype(np.int64)
    if picture.mode == "I":
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise DataError(f"{file} holds 32-bit integer pixels in [{low}, {high}], outside 8 or 16 bits (0..65535). "
                            "Fix: save it as an 8-bit or 16-bit image, or remove it (or pass --skip_unreadable).")
        if high <= 255:
            return picture, False
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L"), True  # (v + 128) // 257 == round(v / 257)


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
        raise mixed_images(a, file_a, b, file_b)
    return np.stack(images)


def mixed_images(a, file_a, b, file_b):
    """The DataError for two image files of shapes `a` and `b` `(H, W, C)` that cannot stack."""
    if a[:2] != b[:2]:
        return DataError(f"images of different sizes: {file_a} is {a[0]}x{a[1]}, {file_b} is {b[0]}x{b[1]}. Fix: "
                         "--image_size=HxW resizes (or, with --resize=crop, centre-crops) them all.")
    return DataError(f"grey and colour images are mixed ({file_a} has {a[2]} channel(s), {file_b} {b[2]}). Fix: "
                     "--channels=1 (all grey) or --channels=3 (all RGB).")


def _read_array_file(path, options):
    notes, arrays = array_files.read_array_file(path)
    with contextlib.closing(arrays):
        return {split: _convert(resize_array(images, what, options), path, options)
                for split, images, what in arrays}, notes, ()


def resize_array(array, what, options):
    """Checked images `[N, H, W, C]` at --image_size (uint8), by the same Pillow resize or crop as
    files get; unchanged without --image_size. Binary images (all 0 or 1) are resized as black
    and white (0 / 255), float ones as k / 255 rounded to the nearest k, as files would be."""
    if not options.image_size:
        return array
    parse_image_size(options.image_size)
    from PIL import Image  # pylint: disable=import-outside-toplevel

    if np.all((array == 0) | (array == 1)):
        pixels = (array * 255).astype(np.uint8)
    elif array.dtype.kind == "f":
        pixels = np.round(array * 255.0).astype(np.uint8)
    else:
        pixels = array.astype(np.uint8)
    out = []
    for i, image in enumerate(pixels):
        label = f"{what} image {i}"
        if image.shape[-1] == 3:
            out.append(np.asarray(_to_size(Image.fromarray(image, "RGB"), label, options), np.uint8))
        else:  # grey, or channels resized one by one (Pillow resizes the bands of RGB independently too)
            out.append(np.stack([np.asarray(_to_size(Image.fromarray(np.ascontiguousarray(image[..., c]), "L"), label,
                                                     options), np.uint8) for c in range(image.shape[-1])], -1))
    return np.stack(out)


def tfds_builder(name, options=SourceOptions()):
    """The prepared TFDS builder of `name` (tfds:NAME[/CONFIG]) with an `image` feature; DataError otherwise."""
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
    return builder


def _read_tfds(name, options):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = tfds_builder(name, options)
    splits = {}
    for split in builder.info.splits:
        if split in SPLITS:
            what = f"tfds:{name} ({split})"
            images = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))["image"]
            splits[split] = _convert(resize_array(check_array(images, what), what, options), f"tfds:{name}", options)
    if "train" not in splits:
        raise DataError(f"TFDS dataset {name!r} has no 'train' split (splits: {', '.join(builder.info.splits)}).")
    return splits, (), ()


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
    return set_channels(stored, what, options.channels)


def set_channels(images, what, channels):
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
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise DataError(f"--image_size={text!r}: each side must be at most {MAX_IMAGE_SIDE} pixels (a larger size "
                        "would need gigabytes per image). Fix: a smaller --image_size, e.g. 64x64.")
    return height, width


def _finish(name, splits, options, notes, skipped=()):
    """Channels and binarisation made consistent over the splits, missing splits carved."""
    binary = all(np.all((s == 0) | (s == 1)) for s in splits.values()) and all(
        s.dtype == np.float32 for s in splits.values())
    if not binary:  # 8-bit data: every split stored as uint8 (a binary split would be 0/1 pixels)
        splits = {k: (np.round(v * 255).astype(np.uint8) if v.dtype == np.float32 else v) for k, v in splits.items()}
    shapes = {k: v.shape[1:] for k, v in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{name}: the splits have different image shapes ({shapes}). Fix: --image_size=HxW.")
    splits, carved = _carve(name, splits, options)
    return ImageSet(name, splits, binary, carved, tuple(notes), tuple(skipped))


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
