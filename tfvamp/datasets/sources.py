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

Every file is untrusted until checked (docs/data.md, "Hostile files"):
  * it is read, gunzipped and taken out of a tar archive in bounded chunks, never past its
    `SourceFile.max_size` (`SizeLimitError`), so a decompression bomb costs a few MB;
  * its bytes are compared with the original's sha256 / git blob id before any parser runs,
    and a download that differs is deleted unread;
  * a pickle is read by `unpickle`, which builds numpy arrays itself, of plain number dtypes
    only: numpy never sees a dtype or array state taken from the file.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import struct
import tarfile
import urllib.request
import zlib
from pathlib import Path
from typing import Iterable, NoReturn, Sequence

import numpy as np
from absl import logging

from tfvamp.datasets.errors import (
    ChecksumError,
    CorruptFileError,
    MissingFileError,
    ShapeError,
    SizeLimitError,
    UnsafeContentError,
)

from tfvamp.datasets.facts import MANUAL_DIR_ENV  # noqa: E402
# Set to 1 to never try a download (tests, air-gapped machines): a missing file fails at once.
OFFLINE_ENV = "TFVAMP_OFFLINE"
# Set to 1 to accept a file whose content checksum differs from the original (a warning instead).
SKIP_CHECKSUMS_ENV = "TFVAMP_SKIP_CHECKSUMS"
# Megabytes (10^6 bytes) a file may hold or expand to, instead of its `SourceFile.max_size`: the
# way out if an original turns out larger than the estimate (OMNIGLOT and histopathology).
MAX_SIZE_ENV = "TFVAMP_MAX_DECOMPRESSED_MB"
DOWNLOAD_TIMEOUT_S = 60
# Limit of a SourceFile that does not state its own (every tfvamp source does).
DEFAULT_MAX_SIZE = 1_000_000_000

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes read, gunzipped or inflated at a time


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
      max_size: generous limit (about twice the original) of the bytes the file may hold after
        gunzip and tar, and that a .mat file's compressed variables may inflate to. Reading
        stops with a SizeLimitError as soon as it is passed.
      sha256: sha256 of the original's bytes: as distributed and, for a gzipped original, after
        gunzip. Compared before parsing; the same file gzipped or not matches.
      git_blob: git blob id (sha1 of "blob <size>\\0" + bytes) of the original as committed in
        the repository its URL serves from; used where no sha256 is known.
    """

    name: str
    folder: str
    urls: tuple[str, ...]
    alt_names: tuple[str, ...] = ()
    digest: str | None = None
    md5: str | None = None
    max_size: int = DEFAULT_MAX_SIZE
    sha256: tuple[str, ...] = ()
    git_blob: str | None = None

    def candidate_names(self) -> list[str]:
        """Every accepted file name: each name as given, without and with `.gz`."""
        names: list[str] = []
        for n in (self.name,) + self.alt_names:
            plain = n[:-3] if n.endswith(".gz") else n
            for c in (n, plain, plain + ".gz"):
                if c not in names:
                    names.append(c)
        return names

    def original_names(self) -> tuple[str, ...]:
        """Names under which a file must be byte-identical to the original (gzip aside).

        Alternative names are other formats (e.g. frey_rawface.mat, the extracted
        histopathology.pkl) whose bytes no known checksum covers.
        """
        return (self.name,) if self.name.endswith(".gz") else (self.name, self.name + ".gz")

    def bytes_match(self, data: bytes) -> bool:
        """Whether `data` hashes to one of the original's known checksums."""
        if self.sha256 and hashlib.sha256(data).hexdigest() in self.sha256:
            return True
        return self.git_blob is not None and git_blob_id(data) == self.git_blob


def git_blob_id(data: bytes) -> str:
    """The id git gives a file with these bytes (so a repository's tree listing is a checksum)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def size_cap(source: SourceFile) -> int:
    """Bytes `source` may hold or expand to: its max_size, or $TFVAMP_MAX_DECOMPRESSED_MB."""
    override = os.environ.get(MAX_SIZE_ENV, "").strip()
    if not override:
        return source.max_size
    try:
        return int(float(override) * 1e6)
    except ValueError:
        raise CorruptFileError(f"${MAX_SIZE_ENV}={override!r} is not a number of megabytes.\n"
                               f"Fix: set it to e.g. 1000, or unset it.") from None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


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
    """A located file plus what is needed to read it safely and word an error about it.

    Attributes:
      expect_original: False for a builder config meant for files that are not the original
        (the tests' small files); such a file is not compared with the original's checksum.
      bytes_verified / bytes_differ: set by `read_bytes`, which compares the bytes with the
        original's sha256 / git blob id (when one is known) before anything parses them.
    """

    path: Path
    source: SourceFile
    builder: str
    downloaded: bool = False
    expect_original: bool = True
    bytes_verified: bool = False
    bytes_differ: bool = False

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
        """The file's bytes, gunzipped if gzipped; the named member if it is a tar archive.

        Nothing is read, gunzipped or unpacked past `size_cap(source)`; the bytes are compared
        with the original's checksums before they are returned for parsing.
        """
        raw = self._read_capped()
        data = self._gunzip(raw) if raw[:2] == _GZIP_MAGIC else raw
        self._check_bytes(raw, data)
        if len(data) > 262 and data[257:262] == b"ustar":
            data = self._tar_member(data, tar_member)
        if self.source.md5 is not None:
            ok = hashlib.md5(data).hexdigest() == self.source.md5
            logging.info("%s: md5 %s the published md5 %s", self.path,
                         "matches" if ok else "differs from", self.source.md5)
        return data

    def too_big(self, cap: int, how: str) -> NoReturn:
        self.fail(SizeLimitError,
                  f"{how} more than {_mb(cap)}, the limit for this file (about twice the "
                  f"original's size): it is not the original and may be a decompression bomb, so "
                  f"reading stopped there (if it really is the original, raise the limit with "
                  f"{MAX_SIZE_ENV}=<megabytes>)")

    def _read_capped(self) -> bytes:
        """The file as stored, refused unread beyond the limit (a file can be huge, too)."""
        cap = size_cap(self.source)
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(cap + 1)
        except OSError as e:
            self.fail(CorruptFileError, f"cannot be read ({e})")
        if len(raw) > cap:
            self.too_big(cap, "holds")
        if not raw:
            self.fail(CorruptFileError, "is empty (truncated download?)")
        return raw

    def _gunzip(self, raw: bytes) -> bytes:
        """Gunzip in chunks, failing as soon as the output passes the limit.

        gzip.decompress would first build the whole output: 8 GiB for an 8 MB bomb.
        GzipFile.read(n) inflates at most n bytes per call (and handles multi-member files).
        """
        cap = size_cap(self.source)
        chunks, total = [], 0
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
                    if total > cap:
                        self.too_big(cap, "expands, when gunzipped, to")
                    chunks.append(chunk)
        except EOFError:
            self.fail(CorruptFileError, "is truncated: the gzip stream ends early")
        except (OSError, zlib.error) as e:
            self.fail(CorruptFileError, f"is truncated or corrupt (gzip: {e})")
        return b"".join(chunks)

    def _tar_member(self, raw: bytes, member: str | None) -> bytes:
        """The one wanted file of a plain tar archive, never unpacked past the limit."""
        cap = size_cap(self.source)
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                files = [m for m in tar.getmembers() if m.isfile()]
                wanted = [m for m in files if member is None or os.path.basename(m.name) == member]
                if len(wanted) != 1:
                    self.fail(CorruptFileError,
                              f"is a tar archive without exactly one {member or 'file'} in it "
                              f"(members: {[m.name for m in files]})")
                # A sparse member announces its full size but stores only its data: a few
                # bytes of archive can unpack to gigabytes of holes.
                if wanted[0].size > cap:
                    self.too_big(cap, f"holds {wanted[0].name}, which unpacks to")
                data = tar.extractfile(wanted[0]).read(cap + 1)
        except (tarfile.TarError, EOFError, OSError) as e:
            self.fail(CorruptFileError, f"is a truncated or corrupt tar archive ({e})")
        if len(data) > cap:
            self.too_big(cap, f"holds {wanted[0].name}, which unpacks to")
        return data

    def _check_bytes(self, raw: bytes, data: bytes) -> None:
        """Compare the bytes as stored, then gunzipped, with the original's known checksums.

        A match verifies the file before any parser runs. A download must match (it is exactly
        what the URL served); a file the user gave may be another encoding of the same data,
        so for it `verify_digest` decides after parsing.
        """
        if not self.source.sha256 and self.source.git_blob is None:
            return
        if self.source.bytes_match(raw) or (data is not raw and self.source.bytes_match(data)):
            self.bytes_verified = True
            logging.info("%s: bytes verified against the original's checksum", self.path)
            return
        self.bytes_differ = True
        if self.downloaded:
            self._checksum_mismatch("is not the original file: its bytes differ from the "
                                    f"original's {self._known_checksum()} (a failed, truncated "
                                    "or altered download); it was not parsed")

    def _known_checksum(self) -> str:
        if self.source.sha256:
            return f"sha256 {self.source.sha256[0][:12]}..."
        return f"git blob id {self.source.git_blob[:12]}..."

    def _checksum_mismatch(self, problem: str) -> None:
        """ChecksumError, or only a warning when $TFVAMP_SKIP_CHECKSUMS is set."""
        if _env_flag(SKIP_CHECKSUMS_ENV):
            logging.warning("%s: %s; building anyway because %s is set", self.path, problem,
                            SKIP_CHECKSUMS_ENV)
            return
        self.fail(ChecksumError, f"{problem}. Set {SKIP_CHECKSUMS_ENV}=1 to build from it anyway")

    def verify_digest(self, *arrays: np.ndarray) -> None:
        """Check the content against the original, after the shape and value checks.

        In order: bytes already verified; else the decoded arrays' digest (when known), which
        accepts any encoding of the same data; else, for a file under the original's name, the
        byte checksum that `read_bytes` found different is an error.
        """
        if self.bytes_verified:
            return
        if self.source.digest is not None and arrays:
            self._verify_arrays(arrays)
        elif (self.bytes_differ and self.expect_original
              and self.path.name in self.source.original_names()):
            self._checksum_mismatch("has the right shapes but is not the original file: its "
                                    f"bytes differ from the original's {self._known_checksum()}")
        else:
            logging.info("%s: no reference checksum for this file in this form; verified by "
                         "shape and values", self.path)

    def _verify_arrays(self, arrays) -> None:
        got = array_digest(*arrays)
        if got == self.source.digest:
            logging.info("%s: content checksum verified", self.path)
            return
        self._checksum_mismatch(
            f"has the right shapes but not the original content (sha256 of the decoded "
            f"arrays {got[:12]}..., original {self.source.digest[:12]}...)")


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
                _download(url, target, size_cap(source))
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


def _download(url: str, target: Path, max_bytes: int) -> None:
    """Download to `target` via a temporary name, so an interrupted download never looks complete.

    Stops past `max_bytes`: a server (or whoever is between us and it) must not fill the disk.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(part, "wb") as f:
            written = 0
            while chunk := r.read(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise ValueError(f"sent more than {_mb(max_bytes)}, more than the original "
                                     f"file can be; download stopped")
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
        for start in range(0, len(body), _CHUNK):
            pending = body[start:start + _CHUNK]
            # max_length bounds each call's output; the rest of the input waits in the tail.
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, _CHUNK))
                if total > limit:
                    return total
                pending = inflater.unconsumed_tail
    except zlib.error:
        pass  # corrupt: scipy.io.loadmat reports it
    return total


# numpy's own unpickling trusts the file. A dtype's __setstate__ accepts any fields, and an
# array's __setstate__ lays such a dtype, e.g. a void type with an object field, over raw bytes
# from the file: reading the array then dereferences pointers the file chose (a segmentation
# fault, or worse). So the globals a numpy pickle names are replaced by stand-ins that only
# *record* what the pickle asks for. `_materialize` then checks every record and builds the
# arrays with np.frombuffer, of plain bool / integer / float dtypes only: numpy never sees a
# dtype or array state taken from the file, and no element is read before the check.

# Only these type strings are accepted (numpy pickles a plain dtype as e.g. 'u1', 'f4', 'f8').
_PLAIN_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f(2|4|8|12|16))")
_MAX_DEPTH = 100  # lists in lists...; real data files nest two or three levels


class _Refused(pickle.UnpicklingError):
    """Something a data file never needs; refused before any numpy array exists."""


def _plain_dtype(spec) -> np.dtype:
    """The numpy dtype named by `spec`, if it is a plain bool, integer or float type."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str) or not _PLAIN_DTYPE.fullmatch(spec):
        raise _Refused(f"refusing numpy dtype {spec!r:.60}: not a plain bool, integer or float type")
    dtype = np.dtype(spec)
    # The rule itself, in case the pattern above is ever widened.
    if (dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None
            or dtype.hasobject):
        raise _Refused(f"refusing numpy dtype {dtype}: not a plain bool, integer or float type")
    return dtype


class _DtypeRecord:
    """Stands in for `numpy.dtype(spec, align, copy)`; its pickled state may set the byte order only."""

    dtype = None
    _state_set = False

    def __init__(self, spec, align=False, copy=True):  # pylint: disable=unused-argument
        self.dtype = _plain_dtype(spec)

    def __setstate__(self, state):
        """numpy's state: (3 or 4, byte order, subarray, names, fields, -1, -1, flags[, metadata]).

        A subarray, names, fields or metadata would turn the plain type into a structured one
        (this is how a forged pickle gives a harmless-looking dtype an object field).
        """
        if self.dtype is None or self._state_set:
            raise _Refused("refusing a numpy dtype state given twice or without a dtype")
        self._state_set = True
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise _Refused(f"refusing numpy dtype state {state!r:.80}")
        order = state[1]
        if (order not in ("<", ">", "|", "=") or any(v is not None for v in state[2:5] + state[8:])
                or state[5:7] != (-1, -1)):
            raise _Refused(f"refusing numpy dtype state {state!r:.120}: it gives the plain type "
                           f"{self.dtype} a byte order, fields, subarray, size or metadata it "
                           f"cannot have")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _ArrayRecord:
    """Stands in for a numpy array while unpickling: records shape, dtype and bytes only."""

    shape = dtype = data = None
    fortran = False
    scalar = False
    _state_set = False

    def __setstate__(self, state):
        """numpy's array state: (1, shape, dtype, is_fortran, data), or the same without the 1."""
        if self._state_set:
            raise _Refused("refusing an array state given twice")
        self._state_set = True
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Refused(f"refusing numpy array state {state!r:.80}")
        self.shape, self.dtype, self.fortran, self.data = state

    def build(self):
        """The checked array (or numpy scalar); every check comes before numpy sees the bytes."""
        if not isinstance(self.dtype, _DtypeRecord) or self.dtype.dtype is None:
            raise _Refused(f"refusing an array whose dtype is a {type(self.dtype).__name__}")
        dtype, shape, data = self.dtype.dtype, self.shape, self.data
        if not (isinstance(shape, tuple) and len(shape) <= 32
                and all(type(n) is int and n >= 0 for n in shape)):  # noqa: E721  (no bools)
            raise _Refused(f"refusing array shape {shape!r:.80}")
        if isinstance(data, str):  # a Python 2 byte string, decoded as latin1
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise _Refused(f"refusing array data of type {type(data).__name__} (only raw bytes)")
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise _Refused(f"array data of {len(data)} bytes does not fit shape {shape} of {dtype}")
        array = np.frombuffer(data, dtype).reshape(shape, order="F" if self.fortran else "C")
        return array[()] if self.scalar else array.copy(order="K")  # writable, like pickle's


class _NdarrayName:
    """What `numpy.ndarray` means in a data pickle: only the first argument of _reconstruct."""

    __slots__ = ()


_NDARRAY = _NdarrayName()


def _reconstruct(cls, shape, typecode):  # pylint: disable=unused-argument
    """Stands in for numpy's `_reconstruct(ndarray, (0,), b'b')`; the state comes via BUILD."""
    if cls is not _NDARRAY:
        raise _Refused("refusing an array of a class other than numpy.ndarray")
    return _ArrayRecord()


def _frombuffer(buf, dtype, shape, order):
    """Stands in for numpy's `_frombuffer` (pickle protocol 5, data in-band)."""
    record = _ArrayRecord()
    record.__setstate__((1, tuple(shape) if isinstance(shape, list) else shape, dtype,
                         order == "F", buf))
    return record


def _scalar(dtype, data):
    """Stands in for numpy's `scalar(dtype, bytes)` (a pickled numpy scalar)."""
    record = _frombuffer(data, dtype, (), "C")
    record.scalar = True
    return record


def _empty_bytes(*args):
    """Stands in for `bytes()`, how protocols < 3 store b"" (e.g. an empty array's data).

    Only without arguments: bytes(10**10) would allocate 10 GB.
    """
    if args:
        raise _Refused("refusing bytes(...) with arguments")
    return b""


def _latin1_encode(text, encoding="latin1"):
    """Stands in for `_codecs.encode(str, 'latin1')`: how protocols < 3 store bytes, nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise _Refused(f"refusing _codecs.encode with {encoding!r:.20}")
    return text.encode("latin1")


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, tuples, numbers, strings and records of numpy arrays: no code runs."""

    _STAND_INS = {
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,  # numpy arrays, pickle protocol 5
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DtypeRecord,
        ("_codecs", "encode"): _latin1_encode,  # bytes in Python 3 pickles of protocol < 3
        ("builtins", "bytes"): _empty_bytes,  # b"" in the same
        ("builtins", "list"): list, ("builtins", "dict"): dict, ("builtins", "tuple"): tuple,
    }

    def find_class(self, module, name):
        if module.startswith("numpy.core"):  # pickles from numpy 1.x (and Python 2)
            module = "numpy._core" + module[len("numpy.core"):]
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        try:
            return self._STAND_INS[(module, name)]
        except KeyError:
            raise _Refused(f"refusing to load {module}.{name} from a data file") from None


_LEAVES = (str, bytes, bytearray, int, float, complex, type(None))


def _materialize(obj, depth=0, done=None):
    """`obj` with each array record replaced by its checked array; _Refused for anything odd."""
    done = {} if done is None else done
    if isinstance(obj, _LEAVES):
        return obj
    if id(obj) in done:  # shared or self-referencing parts (pickle memo)
        return done[id(obj)]
    if depth > _MAX_DEPTH:
        raise _Refused(f"refusing a pickle nested more than {_MAX_DEPTH} levels deep")
    if isinstance(obj, _ArrayRecord):
        done[id(obj)] = obj.build()
    elif isinstance(obj, list):
        done[id(obj)] = obj
        obj[:] = [_materialize(v, depth + 1, done) for v in obj]
    elif isinstance(obj, dict):
        done[id(obj)] = obj
        if not all(isinstance(k, _LEAVES) for k in obj):
            raise _Refused("refusing a dict with keys other than strings or numbers")
        for k, v in list(obj.items()):
            obj[k] = _materialize(v, depth + 1, done)
    elif isinstance(obj, tuple):
        done[id(obj)] = tuple(_materialize(v, depth + 1, done) for v in obj)
    else:
        raise _Refused(f"refusing a {type(obj).__name__} object in a data file")
    return done[id(obj)]


def unpickle(found: FoundFile, raw: bytes):
    """A Python 2 or 3 pickle of lists/dicts/tuples/numbers/strings and plain numpy arrays.

    Python 2 strings are decoded as latin1 (the only way Python 3 reads those array bytes).
    """
    try:
        return _materialize(_RecordingUnpickler(io.BytesIO(raw), encoding="latin1").load())
    except _Refused as e:
        found.fail(UnsafeContentError,
                   f"is not a plain data pickle: {e}. Nothing in it was run and no array was "
                   f"built; a data file holds only lists, dicts and arrays of plain numbers, so "
                   f"this one is damaged or forged")
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
