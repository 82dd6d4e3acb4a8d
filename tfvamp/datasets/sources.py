"""Finding, downloading, reading and checking the original data files.

Nothing here depends on TFDS: the builders in `builders.py` call these helpers from
`_split_generators`, so every file is read and verified *before* TFDS writes anything.

Search order for a file (first hit wins), in every base folder both
`<base>/<folder>/<name>` (the official code's `datasets/` layout) and `<base>/<name>`:
  1. the manual dir given explicitly (`--manual_dir`, `DownloadConfig(manual_dir=...)`),
  2. `$TFVAMP_MANUAL_DIR`,
  3. TFDS' default manual dir `<data_dir>/downloads/manual`,
  4. tfvamp's download cache `<data_dir>/downloads/tfvamp` (files fetched earlier).
Each name is accepted as given, gzipped (`.gz`) or un-gzipped; compression is detected
from the content, not the name.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
import zlib
from pathlib import Path
from typing import Iterable, NoReturn, Sequence

import numpy as np
from absl import logging

from tfvamp.datasets.errors import ChecksumError, CorruptFileError, MissingFileError, ShapeError

MANUAL_DIR_ENV = "TFVAMP_MANUAL_DIR"
# Set to 1 to never try a download (tests, air-gapped machines): a missing file fails at once.
OFFLINE_ENV = "TFVAMP_OFFLINE"
# Set to 1 to accept a file whose content checksum differs from the original (a warning instead).
SKIP_CHECKSUMS_ENV = "TFVAMP_SKIP_CHECKSUMS"
DOWNLOAD_TIMEOUT_S = 60

_GZIP_MAGIC = b"\x1f\x8b"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One original file a builder reads.

    Attributes:
      name: file name as originally distributed, e.g. 'binarized_mnist_train.amat'.
      folder: sub-folder of the official code's `datasets/` layout, e.g. 'MNIST_static'.
      urls: original URL first, then mirrors; tried in order when the file is absent.
      alt_names: other accepted names (another distributed format, or a common rename).
      digest: sha256 of the decoded arrays (see `array_digest`) of the original file, or
        None when no verified copy was available (then only shapes and values are checked).
      md5: md5 of the uncompressed original bytes as published elsewhere but not verified
        here; a mismatch is only logged.
    """

    name: str
    folder: str
    urls: tuple[str, ...]
    alt_names: tuple[str, ...] = ()
    digest: str | None = None
    md5: str | None = None

    def candidate_names(self) -> list[str]:
        """Every accepted file name: each name as given, without and with `.gz`."""
        names: list[str] = []
        for n in (self.name,) + self.alt_names:
            plain = n[:-3] if n.endswith(".gz") else n
            for c in (n, plain, plain + ".gz"):
                if c not in names:
                    names.append(c)
        return names


def search_bases(explicit_manual_dir, download_dir) -> list[Path]:
    """Base folders in search order (see the module docstring); duplicates removed."""
    bases = []
    for d in (
        explicit_manual_dir,
        os.environ.get(MANUAL_DIR_ENV) or None,
        Path(download_dir) / "manual" if download_dir else None,
        download_cache_dir(download_dir) if download_dir else None,
    ):
        if d is None:
            continue
        p = Path(os.path.expanduser(os.fspath(d))).absolute()
        if p not in bases:
            bases.append(p)
    return bases


def download_cache_dir(download_dir) -> Path:
    return Path(download_dir) / "tfvamp"


def locate(source: SourceFile, bases: Sequence[Path]) -> Path | None:
    """First existing non-directory candidate of `source` under `bases`, or None."""
    for folder in _search_folders(source, bases):
        for n in source.candidate_names():
            p = folder / n
            if p.is_file():
                return p
    return None


def _search_folders(source: SourceFile, bases: Sequence[Path]) -> list[Path]:
    return [f for b in bases for f in (b / source.folder, b)]


@dataclasses.dataclass
class FoundFile:
    """A located file plus what is needed to word an error about it."""

    path: Path
    source: SourceFile
    builder: str
    downloaded: bool = False

    def fail(self, error_cls, problem: str) -> NoReturn:
        """Raise `error_cls` naming this file, the URL and the fix.

        A file that we downloaded ourselves is deleted first, so a bad download is
        never trusted by the next run.
        """
        note = ""
        if self.downloaded:
            self.path.unlink(missing_ok=True)
            note = " (this was a download; the bad copy has been deleted)"
        raise error_cls(
            f"{self.builder}: {self.path} {problem}{note}.\n"
            f"Fix: replace it with the original file from {self.source.urls[0]} "
            f"(keep it in {self.path.parent}), then run again."
        )

    def read_bytes(self, tar_member: str | None = None) -> bytes:
        """The file's bytes, gunzipped if gzipped; the named member if it is a tar archive."""
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            self.fail(CorruptFileError, f"cannot be read ({e})")
        if not raw:
            self.fail(CorruptFileError, "is empty (truncated download?)")
        if raw[:2] == _GZIP_MAGIC:
            try:
                raw = gzip.decompress(raw)
            except EOFError:
                self.fail(CorruptFileError, "is truncated: the gzip stream ends early")
            except (OSError, zlib.error) as e:
                self.fail(CorruptFileError, f"is truncated or corrupt (gzip: {e})")
        if len(raw) > 262 and raw[257:262] == b"ustar":
            raw = self._tar_member(raw, tar_member)
        if self.source.md5 is not None:
            ok = hashlib.md5(raw).hexdigest() == self.source.md5
            logging.info("%s: md5 %s the published md5 %s", self.path,
                         "matches" if ok else "differs from", self.source.md5)
        return raw

    def _tar_member(self, raw: bytes, member: str | None) -> bytes:
        try:
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                files = [m for m in tar.getmembers() if m.isfile()]
                wanted = [m for m in files if member is None or os.path.basename(m.name) == member]
                if len(wanted) != 1:
                    self.fail(CorruptFileError,
                              f"is a tar archive without exactly one {member or 'file'} in it "
                              f"(members: {[m.name for m in files]})")
                return tar.extractfile(wanted[0]).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            self.fail(CorruptFileError, f"is a truncated or corrupt tar archive ({e})")

    def verify_digest(self, *arrays: np.ndarray) -> None:
        """Compare the decoded arrays with the original's digest (if one is known)."""
        if self.source.digest is None or not arrays:
            logging.info("%s: no reference checksum for this file; verified by shape and values",
                         self.path)
            return
        got = array_digest(*arrays)
        if got == self.source.digest:
            logging.info("%s: content checksum verified", self.path)
            return
        if _env_flag(SKIP_CHECKSUMS_ENV):
            logging.warning("%s: content checksum %s differs from the original's %s; "
                            "building anyway because %s is set", self.path, got,
                            self.source.digest, SKIP_CHECKSUMS_ENV)
            return
        self.fail(ChecksumError,
                  f"has the right shapes but not the original content (sha256 of the decoded "
                  f"arrays {got[:12]}..., original {self.source.digest[:12]}...). "
                  f"Set {SKIP_CHECKSUMS_ENV}=1 to build from it anyway")


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 over dtype, shape and C-order bytes of each array.

    Hashing the decoded arrays rather than the file bytes accepts the same data gzipped or
    not, and pickled with another protocol, while still catching any changed pixel.
    """
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fetch(source: SourceFile, bases: Sequence[Path], download_dir, builder: str) -> FoundFile:
    """Find `source` under `bases`; if absent, download it into the tfvamp download cache.

    Raises:
      MissingFileError: not found and not downloadable (offline, or every URL failed).
    """
    path = locate(source, bases)
    if path is not None:
        logging.info("%s: using %s", builder, path)
        # A file in our download cache is ours to delete if it turns out bad (e.g. a run was
        # killed between downloading and verifying); the user's files never are.
        cached = download_dir is not None and download_cache_dir(download_dir).absolute() in path.parents
        return FoundFile(path, source, builder, downloaded=cached)

    failures = []
    if _env_flag(OFFLINE_ENV):
        failures.append(f"not tried ({OFFLINE_ENV} is set)")
    elif download_dir is None:
        failures.append("not tried (no download folder)")
    else:
        target = download_cache_dir(download_dir) / source.folder / source.name
        for url in source.urls:
            try:
                _download(url, target)
                logging.info("%s: downloaded %s to %s", builder, url, target)
                return FoundFile(target, source, builder, downloaded=True)
            except Exception as e:  # noqa: BLE001  any network/IO failure means "offline" here
                failures.append(f"{url}: {e}")

    put_here = bases[0] / source.folder if bases else Path(source.folder)
    looked = "\n".join(f"    {f}" for f in _search_folders(source, bases))
    tried = "\n".join(f"    {f}" for f in failures)
    names = ", ".join(source.candidate_names())
    raise MissingFileError(
        f"{builder}: cannot find {source.name} (accepted names: {names}).\n"
        f"  Looked in:\n{looked}\n"
        f"  Download from the original URL {source.urls[0]}:\n{tried}\n"
        f"Fix: download {source.urls[0]} and put it in {put_here}/ (gzipped or not), or point "
        f"--manual_dir / ${MANUAL_DIR_ENV} at the folder that holds it; then run again, e.g. "
        f"python scripts/prepare_data.py --manual_dir={bases[0] if bases else '<folder>'}"
    )


def _download(url: str, target: Path) -> None:
    """Download to `target` via a temporary name, so an interrupted download never looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(part, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- parsers

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


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts and numpy arrays only: a data file must not run code."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # numpy arrays, pickle protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),  # bytes in Python 3 pickles of protocol < 3
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "object"),
    }

    def find_class(self, module, name):
        if module.startswith("numpy.core"):  # pickles from numpy 1.x (and Python 2)
            module = "numpy._core" + module[len("numpy.core"):]
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def unpickle(found: FoundFile, raw: bytes):
    """A Python 2 or 3 pickle of lists/dicts/arrays (Python 2 strings decoded as latin1)."""
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001  EOFError, UnpicklingError, ValueError, ...
        found.fail(CorruptFileError, f"is truncated or not the expected pickle ({type(e).__name__}: {e})")


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


def check_unit_interval(found: FoundFile, what: str, array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.number):
        found.fail(ShapeError, f"holds {array.dtype} data in {what}, expected numbers in [0, 1]")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        found.fail(ShapeError,
                   f"has values outside [0, 1] in {what} (min {np.nanmin(array):g}, "
                   f"max {np.nanmax(array):g}); not the original file")
