"""Parsers of the original files' formats (.amat text, IDX, MATLAB .mat) and the checks of
the values they yield.

Each parser takes a `files.FoundFile` and the bytes `FoundFile.read_bytes` returned (already
size-bounded and compared with the original's checksums), and fails through `found.fail`, so
every error names the file, its URL and the fix. Pickles are read by `safe_pickle.unpickle`.
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import Iterable

import numpy as np

from tfvamp.datasets.errors import CorruptFileError, ShapeError
from tfvamp.datasets.files import CHUNK, FoundFile, size_cap

_AMAT_LINE = 784 * 2  # "d d ... d\n": 784 digits, 783 spaces, one newline


def parse_amat(found: FoundFile, raw: bytes) -> np.ndarray:
    """Larochelle's binarized MNIST text: one image per line, 784 space-separated 0/1.

    Returns:
      uint8 [N, 784] of 0/1, row-major 28x28 images.
    """
    b = np.frombuffer(raw, np.uint8)
    # Fast path for the exact original layout (all three files are in it): pure numpy, ~0.1 s.
    if len(b) % _AMAT_LINE == 0:
        rows = b.reshape(-1, _AMAT_LINE)
        digits = rows[:, 0::2]
        if (((digits == 48) | (digits == 49)).all() and (rows[:, 1:-1:2] == 32).all()
                and (rows[:, -1] == 10).all()):
            return digits - np.uint8(48)
    # Tolerant path (CRLF, extra spaces, truncated files): numpy per line, ~1 s for 50000 lines.
    images = []
    lines = raw.split(b"\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines[: last + 1]):
        v = np.frombuffer(line, np.uint8)
        digit = (v == 48) | (v == 49)
        space = (v == 32) | (v == 9) | (v == 13)
        if not (digit | space).all() or (digit[1:] & digit[:-1]).any():
            found.fail(CorruptFileError,
                       f"is not a binarized-MNIST .amat file: line {i + 1} holds something other "
                       f"than single 0/1 values separated by spaces")
        n = int(digit.sum())
        if n == 0:
            continue
        if n != 784:
            if i == last and n < 784:
                found.fail(CorruptFileError,
                           f"is truncated: its last line (line {i + 1}) has {n} of 784 values")
            found.fail(ShapeError,
                       f"has the wrong shape: line {i + 1} has {n} values, expected 784 "
                       f"(one 28x28 image per line)")
        images.append(v[digit] - np.uint8(48))
    if not images:
        found.fail(CorruptFileError, "holds no images")
    return np.stack(images)


def parse_idx(found: FoundFile, raw: bytes, expected_shape: tuple[int, ...]) -> np.ndarray:
    """LeCun's IDX format (MNIST) with unsigned-byte data. Returns uint8 `expected_shape`."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] == 0:
        found.fail(CorruptFileError,
                   f"is not an IDX file of unsigned bytes (header {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        found.fail(CorruptFileError, "is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims))
    payload = len(raw) - header
    if payload < size:
        found.fail(CorruptFileError,
                   f"is truncated: its header announces {'x'.join(map(str, dims))} values "
                   f"({size} bytes), but only {payload} bytes follow")
    if payload > size:
        found.fail(CorruptFileError, f"has {payload - size} bytes after the announced data")
    if tuple(dims) != tuple(expected_shape):
        found.fail(ShapeError,
                   f"has the wrong shape: {'x'.join(map(str, dims))}, expected "
                   f"{'x'.join(map(str, expected_shape))}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_mat(found: FoundFile, raw: bytes, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB v5/v7 .mat file."""
    import scipy.io  # local: scipy is only needed while building

    if not raw.startswith(b"MATLAB"):
        found.fail(CorruptFileError, "is not a MATLAB .mat file")
    if b"MATLAB 7.3" in raw[:128]:
        found.fail(CorruptFileError,
                   "is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in MATLAB "
                   "with save(..., '-v7')")
    _check_mat_inflation(found, raw)
    try:
        mat = scipy.io.loadmat(io.BytesIO(raw))
    except Exception as e:  # noqa: BLE001  scipy raises many types for damaged files
        found.fail(CorruptFileError, f"is truncated or corrupt (scipy.io.loadmat: {e})")
    keys = list(keys)
    missing = [k for k in keys if k not in mat]
    if missing:
        present = sorted(k for k in mat if not k.startswith("__"))
        found.fail(CorruptFileError,
                   f"lacks the variable(s) {missing} (it holds {present}); truncated or not the "
                   f"original file")
    return {k: np.asarray(mat[k]) for k in keys}


_MI_COMPRESSED = 15  # MATLAB v5 element type of a zlib-compressed variable


def _check_mat_inflation(found: FoundFile, raw: bytes) -> None:
    """Refuse a MATLAB v5 file whose variables hold or inflate to more than the limit.

    scipy.io.loadmat inflates each compressed variable whole, so a small file can ask for
    gigabytes. Walk the top-level elements (an 8-byte tag: type, byte count, then the data) and
    count what they hold, inflating the compressed ones in bounded chunks and keeping nothing.
    A malformed layout just ends the walk: loadmat then reports the file as corrupt.
    """
    cap = size_cap(found.source)
    order = "<" if raw[126:128] == b"IM" else ">"
    view, pos, total = memoryview(raw), 128, 0
    while pos + 8 <= len(raw):
        kind, nbytes = struct.unpack(order + "II", raw[pos:pos + 8])
        body = view[pos + 8:pos + 8 + nbytes]
        total += _inflated_size(body, cap - total) if kind == _MI_COMPRESSED else len(body)
        if total > cap:
            found.too_big(cap, "holds MATLAB variables that inflate to")
        pos += 8 + nbytes


def _inflated_size(body: memoryview, limit: int) -> int:
    """Bytes the zlib stream `body` inflates to, counted in chunks; stops once past `limit`."""
    inflater, total = zlib.decompressobj(), 0
    try:
        for start in range(0, len(body), CHUNK):
            pending = body[start:start + CHUNK]
            # max_length bounds each call's output; the rest of the input waits in the tail.
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, CHUNK))
                if total > limit:
                    return total
                pending = inflater.unconsumed_tail
    except zlib.error:
        pass  # corrupt: scipy.io.loadmat reports it
    return total


# ----------------------------------------------------------------------------- checks

def check_shape(found: FoundFile, what: str, array: np.ndarray, expected: tuple) -> None:
    """`expected` may hold None for "any size" along that axis."""
    ok = array.ndim == len(expected) and all(e is None or e == s for s, e in zip(array.shape, expected))
    if not ok:
        want = " x ".join("N" if e is None else str(e) for e in expected)
        found.fail(ShapeError,
                   f"has the wrong shape: {what} is {' x '.join(map(str, array.shape))}, "
                   f"expected {want}")


def check_binary(found: FoundFile, what: str, array: np.ndarray) -> None:
    if not np.isin(array, (0, 1)).all():
        found.fail(ShapeError, f"has values other than 0 and 1 in {what}; not the original file")


def check_dtype(found: FoundFile, what: str, array: np.ndarray, kinds: str, expected: str) -> None:
    """`array` must have a plain (unstructured) dtype whose numpy kind letter is in `kinds`."""
    dt = array.dtype
    if dt.kind not in kinds or dt.fields is not None or dt.subdtype is not None:
        found.fail(ShapeError, f"holds {dt} data in {what}, expected {expected}")


def check_unit_interval(found: FoundFile, what: str, array: np.ndarray) -> None:
    check_dtype(found, what, array, "biuf", "numbers in [0, 1]")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        finite = array[np.isfinite(array)]
        span = f"min {finite.min():g}, max {finite.max():g}" if finite.size else "no finite value"
        found.fail(ShapeError, f"has values outside [0, 1] in {what} ({span}, "
                               f"{int((~np.isfinite(array)).sum())} NaN/inf); not the original file")
