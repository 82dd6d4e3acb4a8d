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
  * a pickle is read by `safe_pickle.unpickle`, which builds numpy arrays itself, of plain
    number dtypes only: numpy never sees a dtype or array state taken from the file.

The per-format parsers and value checks are in `parsers.py`, the restricted unpickler in
`safe_pickle.py`.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tarfile
import urllib.request
import zlib
from pathlib import Path
from typing import NoReturn, Sequence

import numpy as np
from absl import logging

from tfvamp.datasets.errors import ChecksumError, CorruptFileError, MissingFileError, SizeLimitError
from tfvamp.datasets.facts import MANUAL_DIR_ENV

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
CHUNK = 1 << 20  # bytes read, gunzipped or inflated at a time


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
                while chunk := stream.read(CHUNK):
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
            while chunk := r.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise ValueError(f"sent more than {_mb(max_bytes)}, more than the original "
                                     f"file can be; download stopped")
                f.write(chunk)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
