"""Reading .npy / .npz files of images safely, for `array:` sources (tfvamp.image_sources) and
their chunked preparation (tfvamp.prepared): every header is read and checked before anything is
allocated (no pickled objects, no more bytes than the file holds), bodies are read by NumPy's own
reader with every failure a `DataError` naming the file and the fix, and arrays are checked to be
images."""
import math
import os
import zipfile

import numpy as np

from tfvamp.datasets.errors import DataError
from tfvamp.datasets.facts import SPLITS

_RESAVE = "Fix: save the images again with numpy.save / numpy.savez (uint8, bool or float; no object arrays), or copy " \
          "the file again if it was cut short."


def check_array_header(shape, dtype, available_bytes, what):
    """Refuses, before anything is allocated, an array whose .npy header declares Python objects
    or more bytes (shape x itemsize) than the `available_bytes` that follow the header."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects (dtype {dtype}), which tfvamp never unpickles (it could run "
                        f"code). Fix: save the images as a numeric array, e.g. numpy.savez(path, train=np.asarray("
                        "images, np.uint8)).")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise DataError(f"{what}: its header declares the impossible shape {shape}; the file is corrupt. {_RESAVE}")
    needed = math.prod(shape) * dtype.itemsize
    if needed > available_bytes:
        raise DataError(f"{what}: its header declares shape {shape} of {dtype} ({needed:,} bytes), but only "
                        f"{max(int(available_bytes), 0):,} bytes of data follow; the file is truncated or its header "
                        f"corrupt (refused before allocating). {_RESAVE}")


def _read_header_3_0(f, version):
    """(shape, dtype) of a format-3.0 .npy header: a 4-byte length, then a utf-8 Python dict
    literal with 'descr', 'fortran_order' and 'shape' (the .npy format's specification)."""
    import ast  # pylint: disable=import-outside-toplevel
    import struct  # pylint: disable=import-outside-toplevel

    if version != (3, 0):
        raise ValueError(f"unknown .npy format version {version}")
    (length,) = struct.unpack("<I", f.read(4))
    header = ast.literal_eval(f.read(length).decode("utf-8"))
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise ValueError(f"not a .npy header: {header!r}")
    return tuple(header["shape"]), np.lib.format.descr_to_dtype(header["descr"])


def read_array_header(f, what):
    """(shape, dtype) of the .npy stream `f` (a file or an .npz member), which is left at the
    start of the data; a DataError naming `what` for a header that cannot be read."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:  # 3.0: the 2.0 layout with a utf-8 header (field names), which NumPy has no public reader for
            shape, dtype = _read_header_3_0(f, version)
    except Exception as e:  # numpy raises ValueError, but a corrupt header can give others (SyntaxError, ...)
        raise DataError(f"{what}: its .npy header cannot be read ({type(e).__name__}: {e}); the file is truncated "
                        f"or not a numpy array. {_RESAVE}") from None
    return shape, dtype


def _read_body(open_stream, what):
    try:
        with open_stream() as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except MemoryError:
        raise DataError(f"{what} is too large for this machine's memory. Fix: fewer or smaller images.") from None
    except Exception as e:  # truncated or corrupt data: ValueError, EOFError, zlib.error, BadZipFile (CRC), ...
        raise DataError(f"{what} is corrupt ({type(e).__name__}: {e}). {_RESAVE}") from None


def _load_npy(path):
    with open(path, "rb") as f:
        shape, dtype = read_array_header(f, path)
        check_array_header(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), path)
    return _read_body(lambda: open(path, "rb"), path)


def load_npz_member(archive, info, what):
    """The array of the .npz member `info` of the open `archive`, its header checked before the body
    is read; a DataError naming `what` for anything else than a sound numeric .npy member."""
    if not info.filename.endswith(".npy"):
        raise DataError(f"{what}: the member {info.filename!r} is not a .npy array. {_RESAVE}")
    try:
        with archive.open(info) as f:
            shape, dtype = read_array_header(f, what)
            available = info.file_size - f.tell()
    except DataError:
        raise
    except Exception as e:  # encrypted, unsupported compression, a bad local header, ...
        raise DataError(f"{what} cannot be read ({type(e).__name__}: {e}). {_RESAVE}") from None
    check_array_header(shape, dtype, available, what)
    return _read_body(lambda: archive.open(info), what)


def read_array_file(path):
    """(notes, images) of the .npy or .npz file `path`, its directory and headers checked first:
    `images` is a generator of (split, checked images, what), each array read when it is reached
    (close it when done). An .npy is `train`; an .npz as `open_npz` says."""
    if array_kind(path) == "npy":
        return (), _npy_images(path)
    archive, members, notes = open_npz(path)
    return notes, _npz_images(archive, members)


def array_kind(path):
    """'npy' or 'npz', from the file's first bytes (not its name, and not `zipfile.is_zipfile`, which
    calls a truncated .npz "not a zip"); a DataError for a missing file or any other content."""
    if not os.path.isfile(path):
        raise DataError(f"array file {path!r} does not exist. Fix: give --dataset=array:PATH with a .npy or .npz file.")
    with open(path, "rb") as f:
        start = f.read(6)
    if start == b"\x93NUMPY":
        return "npy"
    if start.startswith(b"PK"):
        return "npz"
    raise DataError(f"{path} cannot be read as a .npy/.npz file (it starts with {start!r}, neither numpy's "
                    "header nor a zip archive). Fix: save the images with numpy.save or numpy.savez (no object "
                    "arrays).")


def _npy_images(path):
    yield "train", check_array(_load_npy(path), path), path


def _npz_images(archive, members):
    with archive:
        for split, (info, what) in members.items():
            yield split, check_array(load_npz_member(archive, info, what), what), what


def open_npz(path):
    """An .npz file's images, nothing read but its directory: (the open `zipfile.ZipFile`,
    {split: (member info, 'path[member]')}, notes). One unnamed array is `train`; named ones must
    include `train`, and other names are ignored with a note."""
    try:
        archive = zipfile.ZipFile(path)
    except Exception as e:  # BadZipFile for a truncated archive (no central directory), OSError, ...
        raise DataError(f"{path} cannot be read as a .npz file: it is not a complete zip archive ({type(e).__name__}: "
                        f"{e}); it may be truncated (an interrupted copy or save). Fix: copy it again, or save the "
                        "images again with numpy.savez.") from None
    members = {}
    for info in archive.infolist():
        members.setdefault(info.filename[:-4] if info.filename.endswith(".npy") else info.filename, info)
    names = list(members)
    named = [n for n in names if n in SPLITS]
    if named and "train" not in named:
        archive.close()
        raise DataError(f"{path} has arrays {names} but no 'train'. Fix: name the training images 'train' "
                        "(and optionally 'validation', 'test').")
    if not named and len(names) != 1:
        archive.close()
        raise DataError(f"{path} holds {len(names)} arrays ({', '.join(names)}): give one array, or name them "
                        "train / validation / test.")
    extra = [n for n in names if n not in SPLITS] if named else []
    notes = (f"{path}: ignored its array(s) {some_of(extra)} (only train / validation / test are read)",) \
        if extra else ()
    return archive, {("train" if not named else k): (members[k], f"{path}[{k}]") for k in (named or names)}, notes


def check_array(array, what):
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


def some_of(names, shown=3):
    """'a, b, c and 4 more': the first `shown` of `names`, for notes and messages."""
    names = [str(n) for n in names]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
